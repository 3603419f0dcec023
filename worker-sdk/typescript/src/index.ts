/**
 * Baton for TypeScript and JavaScript: the client and worker SDK of the
 * Baton task broker.
 *
 * ```ts
 * import { Baton, chain } from "@baton/sdk";
 * const app = new Baton("127.0.0.1:7070");
 * const slow = app.task({ name: "demo.slow" }, async (ctx, uuid: number) => {
 *   await ctx.throttle({ concurrency: 1, key: `vm:${uuid}` }, async () => { ... });
 * });
 * const handle = await chain(slow.si(10), fast.si(10)).delay();
 * await handle.get({ timeout: 60_000 });
 * ```
 */
export {
  Baton,
  type BatonOptions,
  type MutableArgs,
  type ScheduleOptions,
  Task,
  type TaskBody,
  type TaskOptions,
} from "./app";
export {
  type Callback,
  Chain,
  type ChainOptions,
  chain,
  chord,
  Group,
  group,
  Nested,
  nested,
  Signature,
} from "./canvas";
export { ChainHandle, type ChainStatus, Client, type Dedup, type RpcError } from "./client";
export { type Slot, TaskContext } from "./context";
export {
  BatonError,
  Cancelled,
  ChainCancelled,
  ChainFailed,
  type FailureRecord,
  Fatal,
  PartialSubmission,
  Retry,
  ThrottleError,
  TimeoutError,
  WorkerConfigError,
} from "./errors";
export { consoleLogger, type Logger, type LogLevel } from "./log";
export type { StepOptions, ThrottleScope, ThrottleSpec } from "./options";
export { PROTO_FILE, PROTO_ROOT, type pb } from "./proto";
export { checkTraceparent, TRACEPARENT, TRACESTATE, traceIdOf } from "./trace";
export type { PemSource, TlsOptions } from "./transport";
export { Worker, type WorkerOptions } from "./worker";
