/**
 * The worker: one `Worker.Session` stream to the broker, task bodies beside it.
 *
 * Everything runs on Node's event loop: the stream, the heartbeat timer and
 * the task bodies (async functions; `concurrency` of them at once). A body
 * that blocks the loop blocks the heartbeats too, so keep CPU-bound work
 * in worker threads or child processes.
 *
 * The worker decides nothing about scheduling: it runs what the broker
 * assigns (never more than `concurrency` at once, plus `prefetch` waiting),
 * reports how each run ended, and keeps its leases alive with heartbeats.
 * Recovery follows the protocol: an outcome is kept until the broker
 * acknowledges it (it is durable then); after a lost connection the worker
 * reconnects with backoff (0.1 s doubling to 2 s), to the leader when given
 * several brokers (./failover.ts), lists what it still holds
 * in `Hello.held` and `Hello.held_slots`, and re-sends the unacknowledged
 * outcomes and throttle requests of the runs the broker says it still owns.
 * Runs the broker declares lost are aborted and not reported.
 */
import { hostname } from "node:os";
import * as grpc from "@grpc/grpc-js";
import type { Baton, Task } from "./app";
import { PHASES } from "./client";
import { type SlotBroker, TaskContext } from "./context";
import { Cancelled, ThrottleError, WorkerConfigError } from "./errors";
import { Brokers, NO_REFUSAL, refusalOf } from "./failover";
import type {
  Assignment__Output,
  BrokerMessage__Output,
  Cancel__Output,
  Hello,
  Outcome,
  OutcomeAck__Output,
  TaskDefinition,
  TaskRef,
  Throttle,
  ThrottleGranted__Output,
  Welcome__Output,
  WorkerError__Output,
  WorkerMessage,
} from "./gen/baton/v1/index";
import { keyOf, Ledger, type RunKey } from "./ledger";
import { consoleLogger, type Logger } from "./log";
import { optionsToPb } from "./options";
import * as outcomes from "./outcomes";
import { protocol } from "./proto";
import { startTaskSpan } from "./trace";
import { channelArgs, metadata } from "./transport";

const BACKOFF_MIN = 100;
const BACKOFF_MAX = 2000;
const WELCOME_TIMEOUT = 10_000;
const GOODBYE_TIMEOUT = 5_000;

/** Statuses no reconnect can fix: the broker refused this worker itself. */
const FATAL_CODES = new Set([
  grpc.status.INVALID_ARGUMENT,
  grpc.status.UNIMPLEMENTED,
  grpc.status.UNAUTHENTICATED,
  grpc.status.PERMISSION_DENIED,
]);

export interface WorkerOptions {
  /** Queues to take tasks from; default ["general"]. */
  queues?: string[];
  /** Most task bodies running at once; default 1. */
  concurrency?: number;
  /**
   * Assignments the broker may send beyond `concurrency` (Celery's
   * prefetch): they wait here, in order, until a run ends. They are this
   * worker's from assignment (leases and time limits run), so keep it for
   * many short tasks. Default 0.
   */
  prefetch?: number;
  /** Shown in inspection; default "host:pid". */
  name?: string;
  /** SIGTERM/SIGINT start a drain, a second one exits at once (status 1). Default false (the CLI sets it). */
  handleSignals?: boolean;
  logger?: Logger;
}

interface Waiter {
  resolve: (requestId: number) => void;
  reject: (err: Error) => void;
}

/** One assignment's body, from assignment until it ended (what the ledger holds is its bookkeeping). */
class Run {
  readonly key: RunKey;
  readonly ref: TaskRef;
  readonly assignment: Assignment__Output;
  readonly controller = new AbortController();
  /** The body was started (a prefetched run waits until a slot frees). */
  launched = false;
  ended = false;
  /** The broker sent Cancel: report "Cancelled" whatever the body returns. */
  cancelled = false;
  cancelReason = "";
  /** The broker no longer considers this run ours: report nothing. */
  lost = false;
  /** Who waits for each in-body throttle request not granted yet, by request id. */
  readonly waiters = new Map<number, Waiter>();

