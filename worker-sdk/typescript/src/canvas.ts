/**
 * Signatures and chains, Celery's canvas: `task.s(...)`, `task.si(...)`,
 * `chain(a.si(x), b.s())`, and the conversion of all of it (pure, no I/O)
 * to a `SubmitChainRequest`.
 */

import type { Baton } from "./app";
import type { ChainHandle } from "./client";
import type { Signature as PbSignature, SubmitChainRequest } from "./gen/baton/v1/index";
import { newChainId } from "./ids";
import { checkOptions, mergeOptions, optionsToPb, type StepOptions, unixMs } from "./options";
import { withCurrentTrace } from "./trace";

/** What a callback (`onSuccess`, `onFailure`) may be: a signature, a chain or a list of signatures. */
export type Callback = Signature | Chain | readonly Signature[];

/** Chain-level options of `chain(...).applyAsync(...)` (and of a task's or signature's). */
export interface ChainOptions {
  /** Runs after the last step succeeded. A mutable (`.s`) first step gets the last result. */
  onSuccess?: Callback;
  /** Runs once if a step failed for good. A mutable (`.s`) first step gets the failure record first. */
  onFailure?: Callback;
  /** Every step and callback to the `heavy` queue (unless a signature names a queue). */
  heavy?: boolean;
  /** String-to-string map every step and callback sees (`ctx.context`). */
  context?: Record<string, string>;
  /** A repeat returns the first chain (`handle.dedup` is "idempotency_key"). */
  idempotencyKey?: string;
  /** Skipped while an equal chain is queued or running (`handle.dedup` is "unique_key"). */
  uniqueKey?: string;
  /** A `Date`, or milliseconds from now, after which the chain fails with DeadlineExceeded. */
  deadline?: Date | number;
  /** Every step without an explicit queue goes to this one. */
  queue?: string;
  /** Delay of the first step, ms. */
  countdown?: number;
  /** Not before this time, for the first step. */
  eta?: Date | number;
  /** The chain's id (a UUID); default a new UUIDv7. A repeat of a stored id stores nothing. */
  chainId?: string;
}

export const CHAIN_OPTION_NAMES: readonly (keyof ChainOptions)[] = [
  "onSuccess",
  "onFailure",
  "heavy",
  "context",
  "idempotencyKey",
  "uniqueKey",
  "deadline",
  "queue",
  "countdown",
  "eta",
  "chainId",
];

/** Where a signature comes from: its app, and its task's declared options if the task is local. */
export interface SignatureSource {
  app?: Baton | undefined;
  declared?: StepOptions | undefined;
}

/** One step: a task name, JSON arguments and options. Immutable values: `set` and `clone` copy. */
export class Signature {
  readonly name: string;
  readonly args: readonly unknown[];
  readonly kwargs: Readonly<Record<string, unknown>>;
  /** `.si`: runs with exactly these arguments; `.s` (false): the previous result is prepended. */
  readonly immutable: boolean;
  readonly options: Readonly<StepOptions>;
  readonly app: Baton | undefined;
  /** The declared options of the local task of this name, if any (sent with every submission). */
  readonly declared: Readonly<StepOptions> | undefined;

  constructor(
    name: string,
    args: readonly unknown[] = [],
    kwargs: Record<string, unknown> = {},
    immutable = false,
    options: StepOptions = {},
    source: SignatureSource = {},
  ) {
    if (typeof name !== "string" || name === "") throw new TypeError("a signature needs a task name");
    this.name = name;
    this.args = [...args];
    this.kwargs = { ...kwargs };
    this.immutable = immutable;
    this.options = checkOptions(options, `signature ${name}`);
    this.app = source.app;
    this.declared = source.declared;
  }

  toString(): string {
    return `${this.name}.${this.immutable ? "si" : "s"}(${this.args.map((a) => JSON.stringify(a)).join(", ")})`;
  }

  private copy(args: readonly unknown[], kwargs: Record<string, unknown>, options: StepOptions): Signature {
    return new Signature(this.name, args, kwargs, this.immutable, options, {
      app: this.app,
      declared: this.declared,
    });
  }

