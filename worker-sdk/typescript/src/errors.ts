/**
 * Errors of the SDK: what a task body throws to say how it ended
 * ({@link Retry}, {@link Fatal}), and what the client throws when a chain
 * ends badly ({@link ChainFailed}, {@link ChainCancelled}).
 */

/** The failure record of a failed step, as on_failure and {@link ChainFailed} see it. */
export interface FailureRecord {
  chain_id: string;
  /** "main", "on_success" or "on_failure". */
  phase: string;
  step_index: number;
  task_name: string;
  task_id: string;
  attempt: number;
  error_type: string;
  message: string;
  traceback: string;
}

/** Base class of the SDK's own errors. */
export class BatonError extends Error {
  override name = "BatonError";
}

/**
 * Thrown by a task body: "not done yet, run me again in `after` ms" (the
 * NodeConductor polling tasks). The step keeps its place in its chain and
 * spends one unit of its poll budget (`maxPolls`, default 100); no callback
 * fires until the budget runs out, then it fails with "PollBudgetExhausted".
 */
export class Retry extends BatonError {
  override name = "Retry";
  /** Milliseconds before the next run. */
  readonly after: number;
  constructor(options: { after?: number; message?: string } = {}) {
    super(options.message ?? "");
    const after = options.after ?? 1000;
    if (!Number.isFinite(after) || after < 0) {
      throw new RangeError(`Retry: after must be a non-negative number of ms (got ${after})`);
    }
    this.after = Math.round(after);
  }
}

/**
 * Thrown by a task body: a failure that is never retried, whatever
 * `maxRetries` allows. A plain `Fatal` with a `cause` reports the cause's
 * type (`new Fatal("bad input", { cause: err })`); a subclass reports its own.
 */
export class Fatal extends BatonError {
  override name = "Fatal";
}

/** The run was cancelled by the broker (chain cancelled, time limit, lease lost). */
export class Cancelled extends BatonError {
  override name = "Cancelled";
}

/**
 * The broker refused an in-body throttle request (a malformed throttle, say).
 * `fatal` is true for a refusal: thrown from a body, it fails the step for
 * good with error type `ThrottleRefused` (asking again would be refused
 * again), as the Rust and Go SDKs report it.
 */
export class ThrottleError extends BatonError {
  override name = "ThrottleError";
  readonly fatal: boolean = true;
}

/** The broker refused the worker's Hello (bad queue, task name, token): retrying cannot help. */
export class WorkerConfigError extends BatonError {
  override name = "WorkerConfigError";
}

/** A wait ran out of time (`handle.get({ timeout })`, `stored`). */
export class TimeoutError extends BatonError {
  override name = "TimeoutError";
}

/** Thrown by `handle.get()` when the chain failed; `record` says which step and why. */
export class ChainFailed extends BatonError {
  override name = "ChainFailed";
  readonly record: FailureRecord;
  constructor(record: FailureRecord) {
    super(`${record.task_name || "?"} failed: ${record.error_type || "?"}: ${record.message}`);
    this.record = record;
  }
  get errorType(): string {
    return this.record.error_type;
  }
  get traceback(): string {
    return this.record.traceback;
  }
}

/** Thrown by `handle.get()` when the chain was cancelled. */
export class ChainCancelled extends BatonError {
  override name = "ChainCancelled";
  readonly chainId: string;
  readonly reason: string;
  constructor(chainId: string, reason = "") {
    super(`chain ${chainId} was cancelled${reason ? `: ${reason}` : ""}`);
    this.chainId = chainId;
    this.reason = reason;
  }
}

/**
 * `submitMany` stored some batches, then the broker refused one. Each batch
 * of up to 1000 chains is stored all or nothing, so the chains of the
 * earlier batches are stored (`stored`, in order) and none after. `code`
 * and `details` are the refused call's; the `chains[i]` the details name
 * counts from the start of the refused batch, that is from item `stored.length`.
 */
export class PartialSubmission<H = unknown> extends BatonError {
  override name = "PartialSubmission";
  readonly stored: H[];
  readonly code: number | undefined;
  readonly details: string;
  constructor(stored: H[], total: number, cause: Error & { code?: number; details?: string }) {
    super(
      `${stored.length} of ${total} chains stored; the batch from item ${stored.length} was refused: ${cause.message}`,
      { cause },
    );
    this.stored = stored;
    this.code = cause.code;
    this.details = cause.details ?? cause.message;
  }
}