  constructor(
    assignment: Assignment__Output,
    readonly task: Task<never[], unknown>,
    readonly args: unknown[],
    readonly kwargs: Record<string, unknown>,
  ) {
    this.assignment = assignment;
    this.ref = { taskId: assignment.task?.taskId ?? "", attempt: assignment.task?.attempt ?? 0 };
    this.key = keyOf(this.ref);
  }

  get label(): string {
    return `${this.assignment.name}[${this.ref.taskId}] attempt ${this.ref.attempt}`;
  }
}

class SessionLost extends Error {
  override name = "SessionLost";
}

/** Runs an app's tasks for the broker until drained: `await app.worker({...}).run()`. */
export class Worker {
  readonly app: Baton;
  readonly queues: string[];
  readonly concurrency: number;
  readonly prefetch: number;
  readonly name: string;
  /** This connection's id (from the last Welcome). */
  workerId = "";
  /** The lease length the broker announced (ms). */
  leaseMs = 0;

  private readonly log: Logger;
  private readonly handleSignals: boolean;
  private readonly definitions: TaskDefinition[];
  /** What the worker holds across connections: runs, unacknowledged outcomes, throttle requests and slots. */
  private readonly ledger = new Ledger();
  /** Every assignment whose body has not ended: running, or prefetched and waiting. */
  private readonly runs = new Map<RunKey, Run>();
  /** Prefetched runs, in assignment order, until a slot frees. */
  private waiting: Run[] = [];
  /** Bodies running: at most `concurrency`. */
  private active = 0;
  private call: grpc.ClientDuplexStream<WorkerMessage, BrokerMessage__Output> | undefined;
  /** A welcomed stream is up: runs start, and messages are sent, only then. */
  private connected = false;
  private draining = false;
  private forced = false;
  /** Called whenever the worker may have become finished. */
  private wake: (() => void) | undefined;
  private stopSignals: (() => void) | undefined;

  constructor(app: Baton, options: WorkerOptions = {}) {
    const concurrency = options.concurrency ?? 1;
    const prefetch = options.prefetch ?? 0;
    if (!Number.isInteger(concurrency) || concurrency < 1) {
      throw new RangeError(`concurrency must be an integer >= 1 (got ${concurrency})`);
    }
    if (!Number.isInteger(prefetch) || prefetch < 0) {
      throw new RangeError(`prefetch must be an integer >= 0 (got ${prefetch})`);
    }
    this.app = app;
    this.queues = options.queues && options.queues.length > 0 ? [...options.queues] : ["general"];
    this.concurrency = concurrency;
    this.prefetch = prefetch;
    this.name = options.name ?? `${hostname()}:${process.pid}`;
    this.log = options.logger ?? consoleLogger(`worker ${this.name}`);
    this.handleSignals = options.handleSignals ?? false;
    // Converted now, so a bad declaration fails before connecting.
    this.definitions = [...app.tasks.values()].map((t) => ({ name: t.name, defaults: optionsToPb(t.options) }));
  }

  /** How many assignments the worker holds (running or waiting), and outcomes not acknowledged. */
  get held(): { runs: number; running: number } {
    return { runs: this.ledger.size, running: this.ledger.running() };
  }

