/** Pure parts, no broker: options, signatures and chains to the protocol, outcomes, ids. */
import assert from "node:assert/strict";
import { test } from "node:test";
import { newChainId } from "../src/ids";
import { Baton, Cancelled, Chain, chain, Fatal, Retry } from "../src/index";
import { optionsToPb, parseRate } from "../src/options";
import { errorType, fromError, fromResult, stack } from "../src/outcomes";

const app = new Baton("127.0.0.1:1");
const slow = app.task({ name: "demo.slow", throttle: 1, heavy: true }, async (_ctx, uuid: number) => uuid);
const fast = app.task({ name: "demo.fast", maxRetries: 2 }, async (_ctx, prev: unknown, uuid: number) => [prev, uuid]);

test("options become baton.v1.Options in milliseconds, unset ones stay unset", () => {
  const eta = new Date(1_800_000_000_000);
  assert.deepEqual(
    optionsToPb({
      queue: "q",
      heavy: true,
      throttle: { concurrency: 3, key: "tenant:1", shared: true, scope: "chain" },
      maxRetries: 0,
      retryBackoff: 1500,
      retryBackoffMax: 60_000,
      maxPolls: 7,
      timeLimit: 2500,
      countdown: 30_000,
      eta,
      priority: -2,
      description: "resize",
    }),
    {
      queue: "q",
      heavy: true,
      throttle: { concurrency: 3, key: "tenant:1", shared: true, scope: "THROTTLE_SCOPE_CHAIN" },
      maxRetries: 0,
      retryBackoffMs: 1500,
      retryBackoffMaxMs: 60_000,
      maxPolls: 7,
      timeoutMs: 2500,
      countdownMs: 30_000,
      etaUnixMs: 1_800_000_000_000,
      priority: -2,
      description: "resize",
    },
  );
  assert.deepEqual(optionsToPb({}), {});
  assert.deepEqual(optionsToPb({ throttle: true }), { throttle: { concurrency: 1 } });
  assert.deepEqual(optionsToPb({ throttle: 4 }), { throttle: { concurrency: 4 } });
  assert.throws(() => optionsToPb({ maxRetries: -1 }), /maxRetries/);
  assert.throws(() => optionsToPb({ countdown: Number.NaN }), /countdown/);
});

test("a task's declared options travel with every signature of it; the signature's win", () => {
  const sig = slow.si(10).set({ queue: "special", throttle: 2 });
  const pb = sig.toPb();
  assert.equal(pb.name, "demo.slow");
  assert.equal(pb.args, "[10]");
  assert.equal(pb.kwargs, "{}");
  assert.equal(pb.immutable, true);
  assert.deepEqual(pb.options, { queue: "special", heavy: true, throttle: { concurrency: 2 } });
  assert.equal(fast.s(10).immutable, false);
  assert.equal(fast.s(10).toPb().args, "[10]");
  assert.throws(() => slow.si(1).set({ countdonw: 1 } as never), /unknown option\(s\) countdonw/);
  assert.throws(() => app.task({ name: "x", retries: 1 } as never, async () => 1), /unknown option\(s\) retries/);
  assert.throws(() => app.task({ name: "demo.slow" }, async () => 2), /already registered/);
});

test("chain(...) flattens, and chain options go where they belong", () => {
  const c = chain(slow.si(10), chain(fast.s(10), fast.s(11)));
  assert.ok(c instanceof Chain);
  assert.equal(c.steps.length, 3);
  assert.equal(String(c), "demo.slow.si(10) | demo.fast.s(10) | demo.fast.s(11)");
  const request = c.toRequest({
    onSuccess: fast.s(1),
    onFailure: [fast.s(2), slow.si(3)],
    heavy: true,
    context: { user: "alice" },
    idempotencyKey: "i",
    uniqueKey: "u",
    deadline: new Date(2_000_000_000_000),
    queue: "q",
    countdown: 500,
    chainId: "01890000-0000-7000-8000-000000000000",
  });
  assert.equal(request.steps?.length, 3);
  assert.equal(request.steps?.[0]?.options?.countdownMs, 500, "countdown delays the first step");
  assert.equal(request.steps?.[1]?.options?.countdownMs, undefined);
  assert.equal(request.steps?.[1]?.options?.queue, "q");
  assert.equal(request.onSuccess?.length, 1);
  assert.equal(request.onFailure?.length, 2);
  assert.equal(request.heavy, true);
  assert.deepEqual(request.context, { user: "alice" });
  assert.equal(request.idempotencyKey, "i");
  assert.equal(request.uniqueKey, "u");
  assert.equal(request.deadlineUnixMs, 2_000_000_000_000);
  assert.equal(request.chainId, "01890000-0000-7000-8000-000000000000");
  const relative = chain(slow.si(1)).toRequest({ deadline: 60_000 });
  assert.ok(Math.abs(Number(relative.deadlineUnixMs) - (Date.now() + 60_000)) < 1000);
  assert.throws(() => chain(slow.si(1)).toRequest({ context: { n: 1 as never } }), /context/);
  assert.throws(() => chain(), /at least one step/);
  assert.throws(() => slow.si(10n as never).toPb(), /not JSON-encodable/);
});

