/**
 * The application object: {@link Baton} (task registry and broker client)
 * and {@link Task}.
 *
 * As in Celery, one app is shared by the code that submits work and the
 * workers that run it: `app.task({...}, body)` registers a body under a
 * name, and both sides derive the same name and declared options from the
 * same module. Creating the app opens no connection, so importing a task
 * module is always safe.
 */
import { Chain, type ChainOptions, Signature } from "./canvas";
import { ChainHandle, Client } from "./client";
import type { TaskContext } from "./context";
import { PartialSubmission } from "./errors";
import { splitAddrs } from "./failover";
import type { AdminClient } from "./gen/baton/v1/Admin";
import type { BrokerClient } from "./gen/baton/v1/Broker";
import type { ScheduleInfo__Output, SubmitChainRequest } from "./gen/baton/v1/index";
import { newChainId } from "./ids";
import { checkOptions, type StepOptions } from "./options";
import { checkToken, envAddress, type TlsOptions, tlsConfig } from "./transport";
import { Worker, type WorkerOptions } from "./worker";

/** A task body: the run's context first, then the signature's arguments. */
export type TaskBody<A extends unknown[] = unknown[], R = unknown> = (ctx: TaskContext, ...args: A) => R | Promise<R>;

/** `app.task({ name, ...options }, body)`: the name, and the task's declared defaults. */
export interface TaskOptions extends StepOptions {
  name: string;
}

/** The arguments of `.s()`: a mutable signature gets the previous result first. */
export type MutableArgs<A extends unknown[]> = A extends [unknown, ...infer Rest] ? Rest : unknown[];

/** Most chains in one SubmitChains call (the broker's limit). */
const MAX_BATCH = 1000;
/** Largest encoded SubmitChains request `submitMany` sends (the broker's default limit is 1 MiB). */
const MAX_BATCH_BYTES = 900 * 1024;

/**
 * A registered task: the body plus its name and declared options. The
 * worker registers the options with the broker, and every submission
 * carries them too, so they apply whoever submits.
 */
export class Task<A extends unknown[] = unknown[], R = unknown> {
  readonly app: Baton;
  readonly name: string;
  readonly options: Readonly<StepOptions>;
  readonly fn: TaskBody<A, R>;

  constructor(app: Baton, name: string, options: StepOptions, fn: TaskBody<A, R>) {
    this.app = app;
    this.name = name;
    this.options = options;
    this.fn = fn;
  }

  toString(): string {
    return `Task(${this.name})`;
  }

  /** A mutable signature: the previous step's result is prepended to `args`. */
  s(...args: MutableArgs<A>): Signature {
    return new Signature(this.name, args, {}, false, {}, { app: this.app, declared: this.options });
  }

  /** An immutable signature: runs with exactly these arguments. */
  si(...args: A): Signature {
    return new Signature(this.name, args, {}, true, {}, { app: this.app, declared: this.options });
  }

  /** A signature with keyword arguments and options. */
  signature(
    args: unknown[] = [],
    options: StepOptions & { kwargs?: Record<string, unknown>; immutable?: boolean } = {},
  ): Signature {
    const { kwargs, immutable, ...opts } = options;
    return new Signature(this.name, args, kwargs ?? {}, immutable ?? false, opts, {
      app: this.app,
      declared: this.options,
    });
  }

  /** Runs the task on a worker; resolves to the chain's handle once the broker stored it. */
  delay(...args: A): Promise<ChainHandle> {
    return this.si(...args).applyAsync();
  }

  /** Like {@link delay} with step options (`countdown`, `queue`, ...) and chain options (`onFailure`, ...). */
  applyAsync(
    args: A,
    options: StepOptions & ChainOptions & { kwargs?: Record<string, unknown> } = {},
  ): Promise<ChainHandle> {
    return this.si(...args).applyAsync(options);
  }
}

export interface BatonOptions {
  /** Sent as `authorization: Bearer <token>` on every call; default `$BATON_TOKEN`. */
  token?: string;
  /** `true` (system roots) or `{ ca, cert, key, domain }`; default plaintext. */
  tls?: boolean | TlsOptions;
  /** Bound of every unary call, ms (including the wait for a broker that is down); default 30 s. */
  timeout?: number;
}

/** An address as given: `undefined` or "" for the default; else a list with one address at least. */
function checkAddress(address: string | undefined): string | undefined {
  if (address && splitAddrs(address).length === 0) {
    throw new TypeError(`no broker address in ${JSON.stringify(address)}`);
  }
  return address;
}