  /**
   * Serves until drained (see {@link stop}).
   *
   * @throws WorkerConfigError the broker refused this worker (token, queue, task names)
   */
  async run(): Promise<void> {
    if (this.handleSignals) this.installSignals();
    this.log.info(
      `queues=${this.queues.join(",")} concurrency=${this.concurrency} prefetch=${this.prefetch} ` +
        `tasks=${[...this.app.tasks.keys()].sort().join(",")} broker=${this.app.address}`,
    );
    let brokers: Brokers;
    try {
      brokers = Brokers.parse(this.app.address);
    } catch (err) {
      throw new WorkerConfigError((err as Error).message);
    }
    let backoff = BACKOFF_MIN;
    let everWelcomed = false;
    // The first pause of an outage is logged as a warning; later ones are not.
    let quiet = false;
    try {
      while (!this.finished()) {
        const address = brokers.current;
        let welcomed = false;
        let refusal = NO_REFUSAL;
        try {
          if (
            await this.session(address, () => {
              welcomed = everWelcomed = true;
              backoff = BACKOFF_MIN;
              quiet = false;
              brokers.succeeded();
            })
          ) {
            break;
          }
        } catch (err) {
          const code = (err as grpc.ServiceError).code;
          if (typeof code === "number" && FATAL_CODES.has(code)) {
            throw new WorkerConfigError(
              `broker refused worker ${this.name}: ${grpc.status[code]}: ${(err as grpc.ServiceError).details}`,
            );
          }
          refusal = refusalOf(err);
          const detail =
            typeof code === "number" ? `${grpc.status[code]}: ${(err as grpc.ServiceError).details}` : String(err);
          const what = welcomed ? "connection lost" : everWelcomed ? "could not reconnect" : "could not connect";
          (welcomed || !quiet ? this.log.warn : this.log.debug)(`${what} to ${address} (${detail}); reconnecting`);
        }
        // The next broker at once while a round of the addresses goes on;
        // after a round, the backoff (its first step only if a standby
        // answered: the leader is being elected).
        const next = brokers.failed(refusal);
        if (next.kind === "now") {
          this.log.debug(`trying ${brokers.current}`);
          continue;
        }
        const pause = next.standby ? BACKOFF_MIN : backoff;
        if (!next.standby) backoff = Math.min(backoff * 2, BACKOFF_MAX);
        this.log.debug(`no broker of ${brokers.list.join(",")} took the worker; retrying in ${pause} ms`);
        quiet = true;
        await this.sleep(pause);
      }
    } finally {
      this.stopSignals?.();
      for (const run of this.runs.values()) run.controller.abort(new Cancelled("worker stopped"));
    }
    this.log.info("stopped");
  }

  /** Starts a drain (what SIGTERM does): take nothing new, finish what runs, say Goodbye. */
  stop(): void {
    if (!this.draining) {
      this.draining = true;
      this.log.info("draining");
      this.send({ drain: {} });
    }
    this.notify();
  }

  /** Gives up at once: running bodies are aborted and not reported (their leases lapse). */
  kill(): void {
    this.forced = true;
    this.call?.cancel();
    this.notify();
  }

  private installSignals(): void {
    const onSignal = (signal: NodeJS.Signals): void => {
      if (!this.draining) {
        this.log.info(`${signal}: draining (again to exit now)`);
        this.stop();
      } else {
        this.log.warn(`${signal} again: exiting without finishing ${this.runs.size} task(s)`);
        process.exit(1);
      }
    };
    process.on("SIGTERM", onSignal);
    process.on("SIGINT", onSignal);
    this.stopSignals = () => {
      process.off("SIGTERM", onSignal);
      process.off("SIGINT", onSignal);
    };
  }

  private finished(): boolean {
    return this.forced || (this.draining && this.ledger.size === 0);
  }

  private notify(): void {
    this.wake?.();
  }

