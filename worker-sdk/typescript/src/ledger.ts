/**
 * The worker's own record of what it holds: runs (still running, or
 * finished with an outcome the broker has not acknowledged yet), in-body
 * throttle slots granted, and throttle requests not answered yet.
 *
 * It is what outlives a connection. The next Hello is built from it
 * (`held`, `held_slots`); the Welcome is reconciled against it (kept runs
 * get their unacknowledged outcomes and pending requests sent again, lost
 * ones are dropped). It does no I/O and keeps no timers: its methods return
 * the messages to send, and the worker sends them, so the bookkeeping is
 * tested on its own (`test/ledger.test.ts`). The same shape as the Rust
 * SDK's `ledger.rs`.
 */
import type { HeldSlot, Outcome, TaskRef, Throttle, Welcome__Output, WorkerMessage } from "./gen/baton/v1/index";

/** (task id, attempt) as one string: the key of a run. */
export type RunKey = string;

export function keyOf(ref: TaskRef | null | undefined): RunKey {
  return `${ref?.taskId ?? ""}#${ref?.attempt ?? 0}`;
}

interface Held {
  readonly ref: TaskRef;
  /** Set once the body ended: the outcome waits for its OutcomeAck. */
  outcome: Outcome | undefined;
  /** Throttle requests sent and not granted, by request id. */
  readonly pending: Map<number, Throttle>;
  /** In-body slots granted and not released, by request id. */
  readonly slots: Map<number, Throttle>;
}

/** What a Welcome changes. */
export interface Reconciled {
  /** Runs the broker no longer gives this worker: dropped here; stop them, report nothing. */
  lost: TaskRef[];
  /** Outcomes and throttle requests the new stream must carry. */
  resend: WorkerMessage[];
}

/** See the module documentation. */
export class Ledger {
  /** Every assignment this worker is responsible for. */
  private readonly runs = new Map<RunKey, Held>();
  /** Each pending request and granted slot, to its run. */
  private readonly requests = new Map<number, RunKey>();
  private lastRequestId = 0;

  /** How many runs the worker holds (running, or with an outcome not acknowledged). */
  get size(): number {
    return this.runs.size;
  }

  /** How many runs are still running. */
  running(): number {
    let n = 0;
    for (const run of this.runs.values()) if (run.outcome === undefined) n++;
    return n;
  }

  has(ref: TaskRef): boolean {
    return this.runs.has(keyOf(ref));
  }

  /** Records a new run; false (and nothing recorded) when this attempt is held already. */
  start(ref: TaskRef): boolean {
    const key = keyOf(ref);
    if (this.runs.has(key)) return false;
    this.runs.set(key, {
      ref: { taskId: ref.taskId ?? "", attempt: ref.attempt ?? 0 },
      outcome: undefined,
      pending: new Map(),
      slots: new Map(),
    });
    return true;
  }

  /**
   * The run's body ended: keeps `outcome` until acknowledged and returns the
   * message carrying it; `undefined` when the run is not held (it was lost).
   * Its requests and slots are forgotten: the broker frees them with the outcome.
   */
  finish(ref: TaskRef, outcome: Outcome): WorkerMessage | undefined {
    const run = this.runs.get(keyOf(ref));
    if (run === undefined || run.outcome !== undefined) return undefined;
    this.forgetRequests(run);
    run.outcome = { ...outcome, task: run.ref };
    return { outcome: run.outcome };
  }

  /** The broker acknowledged the run's outcome: the run is no longer held. Whether it was waiting. */
  acked(ref: TaskRef | null | undefined): boolean {
    const key = keyOf(ref);
    const run = this.runs.get(key);
    if (run?.outcome === undefined) return false;
    this.runs.delete(key);
    return true;
  }

  /** Forgets a run entirely (a lost run: nothing is reported). */
  drop(ref: TaskRef): void {
    const key = keyOf(ref);
    const run = this.runs.get(key);
    if (run === undefined) return;
    this.forgetRequests(run);
    this.runs.delete(key);
  }

  /** A new in-body throttle request of a running run, and the message asking for it. */
  request(ref: TaskRef, throttle: Throttle): { requestId: number; message: WorkerMessage } | undefined {
    const key = keyOf(ref);
    const run = this.runs.get(key);
    if (run === undefined || run.outcome !== undefined) return undefined;
    const requestId = ++this.lastRequestId;
    run.pending.set(requestId, throttle);
    this.requests.set(requestId, key);
    return { requestId, message: this.acquireMessage(run, requestId, throttle) };
  }

  /** A grant: the request becomes a held slot. Returns its run, or `undefined` for an unknown or withdrawn one. */
  granted(requestId: number): TaskRef | undefined {
    const run = this.runOf(requestId);
    const throttle = run?.pending.get(requestId);
    if (run === undefined || throttle === undefined) return undefined;
    run.pending.delete(requestId);
    run.slots.set(requestId, throttle);
    return run.ref;
  }

  /**
   * Gives back a granted slot, or withdraws a pending request; the message
   * saying so, or `undefined` when there is nothing to give back (the run ended).
   */
  release(requestId: number): WorkerMessage | undefined {
    const run = this.runOf(requestId);
    if (run === undefined) return undefined;
    if (!run.pending.delete(requestId) && !run.slots.delete(requestId)) return undefined;
    this.requests.delete(requestId);
    return { throttleRelease: { requestId, task: run.ref } };
  }

  /** The broker refused a request: forgotten. Its run, if the request was pending. */
  refused(requestId: number): TaskRef | undefined {
    const run = this.runOf(requestId);
    if (run === undefined || !run.pending.delete(requestId)) return undefined;
    this.requests.delete(requestId);
    return run.ref;
  }

  /** `Hello.held` and `Hello.held_slots`: every run held, and the slots of the running ones. */
  hello(): { held: TaskRef[]; heldSlots: HeldSlot[] } {
    const held: TaskRef[] = [];
    const heldSlots: HeldSlot[] = [];
    for (const run of this.runs.values()) {
      held.push(run.ref);
      for (const requestId of run.slots.keys()) heldSlots.push({ task: run.ref, requestId });
    }
    return { held, heldSlots };
  }

  /**
   * Reconciles a Welcome: lost runs are dropped; for the others, the
   * unacknowledged outcomes and the pending throttle requests are sent
   * again (the broker answers a repeated acquire of a held slot with a grant).
   */
  welcome(welcome: Pick<Welcome__Output, "lost">): Reconciled {
    const lost: TaskRef[] = [];
    for (const ref of welcome.lost) {
      const run = this.runs.get(keyOf(ref));
      if (run !== undefined) {
        lost.push(run.ref);
        this.drop(run.ref);
      }
    }
    const resend: WorkerMessage[] = [];
    for (const run of this.runs.values()) {
      if (run.outcome !== undefined) resend.push({ outcome: run.outcome });
      for (const [requestId, throttle] of run.pending) resend.push(this.acquireMessage(run, requestId, throttle));
    }
    return { lost, resend };
  }

  private acquireMessage(run: Held, requestId: number, throttle: Throttle): WorkerMessage {
    return { throttleAcquire: { requestId, task: run.ref, throttle } };
  }

  private runOf(requestId: number): Held | undefined {
    const key = this.requests.get(requestId);
    return key === undefined ? undefined : this.runs.get(key);
  }

  private forgetRequests(run: Held): void {
    for (const requestId of run.pending.keys()) this.requests.delete(requestId);
    for (const requestId of run.slots.keys()) this.requests.delete(requestId);
    run.pending.clear();
    run.slots.clear();
  }
}