/**
 * When a schedule fires: a `cron` expression (five fields, or six with
 * seconds first) in an IANA `timezone` (UTC by default), or `every` so many
 * seconds (at least 1). See docs/concepts.md, "Schedules".
 */
export interface ScheduleOptions {
  cron?: string;
  timezone?: string;
  /** Seconds between fire times. */
  every?: number;
  /** Fire times missed while the broker was down: the latest this many still fire (default 0: skipped). */
  catchUp?: number;
  /** Seconds each chain has after it is submitted (its deadline). */
  deadline?: number;
  /** Add it paused. */
  paused?: boolean;
}

/** A Baton application: registers tasks and talks to its broker (or the leader among several). */
export class Baton {
  readonly tasks = new Map<string, Task<never[], unknown>>();
  /** Bound of every unary call, ms. */
  timeout: number;
  private addressValue: string | undefined;
  private tokenValue: string | undefined;
  private tlsValue: TlsOptions | undefined;
  private clientValue: Client | undefined;

  /**
   * `address` is the broker's `host:port`, or several brokers sharing one
   * database as a comma list (`"h1:7070,h2:7070"`: calls and workers follow
   * the leader); default `$BATON_ADDR`, else 127.0.0.1:7070.
   *
   * @throws TypeError `address` is a list with no address in it (`" , "`)
   */
  constructor(address?: string, options: BatonOptions = {}) {
    this.addressValue = checkAddress(address);
    this.tokenValue = checkToken(options.token);
    this.tlsValue = tlsConfig(options.tls);
    this.timeout = options.timeout ?? 30_000;
  }

  get address(): string {
    return this.addressValue || envAddress();
  }

  /** Points the app at another broker (the worker CLI's `--broker`); closes the current channel. */
  set address(value: string) {
    this.close();
    this.addressValue = checkAddress(value);
  }

  get token(): string | undefined {
    return this.tokenValue ?? checkToken(process.env.BATON_TOKEN);
  }

  set token(value: string | undefined) {
    this.close();
    this.tokenValue = checkToken(value);
  }

  get tls(): TlsOptions | undefined {
    return this.tlsValue;
  }

  set tls(value: boolean | TlsOptions | undefined) {
    this.close();
    this.tlsValue = tlsConfig(value);
  }

  /** The client, opened on first use. */
  get client(): Client {
    if (this.clientValue === undefined) {
      this.clientValue = new Client(this.address, { token: this.token, tls: this.tls, timeout: this.timeout });
    }
    return this.clientValue;
  }

  /** The generated Broker stub (its calls need `app.client.metadata()` for the token). */
  get broker(): BrokerClient {
    return this.client.broker;
  }

  /** The generated Admin stub: ListQueues, ListWorkers, ListThrottles, SetThrottleLimit, ... */
  get admin(): AdminClient {
    return this.client.admin;
  }

  /** Closes the channel; the next call opens a new one. */
  close(): void {
    this.clientValue?.close();
    this.clientValue = undefined;
  }

  /**
   * Registers a task: `app.task({ name: "demo.slow", heavy: true, throttle: 1 }, async (ctx, uuid: number) => ...)`.
   * The options are the task's declared defaults (see {@link StepOptions}).
   */
  task<A extends unknown[], R>(options: TaskOptions | string, fn: TaskBody<A, R>): Task<A, Awaited<R>> {
    const { name, ...rest } = typeof options === "string" ? { name: options } : options;
    if (typeof name !== "string" || name === "") throw new TypeError("app.task: a task needs a name");
    if (typeof fn !== "function") throw new TypeError(`app.task(${name}): the body must be a function`);
    const declared = checkOptions(rest, `app.task(${name})`);
    if (this.tasks.has(name) && this.tasks.get(name)?.fn !== (fn as unknown)) {
      throw new Error(`task name ${JSON.stringify(name)} is already registered`);
    }
    const task = new Task<A, Awaited<R>>(this, name, declared, fn as TaskBody<A, Awaited<R>>);
    this.tasks.set(name, task as unknown as Task<never[], unknown>);
    return task;
  }

  /** A signature of a task known only by name (one a worker in another language runs, say). */
  signature(
    name: string,
    args: unknown[] = [],
    options: StepOptions & { kwargs?: Record<string, unknown>; immutable?: boolean } = {},
  ): Signature {
    const { kwargs, immutable, ...opts } = options;
    return new Signature(name, args, kwargs ?? {}, immutable ?? false, opts, {
      app: this,
      declared: this.tasks.get(name)?.options,
    });
  }

