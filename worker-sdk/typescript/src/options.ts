/**
 * Execution options, written the JavaScript way (milliseconds, `Date`s,
 * `throttle: 1`) on `app.task({...})`, `.set({...})` and `.applyAsync({...})`,
 * and converted here, in one place, to `baton.v1.Options`. Only the
 * translation lives here; what the options mean is decided by the broker.
 *
 * | option            | meaning (`baton.v1.Options` field)                              |
 * | ----------------- | --------------------------------------------------------------- |
 * | `queue`           | explicit queue name (`queue`)                                   |
 * | `heavy`           | route to the `heavy` queue (`heavy`)                            |
 * | `throttle`        | declared throttle: `true`/`n` (concurrency) or a spec (`throttle`) |
 * | `rate`            | at most that many starts per period, `"10/s"` (`throttle.rate`) |
 * | `maxRetries`      | retries of retryable failures, default 0 (`max_retries`)        |
 * | `retryBackoff`    | first retry delay, ms (`retry_backoff_ms`)                      |
 * | `retryBackoffMax` | longest retry delay, ms (`retry_backoff_max_ms`)                |
 * | `maxPolls`        | budget of `Retry` outcomes, default 100 (`max_polls`)           |
 * | `timeLimit`       | time limit of one run, ms (`timeout_ms`)                        |
 * | `countdown`       | delay once the step's turn comes, ms (`countdown_ms`)           |
 * | `eta`             | not before this `Date` (or unix ms) (`eta_unix_ms`)             |
 * | `priority`        | higher first within a queue (`priority`)                        |
 * | `description`     | free text shown in inspection (`description`)                   |
 */
import type { Options, Rate, Throttle } from "./gen/baton/v1/index";

/** Whether a declared throttle's slot belongs to one run ("task", the default) or to the whole chain. */
export type ThrottleScope = "task" | "chain";

/**
 * A throttle: at most `concurrency` holders per identity (task name, key), or `key` alone if
 * `shared`; with `rate` ("10/s", "100/m", "3/10s") at most that many starts per period, across
 * every worker and broker restart, `burst` of them at once (default 1). `concurrency` defaults to
 * 1, or to no limit when a rate is given.
 */
export interface ThrottleSpec {
  concurrency?: number;
  rate?: string;
  burst?: number;
  /** Default "*": the whole task name. */
  key?: string;
  /** The identity is the key alone, shared across task names (e.g. "tenant:42"). */
  shared?: boolean;
  scope?: ThrottleScope;
}

export interface StepOptions {
  queue?: string;
  heavy?: boolean;
  throttle?: boolean | number | ThrottleSpec;
  /** At most that many starts per period for the task name (or the throttle's identity). */
  rate?: string;
  maxRetries?: number;
  retryBackoff?: number;
  retryBackoffMax?: number;
  maxPolls?: number;
  timeLimit?: number;
  countdown?: number;
  eta?: Date | number;
  priority?: number;
  description?: string;
}

export const OPTION_NAMES: readonly (keyof StepOptions)[] = [
  "queue",
  "heavy",
  "throttle",
  "maxRetries",
  "retryBackoff",
  "retryBackoffMax",
  "maxPolls",
  "timeLimit",
  "countdown",
  "eta",
  "priority",
  "description",
];

/**
 * Refuses unknown option names: a misspelt option (`countdonw: 5`) must fail
 * at the call site, not be dropped on the way to the broker.
 */
export function checkOptions(options: object, where: string): StepOptions {
  const unknown = Object.keys(options).filter((k) => !(OPTION_NAMES as readonly string[]).includes(k));
  if (unknown.length > 0) {
    throw new TypeError(
      `${where}: unknown option(s) ${unknown.sort().join(", ")}; known: ${[...OPTION_NAMES].sort().join(", ")}`,
    );
  }
  return { ...(options as StepOptions) };
}

/** Options with `undefined` values dropped, `over` winning over `base`. */
export function mergeOptions(base: StepOptions, over: StepOptions): StepOptions {
  const out: Record<string, unknown> = { ...base };
  for (const [k, v] of Object.entries(over)) {
    if (v !== undefined) out[k] = v;
  }
  return out as StepOptions;
}

function uint(value: unknown, name: string): number {
  if (typeof value !== "number" || !Number.isInteger(value) || value < 0) {
    throw new RangeError(`${name} must be a non-negative integer (got ${String(value)})`);
  }
  return value;
}

function ms(value: unknown, name: string): number {
  if (typeof value !== "number" || !Number.isFinite(value) || value < 0) {
    throw new RangeError(`${name} must be a non-negative number of milliseconds (got ${String(value)})`);
  }
  return Math.round(value);
}

