/**
 * The TypeScript conformance client: submits the conformance tasks by name
 * (so the worker may be written in any language) and checks what comes back.
 * Needs a worker on the "general" and "heavy" queues with concurrency >= 3.
 *
 *   BATON_ADDR=127.0.0.1:7070 node client.js
 *
 * Prints one line per case ("ok <case>" or "FAIL <case>: <why>") and exits
 * 0 only when every case passed.
 */
import {
  Baton,
  ChainCancelled,
  ChainFailed,
  chain,
  type StepOptions,
} from "../../../worker-sdk/typescript/dist/cjs/index.js";

const app = new Baton();
const TIMEOUT = 30_000;

const sig = (name: string, args: unknown[] = [], options: StepOptions = {}) =>
  app.signature(name, args, { immutable: true, ...options });

function check(condition: unknown, what: string): asserts condition {
  if (!condition) throw new Error(what);
}

async function failure(promise: Promise<unknown>): Promise<ChainFailed> {
  try {
    await promise;
  } catch (err) {
    if (err instanceof ChainFailed) return err;
    throw err;
  }
  throw new Error("the chain should have failed");
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

const cases: Record<string, () => Promise<void>> = {
  async noop() {
    check((await (await sig("noop").delay()).get({ timeout: TIMEOUT })) === null, "noop returns null");
  },
  async echo() {
    const value = { a: [1, "x", null], b: { c: true } };
    const got = await (await sig("echo", [value]).delay()).get({ timeout: TIMEOUT });
    check(JSON.stringify(got) === JSON.stringify(value), `echo returned ${JSON.stringify(got)}`);
  },
  async add() {
    check((await (await sig("add", [2, 3]).delay()).get({ timeout: TIMEOUT })) === 5, "add(2, 3) is 5");
    const mutable = app.signature("add", [10]); // .s: gets the previous result first
    const got = await (await chain(sig("add", [1, 2]), mutable).delay()).get({ timeout: TIMEOUT });
    check(got === 13, `add(1, 2) | add.s(10) is 13, not ${String(got)}`);
  },
  async fail_once() {
    const handle = await sig("fail_once", ["k"]).delay();
    check((await handle.get({ timeout: TIMEOUT })) === 2, "fail_once succeeds on attempt 2");
    const step = (await handle.info()).steps[0];
    check(step?.retries === 1 && step.attempts === 2, `retries ${step?.retries}, attempts ${step?.attempts}`);
  },
  async fail_always() {
    const handle = await chain(sig("fail_always", ["it broke"])).applyAsync({ onFailure: app.signature("echo") });
    const err = await failure(handle.get({ timeout: TIMEOUT }));
    check(err.record.error_type === "ConformanceError", `error_type ${err.record.error_type}`);
    check(err.record.message === "it broke", `message ${err.record.message}`);
    check(err.record.traceback.length > 0, "a traceback");
    check(err.record.attempt === 1, `attempt ${err.record.attempt}`);
    const onFailure = (await handle.info()).onFailure[0];
    check(onFailure?.state === "STEP_STATE_SUCCEEDED", `on_failure ${onFailure?.state}`);
    const record = JSON.parse(onFailure.result) as Record<string, unknown>;
    check(record.error_type === "ConformanceError" && record.chain_id === handle.id, "on_failure got the record");
  },
  async retry_later_n() {
    const handle = await sig("retry_later_n", [3]).delay();
    check((await handle.get({ timeout: TIMEOUT })) === 3, "returns n");
    const step = (await handle.info()).steps[0];
    check(step?.polls === 3 && step.retries === 0, `polls ${step?.polls}, retries ${step?.retries}`);
  },
  async sleep() {
    check((await (await sig("sleep", [100]).delay()).get({ timeout: TIMEOUT })) === 100, "sleep returns ms");
  },
  async throttled_in_body() {
    const started = Date.now();
    const handles = await Promise.all([1, 2, 3].map(() => sig("throttled_in_body", ["conf", 300]).delay()));
    for (const h of handles) check((await h.get({ timeout: TIMEOUT })) === "conf", "returns its key");
    const elapsed = Date.now() - started;
    check(elapsed >= 850, `three holders of concurrency 1 took only ${elapsed} ms`);
  },
  async throttled_declared() {
    const handles = await Promise.all([1, 2, 3].map(() => sig("throttled_declared", [300]).delay()));
    for (const h of handles) await h.get({ timeout: TIMEOUT });
    const runs = (await Promise.all(handles.map(async (h) => (await h.info()).steps[0])))
      .map((s) => [Number(s?.startedUnixMs), Number(s?.finishedUnixMs)] as const)
      .sort((x, y) => x[0] - y[0]);
    for (let i = 1; i < runs.length; i++) {
      check((runs[i]?.[0] ?? 0) >= (runs[i - 1]?.[1] ?? 0), `runs overlap: ${JSON.stringify(runs)}`);
    }
  },
  async heavy() {
    check((await (await sig("heavy").delay()).get({ timeout: TIMEOUT })) === "heavy", "heavy runs from heavy");
  },
  async cancellable() {
    const handle = await sig("cancellable", [30_000]).delay();
    for (let i = 0; (await handle.info()).steps[0]?.state !== "STEP_STATE_RUNNING"; i++) {
      check(i < 200, "cancellable never started");
      await sleep(50);
    }
    check((await handle.cancel("conformance")) === "CANCELLED", "cancel answers CANCELLED");
    try {
      await handle.get({ timeout: TIMEOUT });
      throw new Error("a cancelled chain's get() should throw");
    } catch (err) {
      check(err instanceof ChainCancelled, String(err));
    }
    const limited = await sig("cancellable", [30_000], { timeLimit: 200, maxRetries: 0 }).delay();
    const err = await failure(limited.get({ timeout: TIMEOUT }));
    check(err.record.error_type === "TimeLimitExceeded", `error_type ${err.record.error_type}`);
  },
};

async function main(): Promise<number> {
  let passed = 0;
  let failed = 0;
  const only = process.argv.slice(2);
  for (const [name, run] of Object.entries(cases)) {
    if (only.length > 0 && !only.includes(name)) continue;
    try {
      await run();
      passed++;
      console.log(`ok ${name}`);
    } catch (err) {
      failed++;
      console.log(`FAIL ${name}: ${err instanceof Error ? err.message : String(err)}`);
    }
  }
  console.log(`conformance: ${passed} passed, ${failed} failed`);
  app.close();
  return failed === 0 ? 0 : 1;
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    console.error(err);
    process.exit(2);
  },
);
