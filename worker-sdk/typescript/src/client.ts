/**
 * The client side: the Broker and Admin calls over one channel, and
 * {@link ChainHandle}, the handle on a submitted chain.
 *
 * Every call is a plain RPC; nothing is cached or decided here. Unary calls
 * wait for a broker that is (re)starting, up to the app's timeout; a
 * submission cut off by a lost connection is sent again (the chain id is
 * the client's, so the broker stores it once and answers a repeat as such).
 */
import * as grpc from "@grpc/grpc-js";
import { BatonError, ChainCancelled, ChainFailed, type FailureRecord, TimeoutError } from "./errors";
import { Brokers, elsewhere, refusalOf } from "./failover";
import type { AdminClient } from "./gen/baton/v1/Admin";
import type { BrokerClient } from "./gen/baton/v1/Broker";
import type {
  CancelChainRequest,
  CancelChainResponse__Output,
  Chain__Output,
  ChainEvent__Output,
  FailureRecord__Output,
  GetStepResultRequest,
  GetStepResultResponse__Output,
  ListQueuesRequest,
  ListQueuesResponse__Output,
  ListSchedulesRequest,
  ListSchedulesResponse__Output,
  ListThrottlesRequest,
  ListThrottlesResponse__Output,
  ListWorkersRequest,
  ListWorkersResponse__Output,
  PauseScheduleRequest,
  PutScheduleRequest,
  QueueInfo__Output,
  RemoveScheduleRequest,
  RemoveScheduleResponse__Output,
  ScheduleInfo__Output,
  SubmitChainRequest,
  SubmitChainResponse__Output,
  SubmitChainsRequest,
  SubmitChainsResponse__Output,
  ThrottleInfo__Output,
  WorkerInfo__Output,
} from "./gen/baton/v1/index";
import { protocol } from "./proto";
import { channelArgs, metadata, type TlsOptions } from "./transport";

export type ChainStatus = "RUNNING" | "SUCCEEDED" | "FAILED" | "CANCELLED" | "UNKNOWN";
export type Dedup = "idempotency_key" | "unique_key" | "chain_id";

const STATES: Record<string, ChainStatus> = {
  CHAIN_STATE_RUNNING: "RUNNING",
  CHAIN_STATE_SUCCEEDED: "SUCCEEDED",
  CHAIN_STATE_FAILED: "FAILED",
  CHAIN_STATE_CANCELLED: "CANCELLED",
};

export const PHASES: Record<string, string> = {
  PHASE_UNSPECIFIED: "",
  PHASE_MAIN: "main",
  PHASE_ON_SUCCESS: "on_success",
  PHASE_ON_FAILURE: "on_failure",
};

const DEDUPS: Record<string, Dedup | undefined> = {
  DEDUP_IDEMPOTENCY_KEY: "idempotency_key",
  DEDUP_UNIQUE_KEY: "unique_key",
  DEDUP_CHAIN_ID: "chain_id",
};

/** Longest a `get()` trusts one silent WatchChain stream before opening a new one (ms). */
const WATCH_SLICE = 10_000;
/** How many times a submission cut off by UNAVAILABLE is sent again. */
const SUBMIT_ATTEMPTS = 4;

export function chainStatus(state: string): ChainStatus {
  return STATES[state] ?? "UNKNOWN";
}

export function failureRecord(r: FailureRecord__Output | null | undefined): FailureRecord {
  return {
    chain_id: r?.chainId ?? "",
    phase: PHASES[r?.phase ?? ""] ?? String(r?.phase ?? ""),
    step_index: r?.stepIndex ?? 0,
    task_name: r?.taskName ?? "",
    task_id: r?.taskId ?? "",
    attempt: r?.attempt ?? 0,
    error_type: r?.errorType ?? "",
    message: r?.message ?? "",
    traceback: r?.traceback ?? "",
  };
}

/** A gRPC error with its status code, as grpc-js raises them. */
export type RpcError = grpc.ServiceError;

