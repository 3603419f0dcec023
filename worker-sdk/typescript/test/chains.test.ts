/**
 * Chains, executors and results against the real broker, one broker and
 * one worker process (concurrency 4) for the file.
 */
import assert from "node:assert/strict";
import { AsyncLocalStorage } from "node:async_hooks";
import { after, before, describe, test } from "node:test";
import type { Context, ContextManager } from "@opentelemetry/api";
import {
  ChainCancelled,
  ChainFailed,
  chain,
  chord,
  group,
  nested,
  PartialSubmission,
  TimeoutError,
} from "../src/index";
import * as tasks from "./fixtures/tasks";
import { type Broker, Scope, SKIP, sleep, waitUntil } from "./harness";

describe("chains and executors", { skip: SKIP }, () => {
  let scope: Scope;
  let broker: Broker;

  before(async () => {
    scope = Scope.create();
    broker = await scope.broker();
    tasks.app.address = broker.address;
    await scope.worker(broker, { concurrency: 4 });
  });
  after(async () => {
    tasks.app.close();
    await scope.close();
  });

  test("a schedule submits its chain each fire time; paused and removed, it stops", async () => {
    const app = tasks.app;
    const added = await app.schedule("ts-every-second", tasks.add.si(1, 2), { every: 1 });
    assert.equal(added.nextFiresUnixMs.length, 5);
    let last = "";
    await waitUntil(
      async () => {
        const [info] = (await app.schedules()).filter((s) => s.schedule?.name === "ts-every-second");
        last = info?.lastChainId ?? "";
        return last !== "";
      },
      10_000,
      "a fire of the schedule",
    );
    assert.equal(await app.result(last).get({ timeout: 10_000 }), 3);
    const paused = await app.pauseSchedule("ts-every-second");
    assert.equal(paused.schedule?.paused, true);
    assert.deepEqual(paused.nextFiresUnixMs, []);
    await app.removeSchedule("ts-every-second");
    assert.deepEqual(
      (await app.schedules()).map((s) => s.schedule?.name),
      [],
    );
    await assert.rejects(app.schedule("bad", tasks.add.si(1, 2), { cron: "61 * * * *" }), /not a cron expression/);
  });

  test("every step and callback sees the submitter's trace; a malformed traceparent is refused", async () => {
    const traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    const handle = await chain(tasks.traced.s(), tasks.traced.s()).applyAsync({
      context: { traceparent, tracestate: "rojo=00f067aa0ba902b7" },
    });
    const seen = (await handle.get({ timeout: 10_000 })) as unknown[];
    const want = { traceparent, tracestate: "rojo=00f067aa0ba902b7", traceId: "4bf92f3577b34da6a3ce929d0e0e4736" };
    assert.deepEqual(seen, [want, want]);
    await assert.rejects(
      async () => tasks.traced.applyAsync([], { context: { traceparent: "00-0-0-01" } }),
      /context\["traceparent"\]/,
    );
  });

  test("a chain submitted in an active OpenTelemetry span carries it; an explicit traceparent wins", async () => {
    const api = await import("@opentelemetry/api");
    // The API alone keeps no active context: a minimal AsyncLocalStorage
    // manager, as @opentelemetry/context-async-hooks would install.
    const storage = new AsyncLocalStorage<Context>();
    const manager: ContextManager = {
      active: () => storage.getStore() ?? api.ROOT_CONTEXT,
      with: (cx, fn, thisArg, ...args) => storage.run(cx, () => fn.call(thisArg, ...args)),
      bind: (_cx, target) => target,
      enable() {
        return this;
      },
      disable() {
        return this;
      },
    };
    assert.ok(api.context.setGlobalContextManager(manager));
    try {
      const span = api.trace.wrapSpanContext({
        traceId: "0af7651916cd43dd8448eb211c80319c",
        spanId: "b7ad6b7169203331",
        traceFlags: api.TraceFlags.SAMPLED,
      });
      const inSpan = api.trace.setSpan(api.ROOT_CONTEXT, span);
      const fromSpan = await api.context.with(inSpan, () => chain(tasks.traced.s()).applyAsync());
      const explicit = await api.context.with(inSpan, () =>
        chain(tasks.traced.s()).applyAsync({
          context: { traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01" },
        }),
      );
      assert.deepEqual(await fromSpan.get({ timeout: 10_000 }), [
        {
          traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
          traceId: "0af7651916cd43dd8448eb211c80319c",
        },
      ]);
      assert.deepEqual(await explicit.get({ timeout: 10_000 }), [
        {
          traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
          traceId: "4bf92f3577b34da6a3ce929d0e0e4736",
        },
      ]);
    } finally {
      api.context.disable();
    }
  });

  test("a task's result comes back through delay() and get()", async () => {
    const handle = await tasks.add.delay(2, 3);
    assert.match(handle.id, /^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
    assert.equal(handle.dedup, undefined);
    assert.equal(await handle.get({ timeout: 10_000 }), 5);
    assert.equal(await handle.status(), "SUCCEEDED");
    assert.equal(await handle.ready(), true);
  });

  test("a mutable step gets the previous result first; an immutable one does not", async () => {
    const handle = await chain(tasks.add.si(1, 2), tasks.mul.s(10), tasks.add.s(5)).delay();
    assert.equal(await handle.get({ timeout: 10_000 }), 35);
    const info = await handle.info();
    assert.deepEqual(
      info.steps.map((s) => [s.name, s.state, JSON.parse(s.result)]),
      [
        ["t.add", "STEP_STATE_SUCCEEDED", 3],
        ["t.mul", "STEP_STATE_SUCCEEDED", 30],
        ["t.add", "STEP_STATE_SUCCEEDED", 35],
      ],
    );
    const immutable = await chain(tasks.add.si(1, 2), tasks.add.si(7, 7)).delay();
    assert.equal(await immutable.get({ timeout: 10_000 }), 14);
  });

  test("steps run in order, one after another, with the chain's context", async () => {
    const labels = ["a", "b", "c", "d"].map((l) => `order-${l}`);
    const handle = await chain(...labels.map((l) => tasks.step.si(l))).applyAsync({
      context: { user: "alice", request: "r-1" },
    });
    assert.equal(await handle.get({ timeout: 15_000 }), "order-d");
    const seen = scope.events("step").filter((e) => String(e.label).startsWith("order-"));
    assert.deepEqual(
      seen.map((e) => e.label),
      labels,
    );
    for (const e of seen) assert.deepEqual(e.context, { user: "alice", request: "r-1" });
    for (let i = 1; i < seen.length; i++) assert.ok((seen[i]?.t ?? 0) >= (seen[i - 1]?.t ?? 0));
  });

  test("a chord hands the members' results, in member order, to its body", async () => {
    // The first member naps, so it ends last; the array keeps member order.
    const handle = await chord(
      group(tasks.nap.si("chord-0", 300), tasks.add.si(1, 0), tasks.add.si(2, 0)),
      tasks.done.s("chord"),
    ).applyAsync();
    assert.deepEqual(await handle.get({ timeout: 15_000 }), ["chord-0", 1, 2]);
    const info = await handle.info();
    assert.equal(info.steps[0]?.name, "group");
    assert.equal(info.steps[0]?.members, 3);
    assert.equal(info.steps[0]?.childChainIds.length, 3);
  });

  test("a nested executor runs its own callbacks; its failure fails the parent after both on_failures", async () => {
    const ok = await chain(
      tasks.add.si(1, 2),
      nested(chain(tasks.add.s(10)), { onSuccess: tasks.step.si("nested-ok"), name: "VolumeExecutor" }),
      tasks.add.s(100),
    ).applyAsync();
    assert.equal(await ok.get({ timeout: 15_000 }), 113);
    await scope.waitForEvents("step", 1, 10_000, { label: "nested-ok" });
    const bad = await chain(
      nested(tasks.fail.si("vol-9"), { onFailure: tasks.erred.s("nested-erred") }),
      tasks.step.si("never-after-nested"),
    ).applyAsync({ onFailure: tasks.erred.s("parent-erred") });
    const err = await bad.get({ timeout: 15_000 }).then(
      () => assert.fail("the parent should fail"),
      (e: unknown) => e,
    );
    assert.ok(err instanceof ChainFailed, String(err));
    assert.equal(err.record.task_name, "t.fail");
    await scope.waitForEvents("erred", 1, 10_000, { tag: "nested-erred" });
    const [parent] = await scope.waitForEvents("erred", 1, 10_000, { tag: "parent-erred" });
    assert.equal((parent?.record as Record<string, unknown> | undefined)?.error_type, "VolumeBusy");
    assert.equal(scope.events("step").filter((e) => e.label === "never-after-nested").length, 0);
  });

  test("an executor's on_failure gets the failure record first, with the JS error's type and stack", async () => {
    const handle = await chain(tasks.step.si("exec-1"), tasks.fail.si("vol-7"), tasks.step.si("never")).applyAsync({
      onSuccess: tasks.done.s("exec-ok"),
      onFailure: tasks.erred.s("exec-fail"),
      context: { user: "bob" },
    });
    const err = await handle.get({ timeout: 15_000 }).then(
      () => assert.fail("the chain should fail"),
      (e: unknown) => e,
    );
    assert.ok(err instanceof ChainFailed, String(err));
    assert.equal(err.record.error_type, "VolumeBusy");
    assert.equal(err.record.message, "volume vol-7 is busy");
    assert.equal(err.record.phase, "main");
    assert.equal(err.record.step_index, 1);
    assert.equal(err.record.task_name, "t.fail");
    assert.equal(err.record.attempt, 1);
    assert.match(err.record.traceback, /VolumeBusy: volume vol-7 is busy/);
    assert.match(err.record.traceback, /at deepHelper \(/);
    assert.match(err.record.traceback, /fixtures[/\\]tasks\.js:\d+:\d+/);
    const [erred] = await scope.waitForEvents("erred", 1, 10_000, { tag: "exec-fail" });
    const record = erred?.record as Record<string, unknown>;
    assert.equal(record.chain_id, handle.id);
    assert.equal(record.error_type, "VolumeBusy");
    assert.equal(record.task_name, "t.fail");
    assert.equal(record.phase, "main");
    assert.equal(erred?.phase, "on_failure");
    assert.deepEqual(erred?.context, { user: "bob" });
    assert.equal(scope.events("done").filter((e) => e.tag === "exec-ok").length, 0);
    assert.equal(scope.events("step").filter((e) => e.label === "never").length, 0);
    const info = await handle.info();
    assert.equal(info.state, "CHAIN_STATE_FAILED");
    assert.equal(info.steps[2]?.state, "STEP_STATE_PENDING");
    assert.equal(info.onFailure[0]?.state, "STEP_STATE_SUCCEEDED");
  });

  test("an executor's on_success gets the last result; on_failure never runs", async () => {
    const handle = await chain(tasks.add.si(20, 22)).applyAsync({
      onSuccess: [tasks.done.s("succ-1"), tasks.step.si("succ-2")],
      onFailure: tasks.erred.s("succ-fail"),
    });
    assert.equal(await handle.get({ timeout: 10_000 }), 42);
    const [done] = await scope.waitForEvents("done", 1, 10_000, { tag: "succ-1" });
    assert.equal(done?.result, 42);
    assert.equal(done?.phase, "on_success");
    await scope.waitForEvents("step", 1, 10_000, { label: "succ-2" });
    assert.equal(scope.events("erred").filter((e) => e.tag === "succ-fail").length, 0);
  });

  test("a fatal error is not retried, and reports its cause's type", async () => {
    const handle = await tasks.fatal.delay();
    const err = await handle.get({ timeout: 10_000 }).catch((e: unknown) => e);
    assert.ok(err instanceof ChainFailed);
    assert.equal(err.record.error_type, "RangeError");
    assert.equal(err.record.message, "bad input");
    assert.equal(err.record.attempt, 1);
    assert.match(err.record.traceback, /Caused by: RangeError: size out of range/);
    assert.equal((await handle.info()).steps[0]?.retries, 0);
  });

  test("a retryable error is retried up to maxRetries, then succeeds", async () => {
    const handle = await tasks.flaky.delay("flaky-ok", 2);
    assert.equal(await handle.get({ timeout: 15_000 }), 3);
    const runs = scope.events("flaky").filter((e) => e.key === "flaky-ok");
    assert.deepEqual(
      runs.map((e) => [e.attempt, e.retries]),
      [
        [1, 0],
        [2, 1],
        [3, 2],
      ],
    );
    const step = (await handle.info()).steps[0];
    assert.equal(step?.retries, 2);
    assert.equal(step?.attempts, 3);
  });

  test("retries run out: the chain fails after 1 + maxRetries attempts", async () => {
    const handle = await tasks.flaky.delay("flaky-out", 10);
    const err = await handle.get({ timeout: 15_000 }).catch((e: unknown) => e);
    assert.ok(err instanceof ChainFailed);
    assert.equal(err.record.attempt, 4);
    assert.equal(err.record.message, "attempt 4 failed");
    assert.equal(scope.events("flaky").filter((e) => e.key === "flaky-out").length, 4);
  });

  test("a signature's options override the task's: maxRetries 0 means no retry", async () => {
    const handle = await tasks.flaky.si("flaky-none", 5).set({ maxRetries: 0 }).delay();
    const err = await handle.get({ timeout: 10_000 }).catch((e: unknown) => e);
    assert.ok(err instanceof ChainFailed);
    assert.equal(err.record.attempt, 1);
  });

  test("Retry polls keep the step's place and count against maxPolls", async () => {
    const handle = await chain(tasks.poll.si("poll-ok", 3), tasks.step.si("after-poll")).delay();
    assert.equal(await handle.get({ timeout: 15_000 }), "after-poll");
    const polls = scope.events("poll").filter((e) => e.key === "poll-ok");
    assert.deepEqual(
      polls.map((e) => e.polls),
      [0, 1, 2, 3],
    );
    const info = await handle.info();
    assert.equal(info.steps[0]?.polls, 3);
    assert.equal(info.steps[0]?.retries, 0);
    assert.equal(JSON.parse(info.steps[0]?.result ?? ""), 3);

    const exhausted = await tasks.poll.si("poll-out", 100).applyAsync({ onFailure: tasks.erred.s("poll-fail") });
    const err = await exhausted.get({ timeout: 15_000 }).catch((e: unknown) => e);
    assert.ok(err instanceof ChainFailed);
    assert.equal(err.record.error_type, "PollBudgetExhausted");
    await scope.waitForEvents("erred", 1, 10_000, { tag: "poll-fail" });
    assert.equal(scope.events("poll").filter((e) => e.key === "poll-out").length, 6);
  });

  test("countdown delays a step; a deadline fails the chain with DeadlineExceeded", async () => {
    const started = Date.now();
    const handle = await tasks.step.si("late").applyAsync({ countdown: 700 });
    assert.equal(await handle.get({ timeout: 10_000 }), "late");
    const [ran] = scope.events("step").filter((e) => e.label === "late");
    assert.ok((ran?.t ?? 0) - started >= 650, `ran ${(ran?.t ?? 0) - started} ms after submission`);

    const eta = await tasks.step.si("eta").applyAsync({ eta: new Date(Date.now() + 600) });
    const etaStart = Date.now();
    await eta.get({ timeout: 10_000 });
    assert.ok(Date.now() - etaStart >= 400);

    const doomed = await chain(tasks.nap.si("deadline", 10_000)).applyAsync({
      deadline: 500,
      onFailure: tasks.erred.s("deadline"),
    });
    const err = await doomed.get({ timeout: 10_000 }).catch((e: unknown) => e);
    assert.ok(err instanceof ChainFailed);
    assert.equal(err.record.error_type, "DeadlineExceeded");
    await scope.waitForEvents("erred", 1, 10_000, { tag: "deadline" });
  });

  test("get() times out while the chain runs; cancel() stops it and no callback fires", async () => {
    const handle = await chain(tasks.nap.si("cancel-me", 30_000), tasks.step.si("after-cancel")).applyAsync({
      onFailure: tasks.erred.s("cancel-fail"),
      onSuccess: tasks.done.s("cancel-ok"),
    });
    await scope.waitForEvents("nap_start", 1, 10_000, { key: "cancel-me" });
    await assert.rejects(handle.get({ timeout: 300 }), TimeoutError);
    assert.equal(await handle.cancel("changed my mind"), "CANCELLED");
    const err = await handle.get({ timeout: 10_000 }).catch((e: unknown) => e);
    assert.ok(err instanceof ChainCancelled);
    assert.match(err.reason, /changed my mind/);
    // The body saw the AbortSignal.
    const [cancelled] = await scope.waitForEvents("nap_cancelled", 1, 10_000, { key: "cancel-me" });
    assert.equal(cancelled?.aborted, true);
    assert.match(String(cancelled?.reason), /changed my mind/);
    await sleep(300);
    assert.equal(scope.events("step").filter((e) => e.label === "after-cancel").length, 0);
    assert.equal(scope.events("erred").filter((e) => e.tag === "cancel-fail").length, 0);
    assert.equal(scope.events("done").filter((e) => e.tag === "cancel-ok").length, 0);
    assert.equal(await handle.cancel(), "CANCELLED");
  });

  test("a time limit cancels the run; an ignored cancel is still reported as cancelled", async () => {
    const handle = await tasks.stubborn.si("limit").set({ maxRetries: 0 }).delay();
    const err = await handle.get({ timeout: 10_000 }).catch((e: unknown) => e);
    assert.ok(err instanceof ChainFailed);
    assert.equal(err.record.error_type, "TimeLimitExceeded");
    const [start] = scope.events("stubborn_start").filter((e) => e.key === "limit");
    assert.equal(start?.timeoutMs, 300);
    await scope.waitForEvents("stubborn_aborted", 1, 10_000, { key: "limit" });
  });

  test("the context tells the body who it is", async () => {
    const handle = await chain(
      tasks.add.si(1, 1),
      tasks.app.signature("t.whoami", [], { immutable: true, kwargs: { k: "v" } }),
    ).applyAsync({
      context: { tenant: "7" },
    });
    const me = (await handle.get({ timeout: 10_000 })) as Record<string, unknown>;
    const info = await handle.info();
    assert.equal(me.name, "t.whoami");
    assert.equal(me.chainId, handle.id);
    assert.equal(me.taskId, info.steps[1]?.taskId);
    assert.equal(me.attempt, 1);
    assert.equal(me.phase, "main");
    assert.equal(me.stepIndex, 1);
    assert.equal(me.queue, "general");
    assert.deepEqual(me.context, { tenant: "7" });
    assert.deepEqual(me.kwargs, { k: "v" });
  });

  test("idempotency keys return the first chain; unique keys skip while one runs", async () => {
    const first = await tasks.step.si("idem").applyAsync({ idempotencyKey: "create-vm-42" });
    const again = await tasks.step.si("idem-2").applyAsync({ idempotencyKey: "create-vm-42" });
    assert.equal(first.dedup, undefined);
    assert.equal(again.id, first.id);
    assert.equal(again.dedup, "idempotency_key");

    const running = await tasks.nap.si("unique", 1500).applyAsync({ uniqueKey: "pull-tenant-7" });
    const skipped = await tasks.nap.si("unique-2", 10).applyAsync({ uniqueKey: "pull-tenant-7" });
    assert.equal(skipped.id, running.id);
    assert.equal(skipped.dedup, "unique_key");
    await running.get({ timeout: 10_000 });
    const later = await tasks.step.si("unique-3").applyAsync({ uniqueKey: "pull-tenant-7" });
    assert.notEqual(later.id, running.id);
    assert.equal(later.dedup, undefined);

    const chosen = await tasks.step.si("chosen").applyAsync({ chainId: first.id });
    assert.equal(chosen.dedup, "chain_id");
  });

  test("submitMany stores every chain with SubmitChains, in order", async () => {
    const handles = await tasks.app.submitMany(
      [tasks.add.si(1, 1), chain(tasks.add.si(2, 2), tasks.mul.s(3)), tasks.add.si(5, 5)],
      { context: { batch: "yes" } },
    );
    assert.equal(handles.length, 3);
    assert.deepEqual(await Promise.all(handles.map((h) => h.get({ timeout: 10_000 }))), [2, 12, 10]);
    for (const h of handles) assert.deepEqual((await h.info()).context, { batch: "yes" });
    await assert.rejects(
      tasks.app.submitMany([tasks.add.si(1, 1), tasks.add.si(1, 1).set({ queue: "bad queue!" })]),
      /chains\[1\]/,
    );
  });

  test("submitMany in batches of 1000: a refused later batch leaves the earlier ones stored", async () => {
    // A task no worker registers: the chains wait in their queue.
    const items = Array.from({ length: 1001 }, (_, i) =>
      tasks.app.signature("t.nobody", [i], { immutable: true, ...(i === 1000 ? { queue: "bad queue!" } : {}) }),
    );
    const err = await tasks.app.submitMany(items).catch((e: unknown) => e);
    assert.ok(err instanceof PartialSubmission, String(err));
    assert.equal(err.stored.length, 1000);
    assert.equal(err.code, 3);
    assert.match(err.details, /chains\[0\]/);
    const last = err.stored[999] as { status(): Promise<string> };
    assert.equal(await last.status(), "RUNNING");
  });

  test("watch() follows the chain's events to its end", async () => {
    // The first step naps so that the watch opens while the chain runs: a
    // watch opened after the end gets only the snapshot, which says so.
    const handle = await chain(tasks.nap.si("watch-1", 300), tasks.step.si("watch-2")).delay();
    const kinds: string[] = [];
    for await (const event of handle.watch()) kinds.push(event.kind);
    assert.equal(kinds[0], "snapshot");
    assert.equal(kinds.at(-1), "chain_succeeded");
    assert.ok(kinds.includes("step_succeeded"), kinds.join(","));
  });

  test("a task submitted from a task body exists when the body returns", async () => {
    const handle = await tasks.spawnChild.delay("child");
    const childId = (await handle.get({ timeout: 10_000 })) as string;
    assert.equal(await tasks.app.result(childId).get({ timeout: 10_000 }), "child");
  });

  test("bad input is refused with INVALID_ARGUMENT naming the field; bad options fail at the call", async () => {
    await assert.rejects(tasks.step.si("x").set({ queue: "no spaces" }).delay(), (err: Error & { code?: number }) => {
      assert.equal(err.code, 3);
      assert.match(err.message, /queue/);
      return true;
    });
    assert.throws(() => tasks.step.si("x").set({ countdonw: 5 } as never), /unknown option\(s\) countdonw/);
    await assert.rejects(chain(tasks.step.si("x")).applyAsync({ deadlin: 5 } as never), /unknown option\(s\) deadlin/);
    await assert.rejects(tasks.app.result("not-a-uuid").status(), /chain_id/);
  });

  test("the worker is listed with what it registered", async () => {
    const workers = await waitUntil(() => broker.workers(), 5000, "workers");
    const w = workers[0];
    assert.ok(w);
    assert.deepEqual(w.queues, ["general"]);
    assert.equal(w.concurrency, 4);
    assert.ok(w.taskNames.includes("t.add"));
  });
});