  /** A copy with these options added (`{ countdown: 30_000, queue: "heavy" }`). */
  set(options: StepOptions): Signature {
    return this.copy(
      this.args,
      { ...this.kwargs },
      mergeOptions(this.options, checkOptions(options, `${this.name}.set()`)),
    );
  }

  /** A copy with `args` appended and `kwargs` merged (Celery's partials). */
  clone(args: readonly unknown[] = [], kwargs: Record<string, unknown> = {}, options: StepOptions = {}): Signature {
    return this.copy(
      [...this.args, ...args],
      { ...this.kwargs, ...kwargs },
      mergeOptions(this.options, checkOptions(options, `${this.name}.clone()`)),
    );
  }

  /** The local task's declared options overlaid with this signature's. */
  effectiveOptions(): StepOptions {
    return mergeOptions(this.declared ?? {}, this.options);
  }

  /** The protocol signature; `extra` options win (chain-level ones). */
  toPb(extra: StepOptions = {}): PbSignature {
    const options = mergeOptions(this.effectiveOptions(), extra);
    const out: PbSignature = {
      name: this.name,
      args: encode([...this.args], `args of ${this.name}`),
      kwargs: encode({ ...this.kwargs }, `kwargs of ${this.name}`),
      immutable: this.immutable,
    };
    if (Object.keys(options).length > 0) out.options = optionsToPb(options);
    return out;
  }

  /** Submits this signature alone, with `args` appended. */
  delay(...args: unknown[]): Promise<ChainHandle> {
    return (args.length > 0 ? this.clone(args) : this).applyAsync();
  }

  /** Submits this signature as a one-step chain, with step options and chain options mixed. */
  applyAsync(
    options: StepOptions & ChainOptions & { args?: unknown[]; kwargs?: Record<string, unknown> } = {},
  ): Promise<ChainHandle> {
    const { args, kwargs, ...rest } = options;
    const chainLevel: Record<string, unknown> = {};
    const stepLevel: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(rest)) {
      // queue/countdown/eta mean the same at both levels for a one-step chain.
      if ((CHAIN_OPTION_NAMES as readonly string[]).includes(k)) chainLevel[k] = v;
      else stepLevel[k] = v;
    }
    const step = this.clone(args ?? [], kwargs ?? {}, stepLevel as StepOptions);
    return new Chain([step]).applyAsync(chainLevel as ChainOptions);
  }
}

/** JSON text of a value the broker carries; throws a TypeError naming `what` when it cannot be encoded. */
export function encode(value: unknown, what: string): string {
  let text: string | undefined;
  try {
    text = JSON.stringify(value);
  } catch (err) {
    throw new TypeError(`${what} is not JSON-encodable: ${(err as Error).message}`);
  }
  return text ?? "null";
}

function callbackSteps(value: Callback | undefined, what: string): Signature[] {
  if (value === undefined) return [];
  if (value instanceof Signature) return [value];
  if (value instanceof Chain) return [...value.steps];
  const steps = [...value];
  for (const s of steps) {
    if (!(s instanceof Signature)) throw new TypeError(`${what} takes signatures or a chain`);
  }
  return steps;
}

/** Signatures run one after another: step k+1 starts after step k succeeded. */
export class Chain {
  readonly steps: readonly Signature[];

  constructor(steps: readonly Signature[]) {
    if (steps.length === 0) throw new Error("a chain needs at least one step");
    this.steps = [...steps];
  }

  toString(): string {
    return this.steps.map(String).join(" | ");
  }

  /** Submits the chain; resolves once the broker stored it durably. */
  delay(): Promise<ChainHandle> {
    return this.applyAsync();
  }