/** Unix milliseconds of a `Date` or a number (already unix ms). */
export function unixMs(value: Date | number, name: string): number {
  const n = value instanceof Date ? value.getTime() : value;
  if (typeof n !== "number" || !Number.isFinite(n)) {
    throw new RangeError(`${name} must be a Date or unix milliseconds (got ${String(value)})`);
  }
  return Math.max(0, Math.round(n));
}

const SCOPES = { task: "THROTTLE_SCOPE_TASK", chain: "THROTTLE_SCOPE_CHAIN" } as const;

const UNITS_MS: Record<string, number> = {
  ms: 1,
  s: 1000,
  sec: 1000,
  m: 60_000,
  min: 60_000,
  h: 3_600_000,
  d: 86_400_000,
};

/** A rate as Celery writes it: "10/s", "100/m", "5/h", "1000/d", or "3/10s"; throws a RangeError naming what is wrong. */
export function parseRate(text: string): Rate {
  const found = /^\s*(\d+)\s*\/\s*(\d*)\s*([a-z]+)\s*$/.exec(String(text));
  if (found === null)
    throw new RangeError(`rate ${JSON.stringify(text)}: expected COUNT/PERIOD, such as 10/s or 100/m`);
  const [, count, number, unit] = found as unknown as [string, string, string, string];
  const unitMs = UNITS_MS[unit];
  if (unitMs === undefined) {
    throw new RangeError(`rate ${JSON.stringify(text)}: the period "${unit}" is not a unit (ms, s, m, h, d)`);
  }
  if (Number(count) < 1)
    throw new RangeError(`rate ${JSON.stringify(text)}: the count is 0: a rate allows at least 1 start`);
  const periodMs = (number === "" ? 1 : Number(number)) * unitMs;
  if (!(periodMs >= 1 && periodMs <= 86_400_000)) {
    throw new RangeError(`rate ${JSON.stringify(text)}: the period must be between 1 ms and a day`);
  }
  return { count: Number(count), periodMs };
}

/** `throttle: true | n | spec` as the protocol's `Throttle`; `undefined` for none. */
export function throttleToPb(value: StepOptions["throttle"], name = "throttle"): Throttle | undefined {
  if (value === undefined || value === false) return undefined;
  if (value === true) return { concurrency: 1 };
  if (typeof value === "number") return { concurrency: uint(value, `${name}`) };
  if (typeof value !== "object" || value === null) {
    throw new TypeError(`${name} takes true, a number or { concurrency, key, shared, scope }`);
  }
  const out: Throttle = {};
  if (value.concurrency !== undefined) out.concurrency = uint(value.concurrency, `${name}.concurrency`);
  if (value.key !== undefined) out.key = String(value.key);
  if (value.shared) out.shared = true;
  if (value.scope !== undefined) {
    const scope = SCOPES[value.scope];
    if (scope === undefined) throw new TypeError(`${name}.scope must be "task" or "chain"`);
    out.scope = scope;
  }
  if (value.rate !== undefined) {
    const rate = parseRate(value.rate);
    if (value.burst !== undefined) {
      rate.burst = uint(value.burst, `${name}.burst`);
      if (rate.burst > (rate.count ?? 0)) throw new RangeError(`${name}.burst is more than the rate's count`);
    }
    out.rate = rate;
  } else if (value.burst !== undefined) {
    throw new TypeError(`${name}.burst needs a rate`);
  }
  return out;
}

/** Checked options as `baton.v1.Options`; unset ones stay unset (the broker's defaults apply). */
export function optionsToPb(options: StepOptions): Options {
  const out: Options = {};
  if (options.queue) out.queue = String(options.queue);
  if (options.heavy) out.heavy = true;
  let throttle = throttleToPb(options.throttle);
  if (options.rate !== undefined) {
    // A rate alone limits no holders at once: the throttle's concurrency stays unset (0).
    throttle = { ...(throttle ?? {}), rate: parseRate(options.rate) };
  }
  if (throttle !== undefined) out.throttle = throttle;
  if (options.maxRetries !== undefined) out.maxRetries = uint(options.maxRetries, "maxRetries");
  if (options.retryBackoff !== undefined) out.retryBackoffMs = ms(options.retryBackoff, "retryBackoff");
  if (options.retryBackoffMax !== undefined) out.retryBackoffMaxMs = ms(options.retryBackoffMax, "retryBackoffMax");
  if (options.maxPolls !== undefined) out.maxPolls = uint(options.maxPolls, "maxPolls");
  if (options.timeLimit !== undefined) out.timeoutMs = ms(options.timeLimit, "timeLimit");
  if (options.countdown !== undefined) out.countdownMs = ms(options.countdown, "countdown");
  if (options.eta !== undefined) out.etaUnixMs = unixMs(options.eta, "eta");
  if (options.priority !== undefined) {
    if (!Number.isInteger(options.priority)) throw new RangeError(`priority must be an integer`);
    out.priority = options.priority;
  }
  if (options.description) out.description = String(options.description);
  return out;
}