  /** The reconnect backoff; ends early once the worker is finished. */
  private sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(done, ms);
      const self = this;
      function done(): void {
        clearTimeout(timer);
        if (self.wake === check) self.wake = undefined;
        resolve();
      }
      function check(): void {
        if (self.finished()) done();
      }
      this.wake = check;
    });
  }

  // -- one connection ------------------------------------------------------

  private hello(): Hello {
    return {
      workerName: this.name,
      queues: this.queues,
      tasks: this.definitions,
      concurrency: this.concurrency,
      prefetch: this.prefetch,
      ...this.ledger.hello(),
    };
  }

  /** Runs one stream to `address`; resolves true once the worker is done (drained, or killed). */
  private session(address: string, onWelcome: () => void): Promise<boolean> {
    const { grpcObject } = protocol();
    const { credentials, options } = channelArgs(this.app.tls, {
      // A connection of its own, so no other channel's backoff delays an attempt.
      "grpc.use_local_subchannel_pool": 1,
    });
    const client = new grpcObject.baton.v1.Worker(address, credentials, options);
    const call = client.Session(metadata(this.app.token));
    let heartbeat: NodeJS.Timeout | undefined;
    let welcomeTimer: NodeJS.Timeout | undefined;
    let goodbyeTimer: NodeJS.Timeout | undefined;
    let saidGoodbye = false;

    return new Promise<boolean>((resolve, reject) => {
      let settled = false;
      const settle = (fn: () => void): void => {
        if (settled) return;
        settled = true;
        clearInterval(heartbeat);
        clearTimeout(welcomeTimer);
        clearTimeout(goodbyeTimer);
        if (this.call === call) {
          this.call = undefined;
          this.connected = false;
        }
        if (this.wake === onFinished) this.wake = undefined;
        call.cancel();
        client.close();
        fn();
      };
      const onFinished = (): void => {
        if (!this.finished() || saidGoodbye) return;
        saidGoodbye = true;
        if (this.forced) {
          settle(() => resolve(true));
          return;
        }
        // Goodbye, then half-close: the broker ends the stream.
        call.write({ goodbye: {} });
        call.end();
        goodbyeTimer = setTimeout(() => settle(() => resolve(true)), GOODBYE_TIMEOUT);
      };

      welcomeTimer = setTimeout(() => settle(() => reject(new SessionLost("no welcome"))), WELCOME_TIMEOUT);
      call.on("data", (msg: BrokerMessage__Output) => {
        if (settled) return;
        if (this.call !== call) {
          if (msg.msg !== "welcome" || !msg.welcome) {
            settle(() => reject(new SessionLost(`expected a welcome, got ${msg.msg}`)));
            return;
          }
          clearTimeout(welcomeTimer);
          this.call = call;
          this.connected = true;
          onWelcome();
          this.welcome(msg.welcome);
          const interval = msg.welcome.heartbeatIntervalMs || 1000;
          heartbeat = setInterval(() => this.send({ heartbeat: {} }), interval);
          this.wake = onFinished;
          this.launchWaiting();
          onFinished();
          return;
        }
        this.dispatch(msg);
      });
      call.on("error", (err: Error) => {
        settle(() => (saidGoodbye ? resolve(true) : reject(err)));
      });
      call.on("end", () => {
        settle(() => (saidGoodbye ? resolve(true) : reject(new SessionLost("the broker closed the stream"))));
      });
      call.write({ hello: this.hello() });
      if (this.draining) call.write({ drain: {} });
    });
  }

  private welcome(welcome: Welcome__Output): void {
    this.workerId = welcome.workerId;
    this.leaseMs = welcome.leaseMs;
    const { lost, resend } = this.ledger.welcome(welcome);
    for (const ref of lost) {
      const run = this.runs.get(keyOf(ref));
      if (run !== undefined) {
        this.log.warn(`task ${run.label}: lease lost while disconnected; stopping it`);
        run.lost = true;
        this.stopRun(run, "lease lost");
      }
    }
    // Whatever the broker did not declare lost is still ours: send again what
    // it has not acknowledged, and the throttle requests it has not granted.
    for (const msg of resend) this.send(msg);
    this.log.info(
      `connected as ${welcome.workerId} (lease ${welcome.leaseMs} ms, kept ${welcome.kept.length}, lost ${welcome.lost.length})`,
    );
    this.notify();
  }

  private dispatch(msg: BrokerMessage__Output): void {
    switch (msg.msg) {
      case "assignment":
        if (msg.assignment) this.assigned(msg.assignment);
        return;
      case "cancel":
        if (msg.cancel) this.cancel(msg.cancel);
        return;
      case "outcomeAck":
        if (msg.outcomeAck) this.acked(msg.outcomeAck);
        return;
      case "throttleGranted":
        if (msg.throttleGranted) this.granted(msg.throttleGranted);
        return;
      case "error":
        if (msg.error) this.refused(msg.error);
        return;
      case "batch":
        for (const inner of msg.batch?.messages ?? []) this.dispatch(inner);
        return;
      default:
        this.log.warn(`unexpected ${String(msg.msg)} from the broker`);
    }
  }

  /** Sends on the welcomed stream; dropped while disconnected (the next Hello and Welcome catch up). */
  private send(msg: WorkerMessage): void {
    if (this.call !== undefined && this.connected) this.call.write(msg);
  }

  // -- runs --------------------------------------------------------------------

  private assigned(a: Assignment__Output): void {
    const ref: TaskRef = { taskId: a.task?.taskId ?? "", attempt: a.task?.attempt ?? 0 };
    if (!this.ledger.start(ref)) {
      this.log.warn(`task ${a.name}[${ref.taskId}]: attempt ${ref.attempt} assigned twice; ignored`);
      return;
    }
    const task = this.app.tasks.get(a.name);
    if (task === undefined) {
      this.report(
        ref,
        outcomes.failure("NotRegistered", `task ${JSON.stringify(a.name)} is not registered in this worker`),
      );
      return;
    }
    let args: unknown;
    let kwargs: unknown;
    try {
      args = a.args === "" ? [] : JSON.parse(a.args);
      kwargs = a.kwargs === "" ? {} : JSON.parse(a.kwargs);
      if (!Array.isArray(args) || typeof kwargs !== "object" || kwargs === null || Array.isArray(kwargs)) {
        throw new Error("args must be a JSON array and kwargs a JSON object");
      }
    } catch (err) {
      this.report(ref, outcomes.failure("DecodeError", `bad arguments for ${a.name}: ${(err as Error).message}`));
      return;
    }
    const run = new Run(a, task, args, kwargs as Record<string, unknown>);
    this.runs.set(run.key, run);
    if (this.waiting.length > 0 || this.active >= this.concurrency || !this.connected) {
      this.waiting.push(run);
      return;
    }
    this.launch(run);
  }

  /** Starts prefetched runs in the free slots, while connected. */
  private launchWaiting(): void {
    while (this.connected && this.waiting.length > 0 && this.active < this.concurrency) {
      const run = this.waiting.shift();
      if (run !== undefined) this.launch(run);
    }
  }

  private launch(run: Run): void {
    run.launched = true;
    this.active += 1;
    this.log.debug(`task ${run.label}: started`);
    const a = run.assignment;
    const ctx = new TaskContext(
      {
        name: a.name,
        taskId: run.ref.taskId ?? "",
        attempt: run.ref.attempt ?? 0,
        chainId: a.chainId,
        phase: PHASES[a.phase] ?? "",
        stepIndex: a.stepIndex,
        queue: a.queue,
        context: a.context,
        kwargs: run.kwargs,
        polls: a.polls,
        retries: a.retries,
        timeoutMs: a.timeoutMs,
      },
      run.controller.signal,
      this.slotBroker(run),
      this.app,
    );
    const started = Date.now();
    const body = run.task.fn as unknown as (ctx: TaskContext, ...args: unknown[]) => unknown;
    const span = startTaskSpan(
      a.name,
      { "baton.chain_id": ctx.chainId, "baton.task_id": ctx.taskId, "baton.attempt": ctx.attempt },
      ctx.context,
    );
    Promise.resolve()
      .then(() => span.run(() => body(ctx, ...run.args)))
      .then(
        (value) => outcomes.fromResult(value, a.name),
        (err: unknown) => outcomes.fromError(err),
      )
      .then((outcome) => {
        span.end(outcome);
        this.log.info(`task ${run.label}: ${describe(outcome)} in ${Date.now() - started} ms`);
        this.ended(run, outcome);
      })
      .catch((err: unknown) => this.log.error(`task ${run.label}: ${String(err)}`));
  }

  /** A run's body returned (or a prefetched run was stopped before it started). */
  private ended(run: Run, outcome: Outcome): void {
    if (run.ended) return;
    run.ended = true;
    if (this.runs.get(run.key) === run) this.runs.delete(run.key);
    if (run.launched) {
      this.active -= 1;
      this.launchWaiting();
    }
    for (const waiter of run.waiters.values()) waiter.reject(new Cancelled("the run ended"));
    run.waiters.clear();
    if (run.lost) {
      this.log.info(`task ${run.label}: ended after its lease was lost; not reported`);
      this.notify();
      return;
    }
    this.report(run.ref, run.cancelled ? outcomes.cancelled(run.cancelReason) : outcome);
  }

  /** Records the outcome in the ledger (which keeps it until acknowledged) and sends it. */
  private report(ref: TaskRef, outcome: Outcome): void {
    const msg = this.ledger.finish(ref, outcome);
    if (msg !== undefined) this.send(msg);
    this.notify();
  }

  private acked(ack: OutcomeAck__Output): void {
    if (!this.ledger.acked(ack.task)) return;
    if (!ack.accepted) this.log.warn(`task ${keyOf(ack.task)}: outcome rejected by the broker: ${ack.reason}`);
    this.notify();
  }

  private cancel(cancel: Cancel__Output): void {
    const run = this.runs.get(keyOf(cancel.task));
    if (run === undefined) return;
    this.log.info(`task ${run.label}: cancelled by the broker (${cancel.reason})`);
    run.cancelled = true;
    this.stopRun(run, cancel.reason || "cancelled");
  }

  /** Asks a run to stop: its signal aborts; a prefetched one never starts. */
  private stopRun(run: Run, reason: string): void {
    run.cancelReason = reason;
    if (!run.controller.signal.aborted) run.controller.abort(new Cancelled(reason));
    if (!run.launched) {
      this.waiting = this.waiting.filter((w) => w !== run);
      this.ended(run, outcomes.cancelled(reason));
    }
  }

  // -- in-body throttles -------------------------------------------------------

  private slotBroker(run: Run): SlotBroker {
    return {
      acquire: (throttle, signal) => this.acquire(run, throttle, signal),
      release: (requestId) => this.release(run, requestId),
    };
  }

  private acquire(run: Run, throttle: Throttle, signal: AbortSignal): Promise<number> {
    const request = run.ended || run.lost || signal.aborted ? undefined : this.ledger.request(run.ref, throttle);
    if (request === undefined) {
      return Promise.reject(new Cancelled(run.cancelReason || "the run is no longer current"));
    }
    const { requestId, message } = request;
    return new Promise<number>((resolve, reject) => {
      const onAbort = (): void => {
        // Withdraw the request (releasing one that was not granted withdraws it).
        if (run.waiters.delete(requestId)) {
          const release = this.ledger.release(requestId);
          if (release !== undefined) this.send(release);
          reject(new Cancelled(`cancelled while waiting for a throttle slot: ${run.cancelReason}`));
        }
      };
      run.waiters.set(requestId, {
        resolve: (id) => {
          signal.removeEventListener("abort", onAbort);
          resolve(id);
        },
        reject: (err) => {
          signal.removeEventListener("abort", onAbort);
          reject(err);
        },
      });
      signal.addEventListener("abort", onAbort, { once: true });
      this.send(message);
    });
  }

  private granted(granted: ThrottleGranted__Output): void {
    const requestId = granted.requestId;
    const ref = this.ledger.granted(requestId);
    const run = ref === undefined ? undefined : this.runs.get(keyOf(ref));
    const waiter = run?.waiters.get(requestId);
    if (run === undefined || waiter === undefined) {
      this.log.debug(`throttle grant for unknown request ${requestId} ignored`);
      return;
    }
    run.waiters.delete(requestId);
    waiter.resolve(requestId);
  }

  private release(run: Run, requestId: number): void {
    if (run.ended) return; // the broker released its slots with the run
    const msg = this.ledger.release(requestId);
    if (msg !== undefined) this.send(msg);
  }

  private refused(error: WorkerError__Output): void {
    const ref = error.requestId ? this.ledger.refused(error.requestId) : undefined;
    const run = ref === undefined ? undefined : this.runs.get(keyOf(ref));
    const waiter = run?.waiters.get(error.requestId);
    if (run !== undefined && waiter !== undefined) {
      run.waiters.delete(error.requestId);
      waiter.reject(new ThrottleError(error.message));
      return;
    }
    this.log.warn(`the broker refused a request: ${error.message}`);
  }
}

function describe(outcome: Outcome): string {
  if (outcome.failure) {
    const f = outcome.failure;
    return `failed (${f.errorType}: ${f.message}${f.retryable ? "" : ", fatal"})`;
  }
  if (outcome.retryLater) return `retry in ${String(outcome.retryLater.delayMs)} ms`;
  return "succeeded";
}