  /** The `SubmitChain` request (pure). */
  toRequest(options: ChainOptions = {}): SubmitChainRequest {
    const unknown = Object.keys(options).filter((k) => !(CHAIN_OPTION_NAMES as readonly string[]).includes(k));
    if (unknown.length > 0) {
      throw new TypeError(
        `chain options: unknown option(s) ${unknown.join(", ")}; known: ${CHAIN_OPTION_NAMES.join(", ")}`,
      );
    }
    const context = { ...(options.context ?? {}) };
    for (const [k, v] of Object.entries(context)) {
      if (typeof v !== "string") throw new TypeError(`context must map strings to strings (${k} is ${typeof v})`);
    }
    withCurrentTrace(context);
    const convert = (steps: readonly Signature[], first: boolean): PbSignature[] =>
      steps.map((step, i) => {
        const extra: StepOptions = {};
        if (options.queue && !step.effectiveOptions().queue) extra.queue = options.queue;
        if (first && i === 0) {
          if (options.countdown !== undefined) extra.countdown = options.countdown;
          if (options.eta !== undefined) extra.eta = options.eta;
        }
        return step.toPb(extra);
      });
    const request: SubmitChainRequest = { steps: convert(this.steps, true) };
    if (options.onSuccess !== undefined)
      request.onSuccess = convert(callbackSteps(options.onSuccess, "onSuccess"), false);
    if (options.onFailure !== undefined)
      request.onFailure = convert(callbackSteps(options.onFailure, "onFailure"), false);
    if (options.heavy) request.heavy = true;
    if (Object.keys(context).length > 0) request.context = context;
    if (options.idempotencyKey) request.idempotencyKey = options.idempotencyKey;
    if (options.uniqueKey) request.uniqueKey = options.uniqueKey;
    if (options.deadline !== undefined) {
      request.deadlineUnixMs =
        options.deadline instanceof Date
          ? unixMs(options.deadline, "deadline")
          : Date.now() + Math.round(options.deadline);
    }
    request.chainId = options.chainId ?? newChainId();
    return request;
  }

  /**
   * Submits the chain; resolves to its handle once the broker stored it
   * (durably: an answer survives a crash of the broker).
   */
  applyAsync(options: ChainOptions & { app?: Baton } = {}): Promise<ChainHandle> {
    const { app, ...chainOptions } = options;
    const target = app ?? this.steps.find((s) => s.app !== undefined)?.app;
    if (target === undefined) {
      return Promise.reject(new Error("no Baton app to submit to: build steps from app tasks or pass { app }"));
    }
    let request: SubmitChainRequest;
    try {
      request = this.toRequest(chainOptions);
    } catch (err) {
      return Promise.reject(err);
    }
    return target.submit(request);
  }
}

/**
 * Celery's group: one step whose members run side by side, each as a chain
 * of its own. The step succeeds once every member succeeded, and its result
 * is the array of the members' results in member order, which the next step
 * receives (a group followed by a step is Celery's chord). The first member
 * that fails for good fails the step with that member's failure record (the
 * chain's onFailure receives it) and the broker cancels the others. A member
 * is a signature, another group, or a nested executor (`nested(...)`). Like
 * `.s`, the group hands the previous step's result to the first step of each
 * member (which takes it if it is mutable itself); `immutable` keeps it from
 * them. Partial arguments and options go to every member, as each member's
 * `clone` and `set` take them.
 */
export class Group extends Signature {
  readonly members: readonly Signature[];

  constructor(members: readonly Signature[], immutable = false, name = "group") {
    if (members.length === 0) throw new Error("a group needs at least one member");
    for (const m of members) {
      if (!(m instanceof Signature)) throw new TypeError("group() takes signatures (task.s()/task.si())");
    }
    super(name, [], {}, immutable, {}, { app: members.find((m) => m.app !== undefined)?.app });
    this.members = [...members];
  }

  override toString(): string {
    return `group(${this.members.map(String).join(", ")})`;
  }

  override set(options: StepOptions): Signature {
    return new Group(
      this.members.map((m) => m.set(options)),
      this.immutable,
      this.name,
    );
  }

  override clone(
    args: readonly unknown[] = [],
    kwargs: Record<string, unknown> = {},
    options: StepOptions = {},
  ): Signature {
    return new Group(
      this.members.map((m) => m.clone(args, kwargs, options)),
      this.immutable,
      this.name,
    );
  }