  /**
   * Adds a periodic schedule, or replaces the one with the same name: the
   * broker submits `item` (a signature or a chain, with `chainOptions` such
   * as callbacks and context) once per fire time and keeps the schedule
   * across restarts. Resolves with the schedule and its next fire times.
   *
   * @throws RpcError INVALID_ARGUMENT naming what is wrong (the cron expression, the time zone, the chain)
   */
  schedule(
    name: string,
    item: Signature | Chain,
    options: ScheduleOptions,
    chainOptions: ChainOptions = {},
  ): Promise<ScheduleInfo__Output> {
    const chain = item instanceof Chain ? item : new Chain([item]);
    // Each fire gets its own chain id and idempotency key from the broker.
    const { chainId: _, ...request } = chain.toRequest(chainOptions);
    const ms = (seconds: number | undefined): number => Math.round((seconds ?? 0) * 1000);
    return this.client.putSchedule({
      schedule: {
        name,
        cron: options.cron ?? "",
        timezone: options.timezone ?? "",
        everyMs: ms(options.every),
        chain: request,
        deadlineMs: ms(options.deadline),
        catchUp: options.catchUp ?? 0,
        paused: options.paused ?? false,
      },
    });
  }

  /** Every schedule, by name, with its next fire times. */
  schedules(): Promise<ScheduleInfo__Output[]> {
    return this.client.listSchedules();
  }

  /** Pauses a schedule: it fires nothing, and the fire times it passes meanwhile are skipped. */
  pauseSchedule(name: string): Promise<ScheduleInfo__Output> {
    return this.client.pauseSchedule(name, true);
  }

  /** Resumes a paused schedule from its next fire time. */
  resumeSchedule(name: string): Promise<ScheduleInfo__Output> {
    return this.client.pauseSchedule(name, false);
  }

  /** Removes a schedule; the chains it submitted are left alone. */
  removeSchedule(name: string): Promise<void> {
    return this.client.removeSchedule(name);
  }

  /** The handle of a chain by id (Celery's `AsyncResult(id)`). */
  result(chainId: string): ChainHandle {
    return new ChainHandle(() => this.client, chainId);
  }

  /**
   * Sends a prepared SubmitChain request (what `chain(...).toRequest()`
   * builds); resolves once the chain is stored durably. Without a
   * `chainId` a new one is chosen here, so a cut-off call is sent again safely.
   */
  async submit(request: SubmitChainRequest): Promise<ChainHandle> {
    const withId = request.chainId ? request : { ...request, chainId: newChainId() };
    const response = await this.client.submit(withId);
    return new ChainHandle(() => this.client, response.chainId, response.dedup);
  }

  /**
   * Submits many chains with SubmitChains, up to 1000 per call, each call
   * one durable commit that stores all of its chains or none. `items` are
   * signatures (one-step chains) or chains; `options` apply to each.
   * Resolves with the handles in the order of `items`.
   *
   * @throws RpcError the first batch was refused (INVALID_ARGUMENT naming `chains[i]`): nothing stored
   * @throws PartialSubmission a later batch was refused; `stored` holds the earlier batches' handles
   */
  async submitMany(items: (Signature | Chain)[], options: ChainOptions = {}): Promise<ChainHandle[]> {
    const requests = items.map((item) =>
      (item instanceof Chain ? item : new Chain([item])).toRequest({ ...options, chainId: undefined }),
    );
    const handles: ChainHandle[] = [];
    let batch: SubmitChainRequest[] = [];
    let bytes = 0;
    const flush = async (): Promise<void> => {
      if (batch.length === 0) return;
      let answers: Awaited<ReturnType<Client["submitMany"]>>;
      try {
        answers = await this.client.submitMany(batch);
      } catch (err) {
        if (handles.length === 0) throw err;
        throw new PartialSubmission<ChainHandle>([...handles], requests.length, err as Error);
      }
      for (const a of answers) handles.push(new ChainHandle(() => this.client, a.chainId, a.dedup));
      batch = [];
      bytes = 0;
    };
    for (const request of requests) {
      const size = JSON.stringify(request).length;
      if (batch.length >= MAX_BATCH || (batch.length > 0 && bytes + size > MAX_BATCH_BYTES)) await flush();
      batch.push(request);
      bytes += size;
    }
    await flush();
    return handles;
  }

  /** A worker for this app's tasks; `await worker.run()` serves until drained. */
  worker(options: WorkerOptions = {}): Worker {
    return new Worker(this, options);
  }
}