export function isRpcError(err: unknown): err is RpcError {
  return err instanceof Error && typeof (err as Partial<RpcError>).code === "number";
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

type Unary<Req, Res> = (
  request: Req,
  md: grpc.Metadata,
  options: grpc.CallOptions,
  callback: (err: grpc.ServiceError | null, value?: Res) => void,
) => grpc.ClientUnaryCall;

/** The Broker and Admin stubs of one broker, on one channel. */
export interface Stubs {
  broker: BrokerClient;
  admin: AdminClient;
}

/** How long a call goes on while standbys answer (no leader yet), ms. */
const FAILOVER_WAIT = 30_000;
/** The pause after a round of the addresses in which a standby answered, ms. */
const FAILOVER_PAUSE = 100;

/**
 * The Broker and Admin stubs, with the token on every call, over one lazily
 * opened channel per broker address. Given several addresses (a comma
 * list), calls go to the broker that last answered and follow the leader
 * (see ./failover.ts).
 */
export class Client {
  /** Which broker calls go to. */
  readonly brokers: Brokers;
  private readonly token: string | undefined;
  private readonly timeout: number;
  private readonly tls: TlsOptions | undefined;
  /** The stubs of each address tried, opened on first use. */
  private readonly channels = new Map<string, Stubs>();

  /** `address`: `host:port`, or several as a comma list. @throws TypeError no address */
  constructor(address: string, options: { token?: string | undefined; tls?: TlsOptions | undefined; timeout: number }) {
    this.brokers = Brokers.parse(address);
    this.token = options.token;
    this.timeout = options.timeout;
    this.tls = options.tls;
  }

  /** The stubs of `address`, opened on first use. */
  stubs(address = this.brokers.current): Stubs {
    let stubs = this.channels.get(address);
    if (stubs === undefined) {
      const { grpcObject } = protocol();
      const { credentials, options: channelOptions } = channelArgs(this.tls);
      const broker = new grpcObject.baton.v1.Broker(address, credentials, channelOptions);
      // The Admin stub shares the Broker stub's channel.
      const admin = new grpcObject.baton.v1.Admin(address, credentials, {
        ...channelOptions,
        channelOverride: broker.getChannel(),
      });
      stubs = { broker, admin };
      this.channels.set(address, stubs);
    }
    return stubs;
  }

  /** The Broker stub of the current broker. */
  get broker(): BrokerClient {
    return this.stubs().broker;
  }

  /** The Admin stub of the current broker. */
  get admin(): AdminClient {
    return this.stubs().admin;
  }

  close(): void {
    for (const stubs of this.channels.values()) stubs.broker.close();
    this.channels.clear();
  }

  /**
   * Metadata for a call: the token, and wait-for-ready when there is one
   * broker (a call waits for it to (re)start, up to the timeout). With
   * several, a call that cannot reach one goes to the next at once.
   */
  metadata(address = this.brokers.current): grpc.Metadata {
    const single = this.brokers.list.length === 1 && this.brokers.list[0] === address;
    return metadata(this.token, single);
  }

  /** A unary call of `stub` (at the current broker, as it is), bounded by the app's timeout, as a promise. */
  call<Req, Res>(stub: object, method: Unary<Req, Res>, request: Req, timeout = this.timeout): Promise<Res> {
    return this.callAt(this.brokers.current, stub, method, request, timeout);
  }

  private callAt<Req, Res>(
    address: string,
    stub: object,
    method: Unary<Req, Res>,
    request: Req,
    timeout: number,
  ): Promise<Res> {
    return new Promise((resolve, reject) => {
      method.call(stub, request, this.metadata(address), { deadline: Date.now() + timeout }, (err, value) => {
        if (err) reject(err);
        else resolve(value as Res);
      });
    });
  }

  /**
   * A unary call at the current broker; when a standby refuses it or its
   * broker cannot be reached (it was not carried out), made again at the
   * leader the standby named or the next address. A round of the addresses
   * with no standby among them ends it with the last error; while standbys
   * answer, it goes on for up to 30 s.
   */
  async rpc<Req, Res>(pick: (stubs: Stubs) => [object, Unary<Req, Res>], request: Req): Promise<Res> {
    const since = Date.now();
    for (;;) {
      const address = this.brokers.current;
      const [stub, method] = pick(this.stubs(address));
      try {
        const response = await this.callAt(address, stub, method, request, this.timeout);
        this.succeeded(address);
        return response;
      } catch (err) {
        const pause = this.failedAt(address, err, since);
        if (pause === undefined) throw err;
        if (pause > 0) await sleep(pause);
      }
    }
  }

  /** A call at `address` was answered (not refused). */
  succeeded(address: string): void {
    if (this.brokers.current === address) this.brokers.succeeded();
  }

  /**
   * A call at `address` failed with `err`: the pause before making it again
   * (0: at once) at the next broker, or `undefined` when the call ends with
   * `err` (see {@link rpc}). `since`: when the call started.
   */
  failedAt(address: string, err: unknown, since: number): number | undefined {
    if (!elsewhere(err)) return undefined;
    // Another call moved on already: follow it.
    if (this.brokers.current !== address) return 0;
    const next = this.brokers.failed(refusalOf(err));
    if (next.kind === "now") return 0;
    return next.standby && Date.now() - since < FAILOVER_WAIT ? FAILOVER_PAUSE : undefined;
  }

  async submit(request: SubmitChainRequest): Promise<SubmitChainResponse__Output> {
    for (let attempt = 1; ; attempt++) {
      try {
        return await this.rpc((s) => [s.broker, s.broker.SubmitChain], request);
      } catch (err) {
        // A lost connection may have cut off an answer: the id is ours, so
        // sending again stores nothing twice (the repeat is DEDUP_CHAIN_ID).
        if (!isRpcError(err) || err.code !== grpc.status.UNAVAILABLE || attempt >= SUBMIT_ATTEMPTS) throw err;
        await sleep(100 * 2 ** attempt);
      }
    }
  }

  async submitMany(requests: SubmitChainRequest[]): Promise<SubmitChainResponse__Output[]> {
    for (let attempt = 1; ; attempt++) {
      try {
        const response = await this.rpc<SubmitChainsRequest, SubmitChainsResponse__Output>(
          (s) => [s.broker, s.broker.SubmitChains],
          { chains: requests },
        );
        return response.chains;
      } catch (err) {
        if (!isRpcError(err) || err.code !== grpc.status.UNAVAILABLE || attempt >= SUBMIT_ATTEMPTS) throw err;
        await sleep(100 * 2 ** attempt);
      }
    }
  }

  listWorkers(): Promise<WorkerInfo__Output[]> {
    return this.rpc<ListWorkersRequest, ListWorkersResponse__Output>((s) => [s.admin, s.admin.ListWorkers], {}).then(
      (r) => r.workers,
    );
  }

  listQueues(): Promise<QueueInfo__Output[]> {
    return this.rpc<ListQueuesRequest, ListQueuesResponse__Output>((s) => [s.admin, s.admin.ListQueues], {}).then(
      (r) => r.queues,
    );
  }

  listThrottles(): Promise<ThrottleInfo__Output[]> {
    return this.rpc<ListThrottlesRequest, ListThrottlesResponse__Output>(
      (s) => [s.admin, s.admin.ListThrottles],
      {},
    ).then((r) => r.throttles);
  }

  putSchedule(request: PutScheduleRequest): Promise<ScheduleInfo__Output> {
    return this.rpc<PutScheduleRequest, ScheduleInfo__Output>((s) => [s.admin, s.admin.PutSchedule], request);
  }

  listSchedules(): Promise<ScheduleInfo__Output[]> {
    return this.rpc<ListSchedulesRequest, ListSchedulesResponse__Output>(
      (s) => [s.admin, s.admin.ListSchedules],
      {},
    ).then((r) => r.schedules);
  }

  pauseSchedule(name: string, paused: boolean): Promise<ScheduleInfo__Output> {
    return this.rpc<PauseScheduleRequest, ScheduleInfo__Output>((s) => [s.admin, s.admin.PauseSchedule], {
      name,
      paused,
    });
  }

  async removeSchedule(name: string): Promise<void> {
    await this.rpc<RemoveScheduleRequest, RemoveScheduleResponse__Output>((s) => [s.admin, s.admin.RemoveSchedule], {
      name,
    });
  }

  getChain(chainId: string): Promise<Chain__Output> {
    return this.rpc((s) => [s.broker, s.broker.GetChain], { chainId });
  }

  /**
   * WatchChain at `address` (default: the current broker) as an async
   * iterable of events, ended after `timeout` ms (DEADLINE_EXCEEDED).
   */
  watch(
    chainId: string,
    timeout?: number,
    address = this.brokers.current,
  ): grpc.ClientReadableStream<ChainEvent__Output> {
    const options: grpc.CallOptions = timeout === undefined ? {} : { deadline: Date.now() + timeout };
    return this.stubs(address).broker.WatchChain({ chainId }, this.metadata(address), options);
  }
}

/** The handle on a submitted chain (a single task is a one-step chain). */
export class ChainHandle {
  /** The chain id (with an idempotency or unique key, possibly an earlier chain's). */
  readonly id: string;
  /**
   * `undefined` for a new chain; "idempotency_key", "unique_key" or
   * "chain_id" when the broker stored nothing new and answered with an
   * existing chain.
   */
  readonly dedup: Dedup | undefined;
  private readonly client: () => Client;

  constructor(client: () => Client, id: string, dedup?: string) {
    this.client = client;
    this.id = id;
    this.dedup = dedup === undefined ? undefined : DEDUPS[dedup];
  }

  toString(): string {
    return `ChainHandle(${this.id})`;
  }

  /** The chain's full current state: steps, attempts, polls, retries, queues, failure. */
  info(): Promise<Chain__Output> {
    return this.client().getChain(this.id);
  }

  /** RUNNING, SUCCEEDED, FAILED or CANCELLED. */
  async status(): Promise<ChainStatus> {
    return chainStatus((await this.info()).state);
  }

  /** Whether the chain has ended. */
  async ready(): Promise<boolean> {
    return (await this.status()) !== "RUNNING";
  }

  /** Cancels the chain: unstarted steps never start, running ones are told to stop, no callback runs. */
  async cancel(reason = ""): Promise<ChainStatus> {
    const client = this.client();
    const response = await client.rpc<CancelChainRequest, CancelChainResponse__Output>(
      (s) => [s.broker, s.broker.CancelChain],
      { chainId: this.id, reason },
    );
    return chainStatus(response.state);
  }

  /** The result of one succeeded step by its task id (also one omitted from `info()` for its size). */
  async stepResult(taskId: string): Promise<unknown> {
    const client = this.client();
    const response = await client.rpc<GetStepResultRequest, GetStepResultResponse__Output>(
      (s) => [s.broker, s.broker.GetStepResult],
      { chainId: this.id, taskId },
    );
    return decode(response.result);
  }

  /**
   * The chain's events, starting with a "snapshot" of its current state,
   * until it ends (WatchChain). Stop early with `break`.
   */
  async *watch(): AsyncGenerator<ChainEvent__Output> {
    const since = Date.now();
    for (;;) {
      // Until the first event, a refused or unreachable stream is opened
      // again at the next broker, as a unary call is made again.
      const client = this.client();
      const address = client.brokers.current;
      const stream = client.watch(this.id, undefined, address);
      let answered = false;
      try {
        for await (const event of stream) {
          if (!answered) client.succeeded(address);
          answered = true;
          yield event as ChainEvent__Output;
        }
        return;
      } catch (err) {
        const pause = answered ? undefined : client.failedAt(address, err, since);
        if (pause === undefined) throw err;
        if (pause > 0) await sleep(pause);
      } finally {
        stream.cancel();
      }
    }
  }

  /**
   * Waits for the chain to end and returns the last step's result.
   *
   * Follows WatchChain (no polling); a dropped stream is opened again until
   * `timeout` (ms) passes, and so is one silent for 10 s.
   *
   * @throws ChainFailed the chain failed (`.record` is the failure record)
   * @throws ChainCancelled the chain was cancelled
   * @throws TimeoutError it had not ended within `timeout` ms
   */
  async get(options: { timeout?: number } = {}): Promise<unknown> {
    const { timeout } = options;
    const deadline = timeout === undefined ? undefined : Date.now() + timeout;
    let backoff = 100;
    for (;;) {
      const remaining = deadline === undefined ? undefined : deadline - Date.now();
      if (remaining !== undefined && remaining <= 0) {
        throw new TimeoutError(`chain ${this.id} did not end within ${timeout} ms`);
      }
      const slice = remaining === undefined ? WATCH_SLICE : Math.min(remaining, WATCH_SLICE);
      const client = this.client();
      const address = client.brokers.current;
      const stream = client.watch(this.id, slice, address);
      /** A standby's short pause, instead of the backoff. */
      let pause: number | undefined;
      try {
        let answered = false;
        for await (const event of stream) {
          if (!answered) client.succeeded(address);
          answered = true;
          backoff = 100;
          const chain = (event as ChainEvent__Output).chain;
          if (chain !== null && chainStatus(chain.state) !== "RUNNING" && chainStatus(chain.state) !== "UNKNOWN") {
            return this.final(chain);
          }
        }
      } catch (err) {
        if (!isRpcError(err)) throw err;
        if (err.code === grpc.status.DEADLINE_EXCEEDED) continue; // a silent slice: open again at once
        if (err.code !== grpc.status.UNAVAILABLE) throw err;
        // Refused by a standby, or its broker unreachable: the next broker,
        // at once while a round of the addresses goes on.
        const next = client.failedAt(address, err, Date.now());
        if (next === 0) continue;
        if (next !== undefined) pause = next;
      } finally {
        stream.cancel();
      }
      // The stream ended or broke before the end (a broker restart), or a
      // round of the brokers ended: look again after a short pause, so a
      // dead broker is not spun on.
      const wait = pause ?? backoff;
      await sleep(remaining === undefined ? wait : Math.min(wait, Math.max(0, remaining)));
      if (pause === undefined) backoff = Math.min(backoff * 2, 2000);
    }
  }

  private final(chain: Chain__Output): unknown {
    switch (chainStatus(chain.state)) {
      case "SUCCEEDED":
        return decode(chain.result);
      case "FAILED":
        throw new ChainFailed(failureRecord(chain.failure));
      case "CANCELLED":
        throw new ChainCancelled(this.id, chain.cancelReason);
      default:
        throw new BatonError(`chain ${this.id} is in state ${chain.state}`);
    }
  }
}

/** A JSON payload from the broker; empty means null. */
export function decode(text: string): unknown {
  return text === "" ? null : JSON.parse(text);
}