  override effectiveOptions(): StepOptions {
    return {};
  }

  /** The protocol signature; `extra` (chain-level options) goes to every member. */
  override toPb(extra: StepOptions = {}): PbSignature {
    return { name: this.name, immutable: this.immutable, members: this.members.map((m) => m.toPb(extra)) };
  }
}

/**
 * A chain with its own callbacks run as one step of another chain: a nested
 * executor. The parent's step waits for it, and succeeds with its result once
 * it succeeded (after its onSuccess), or fails with its failure record once
 * it failed (after its onFailure), which the parent's onFailure receives.
 * Cancelling the parent cancels it.
 */
export class Nested extends Signature {
  readonly steps: readonly Signature[];
  readonly onSuccess: readonly Signature[];
  readonly onFailure: readonly Signature[];

  constructor(
    steps: readonly Signature[],
    onSuccess: readonly Signature[] = [],
    onFailure: readonly Signature[] = [],
    name = "executor",
  ) {
    if (steps.length === 0) throw new Error("a nested executor needs at least one step");
    super(name, [], {}, false, {}, { app: steps.find((s) => s.app !== undefined)?.app });
    this.steps = [...steps];
    this.onSuccess = [...onSuccess];
    this.onFailure = [...onFailure];
  }

  override toString(): string {
    return `nested(${this.steps.map(String).join(" | ")})`;
  }

  override set(_options: StepOptions): Signature {
    throw new TypeError(`${this.name}: a nested executor takes no options of its own; set them on its steps`);
  }

  override clone(
    args: readonly unknown[] = [],
    kwargs: Record<string, unknown> = {},
    options: StepOptions = {},
  ): Signature {
    if (args.length > 0 || Object.keys(kwargs).length > 0 || Object.keys(options).length > 0) {
      throw new TypeError(`${this.name}: a nested executor takes no arguments or options of its own`);
    }
    return this;
  }

  override effectiveOptions(): StepOptions {
    return {};
  }

  override toPb(): PbSignature {
    const convert = (steps: readonly Signature[]) => steps.map((s) => s.toPb());
    return {
      name: this.name,
      executor: { steps: convert(this.steps), onSuccess: convert(this.onSuccess), onFailure: convert(this.onFailure) },
    };
  }
}

/** Builds a group: `group(a.s(1), b.s(2))` or `group(list)`. */
export function group(...members: (Signature | readonly Signature[])[]): Group {
  const flat: Signature[] = [];
  for (const m of members) {
    if (Array.isArray(m)) flat.push(...(m as Signature[]));
    else flat.push(m as Signature);
  }
  return new Group(flat);
}

/** Celery's chord: the header's members side by side, then `body` with their results as an array. */
export function chord(header: Group | readonly Signature[], body: Signature): Chain {
  const head = header instanceof Group ? header : new Group(header as readonly Signature[]);
  return new Chain([head, body]);
}

/** A chain with its own callbacks as one step of another chain (see `Nested`). */
export function nested(
  steps: Signature | Chain | readonly Signature[],
  options: { onSuccess?: Callback; onFailure?: Callback; name?: string } = {},
): Nested {
  const list = steps instanceof Chain ? [...steps.steps] : steps instanceof Signature ? [steps] : [...steps];
  return new Nested(
    list,
    callbackSteps(options.onSuccess, "onSuccess"),
    callbackSteps(options.onFailure, "onFailure"),
    options.name,
  );
}

/** Builds a chain; nested chains are flattened, a single array is accepted. */
export function chain(...items: (Signature | Chain | readonly Signature[])[]): Chain {
  const steps: Signature[] = [];
  for (const item of items) {
    if (item instanceof Chain) steps.push(...item.steps);
    else if (item instanceof Signature) steps.push(item);
    else if (Array.isArray(item)) steps.push(...chain(...(item as Signature[])).steps);
    else throw new TypeError("chain() takes signatures (task.s()/task.si()) or chains");
  }
  return new Chain(steps);
}
