/**
 * What a running task knows about itself: {@link TaskContext}, the first
 * argument of every task body. It carries the run's identity, the chain's
 * context map, an `AbortSignal` the broker's cancel reaches, and the
 * in-body throttle (`ctx.throttle(spec, fn)`).
 */

import type { Baton } from "./app";
import { Cancelled } from "./errors";
import type { Throttle } from "./gen/baton/v1/index";
import { type ThrottleSpec, throttleToPb } from "./options";
import { TRACEPARENT, TRACESTATE, traceIdOf } from "./trace";

/** What `ctx.throttle` needs from the worker: the in-body throttle calls of this run. */
export interface SlotBroker {
  /** Asks the broker for a slot and resolves with the request id once granted; rejects on cancel or refusal. */
  acquire(throttle: Throttle, signal: AbortSignal): Promise<number>;
  /** Gives a granted slot back (or withdraws a pending request). */
  release(requestId: number): void;
}

/** A granted in-body throttle slot; `release()` gives it back (idempotent). */
export interface Slot {
  readonly requestId: number;
  release(): void;
}

export interface RunInfo {
  name: string;
  taskId: string;
  attempt: number;
  chainId: string;
  phase: string;
  stepIndex: number;
  queue: string;
  context: Record<string, string>;
  kwargs: Record<string, unknown>;
  polls: number;
  retries: number;
  timeoutMs: number;
}

export class TaskContext implements RunInfo {
  readonly name: string;
  /** Stable across attempts. */
  readonly taskId: string;
  /** 1 on the first run; counts every run (retries, polls, redeliveries). */
  readonly attempt: number;
  readonly chainId: string;
  /** "main", "on_success" or "on_failure". */
  readonly phase: string;
  readonly stepIndex: number;
  readonly queue: string;
  /** The chain's context map (user, request id, ...): the same for every step and callback. */
  readonly context: Readonly<Record<string, string>>;
  /** Keyword arguments (from a signature made with kwargs, e.g. by another language's client). */
  readonly kwargs: Readonly<Record<string, unknown>>;
  /** Retry-later outcomes the step reported so far. */
  readonly polls: number;
  /** Retryable failures the step retried so far. */
  readonly retries: number;
  /** The run's time limit (0: none); the broker cancels the run when it passes. */
  readonly timeoutMs: number;
  /** Aborted when the broker cancels the run (chain cancelled, time limit, lease lost). */
  readonly signal: AbortSignal;
  /** The app whose worker runs this task: submit follow-up work with it. */
  readonly app: Baton;
  private readonly slots: SlotBroker;

  constructor(info: RunInfo, signal: AbortSignal, slots: SlotBroker, app: Baton) {
    this.name = info.name;
    this.taskId = info.taskId;
    this.attempt = info.attempt;
    this.chainId = info.chainId;
    this.phase = info.phase;
    this.stepIndex = info.stepIndex;
    this.queue = info.queue;
    this.context = Object.freeze({ ...info.context });
    this.kwargs = Object.freeze({ ...info.kwargs });
    this.polls = info.polls;
    this.retries = info.retries;
    this.timeoutMs = info.timeoutMs;
    this.signal = signal;
    this.slots = slots;
    this.app = app;
  }

  /** The chain's W3C `traceparent` (the submitter's span), if any: the same for every step and callback. */
  get traceparent(): string | undefined {
    return this.context[TRACEPARENT];
  }

  /** The W3C `tracestate` that goes with {@link traceparent}. */
  get tracestate(): string | undefined {
    return this.context[TRACESTATE];
  }

  /** The trace id (32 hex digits) of {@link traceparent}. */
  get traceId(): string | undefined {
    return traceIdOf(this.traceparent);
  }

  /** Whether the broker cancelled this run. */
  get cancelled(): boolean {
    return this.signal.aborted;
  }

  /** Why it was cancelled ("" while it is not). */
  get cancelReason(): string {
    const reason: unknown = this.signal.reason;
    return this.signal.aborted ? (reason instanceof Error ? reason.message : String(reason ?? "")) : "";
  }

  /** Throws {@link Cancelled} if the broker cancelled this run. */
  throwIfCancelled(): void {
    if (this.signal.aborted) throw new Cancelled(this.cancelReason || "cancelled");
  }

  /** Waits `ms` milliseconds; rejects with {@link Cancelled} as soon as the run is cancelled. */
  sleep(ms: number): Promise<void> {
    return new Promise((resolve, reject) => {
      if (this.signal.aborted) {
        reject(new Cancelled(this.cancelReason || "cancelled"));
        return;
      }
      const onAbort = (): void => {
        clearTimeout(timer);
        reject(new Cancelled(this.cancelReason || "cancelled"));
      };
      const timer = setTimeout(() => {
        this.signal.removeEventListener("abort", onAbort);
        resolve();
      }, ms);
      this.signal.addEventListener("abort", onAbort, { once: true });
    });
  }

  /**
   * Takes an in-body throttle slot: asks the broker on behalf of this run
   * and waits for the grant (waiters are served in FIFO order). The slot is
   * held until `release()`, or until the run ends. Prefer {@link throttle}.
   *
   * @throws Cancelled the run was cancelled while waiting
   * @throws ThrottleError the broker refused the request
   */
  async acquire(spec: ThrottleSpec = {}): Promise<Slot> {
    const throttle = throttleToPb({ ...spec, scope: undefined }, "throttle") ?? { concurrency: 1 };
    const requestId = await this.slots.acquire(throttle, this.signal);
    let released = false;
    return {
      requestId,
      release: () => {
        if (!released) {
          released = true;
          this.slots.release(requestId);
        }
      },
    };
  }

  /**
   * Runs `fn` holding a throttle slot (the seed's `with throttle(concurrency=1, key=k):`):
   * at most `concurrency` (default 1) holders of the identity (this task's name
   * and `key`, or `key` alone if `shared`) at once, across all workers.
   */
  async throttle<T>(spec: ThrottleSpec, fn: () => T | Promise<T>): Promise<T> {
    const slot = await this.acquire(spec);
    try {
      return await fn();
    } finally {
      slot.release();
    }
  }
}