test("a body's ending becomes an outcome", () => {
  assert.deepEqual(fromResult({ a: [1, "x"] }, "t"), { success: { result: '{"a":[1,"x"]}' } });
  assert.deepEqual(fromResult(undefined, "t"), { success: { result: "null" } });
  const big = fromResult(1n, "t");
  assert.equal(big.failure?.errorType, "EncodeError");
  assert.equal(big.failure?.retryable, false);

  assert.deepEqual(fromError(new Retry({ after: 5000, message: "volume not ready" })), {
    retryLater: { delayMs: 5000, message: "volume not ready" },
  });

  class VolumeBusy extends Error {}
  const busy = fromError(new VolumeBusy("busy"));
  assert.equal(busy.failure?.errorType, "VolumeBusy");
  assert.equal(busy.failure?.retryable, true);
  assert.match(busy.failure?.traceback ?? "", /^VolumeBusy: busy\n {4}at /);

  const typeError = fromError(new TypeError("x is undefined"));
  assert.equal(typeError.failure?.errorType, "TypeError");

  const fatal = fromError(new Fatal("bad input", { cause: new RangeError("too big") }));
  assert.equal(fatal.failure?.errorType, "RangeError");
  assert.equal(fatal.failure?.retryable, false);
  assert.match(fatal.failure?.traceback ?? "", /Caused by: RangeError: too big/);

  class BadInput extends Fatal {}
  assert.equal(fromError(new BadInput("no")).failure?.errorType, "BadInput");
  class Named extends Error {
    override name = "CustomName";
  }
  assert.equal(errorType(new Named("n")), "CustomName");

  const cancelled = fromError(new Cancelled("chain cancelled"));
  assert.equal(cancelled.failure?.errorType, "Cancelled");
  assert.equal(cancelled.failure?.retryable, false);

  const thrownString = fromError("just a string");
  assert.deepEqual(thrownString.failure, {
    errorType: "string",
    message: "just a string",
    traceback: "",
    retryable: true,
  });
  assert.equal(stack({}), "");
  assert.throws(() => new Retry({ after: -1 }), /after/);
});

test("chain ids are UUIDv7, unique and increasing", () => {
  const ids = Array.from({ length: 2000 }, newChainId);
  for (const id of ids) assert.match(id, /^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
  assert.equal(new Set(ids).size, ids.length);
  const sorted = [...ids].sort();
  assert.deepEqual(sorted, ids);
});

test("rates as Celery writes them, alone or with a throttle", () => {
  assert.deepEqual(parseRate("10/s"), { count: 10, periodMs: 1000 });
  assert.deepEqual(parseRate(" 3 / 10s "), { count: 3, periodMs: 10_000 });
  assert.deepEqual(parseRate("1000/d"), { count: 1000, periodMs: 86_400_000 });
  assert.throws(() => parseRate("10"), /expected COUNT\/PERIOD/);
  assert.throws(() => parseRate("0/s"), /the count is 0/);
  assert.throws(() => parseRate("10/x"), /is not a unit/);
  assert.throws(() => parseRate("10/2d"), /between 1 ms and a day/);
  // A rate alone limits no holders (concurrency unset, 0 on the wire).
  assert.deepEqual(optionsToPb({ rate: "5/m" }), { throttle: { rate: { count: 5, periodMs: 60_000 } } });
  assert.deepEqual(optionsToPb({ throttle: 2, rate: "5/m" }), {
    throttle: { concurrency: 2, rate: { count: 5, periodMs: 60_000 } },
  });
  assert.deepEqual(optionsToPb({ throttle: { rate: "10/s", burst: 3, key: "api", shared: true } }), {
    throttle: { key: "api", shared: true, rate: { count: 10, periodMs: 1000, burst: 3 } },
  });
  assert.throws(() => optionsToPb({ throttle: { rate: "2/s", burst: 3 } }), /burst is more than/);
  assert.throws(() => optionsToPb({ throttle: { burst: 3 } }), /burst needs a rate/);
});
