/**
 * The worker against the real broker: throttles (in-body and declared),
 * routing, prefetch, drain and crashes. Each test has its own broker and
 * worker processes.
 */
import assert from "node:assert/strict";
import { describe, type TestContext, test } from "node:test";
import { Baton, ChainCancelled, chain, type Logger } from "../src/index";
import * as tasks from "./fixtures/tasks";
import { type Event, Scope, SKIP, sleep, waitUntil } from "./harness";

/** The most holders at once, from enter/exit events of `key`. */
function maxOverlap(events: Event[], key: string): number {
  const marks = events
    .filter((e) => e.key === key && (e.event === "enter" || e.event === "exit"))
    .map((e) => ({ t: e.t, d: e.event === "enter" ? 1 : -1 }))
    // At one millisecond, count exits first: the clock is coarser than the hand-over.
    .sort((a, b) => a.t - b.t || a.d - b.d);
  let now = 0;
  let max = 0;
  for (const m of marks) {
    now += m.d;
    max = Math.max(max, now);
  }
  return max;
}

async function setup(t: TestContext, leaseMs?: number) {
  const scope = Scope.open(t);
  const broker = await scope.broker(leaseMs === undefined ? {} : { leaseMs });
  tasks.app.address = broker.address;
  t.after(() => tasks.app.close());
  return { scope, broker };
}

describe("worker", { skip: SKIP }, () => {
  test("in-body throttle: never more holders than the limit, across two worker processes", async (t) => {
    const { scope, broker } = await setup(t);
    await scope.worker(broker, { concurrency: 4 });
    await scope.worker(broker, { concurrency: 4 });
    const one = await Promise.all(Array.from({ length: 6 }, () => tasks.inBody.delay("vm:1", 150, 1)));
    const two = await Promise.all(Array.from({ length: 6 }, () => tasks.inBody.delay("vm:2", 300, 2)));
    for (const h of [...one, ...two]) assert.ok(await h.get({ timeout: 30_000 }));
    const events = scope.events();
    assert.equal(maxOverlap(events, "vm:1"), 1);
    assert.equal(maxOverlap(events, "vm:2"), 2);
    // Both workers ran some of them: the limit held across processes.
    const workers = new Set(events.filter((e) => e.event === "enter").map((e) => e.worker));
    assert.equal(workers.size, 2);
  });

  test("declared throttle: at most 2 at once, and waiting runs occupy no worker", async (t) => {
    const { scope, broker } = await setup(t);
    await scope.worker(broker, { concurrency: 3 });
    await scope.worker(broker, { concurrency: 3 });
    const handles = await Promise.all(Array.from({ length: 6 }, () => tasks.declared.delay(300)));
    // While the throttled ones wait, the workers' free slots still take other work.
    const quick = await tasks.add.delay(1, 1);
    assert.equal(await quick.get({ timeout: 5_000 }), 2);
    const throttles = await broker.app.client.listThrottles();
    const mine = throttles.find((x) => x.identity?.taskName === "t.declared");
    assert.ok(mine, JSON.stringify(throttles));
    assert.equal(mine.limit, 2);
    assert.ok(mine.holders.length <= 2);
    for (const h of handles) await h.get({ timeout: 30_000 });
    assert.equal(maxOverlap(scope.events(), "declared"), 2);
  });

  test("the seed's demo: two chains' slow parts run one after another, each fast after its slow", async (t) => {
    const { scope, broker } = await setup(t);
    await scope.worker(broker, { concurrency: 4 });
    const demo = () => chain(tasks.inBody.si("vm:10", 400, 1), tasks.step.si("fast-10"));
    const [a, b] = await Promise.all([demo().delay(), demo().delay()]);
    assert.ok(a && b);
    await a.get({ timeout: 20_000 });
    await b.get({ timeout: 20_000 });
    const events = scope.events();
    assert.equal(maxOverlap(events, "vm:10"), 1);
    const exits = events.filter((e) => e.event === "exit" && e.key === "vm:10");
    const fasts = events.filter((e) => e.event === "step" && e.label === "fast-10");
    assert.equal(exits.length, 2);
    assert.equal(fasts.length, 2);
    assert.ok((fasts[0]?.t ?? 0) >= (exits[0]?.t ?? 0));
    assert.ok((fasts[1]?.t ?? 0) >= (exits[1]?.t ?? 0));
  });

  test("a chain-scoped, shared throttle is held across the chain's remaining steps", async (t) => {
    const { scope, broker } = await setup(t);
    await scope.worker(broker, { concurrency: 4 });
    const tenant = { concurrency: 1, key: "tenant:9", shared: true, scope: "chain" as const };
    const provisioning = (n: number) =>
      chain(tasks.step.si(`c${n}-first`).set({ throttle: tenant }), tasks.nap.si(`c${n}-second`, 400)).delay();
    const [one, two] = await Promise.all([provisioning(1), provisioning(2)]);
    assert.ok(one && two);
    await one.get({ timeout: 20_000 });
    await two.get({ timeout: 20_000 });
    const events = scope.events();
    const at = (event: string, match: (e: Event) => boolean) =>
      events.find((e) => e.event === event && match(e))?.t ?? 0;
    const firsts = events.filter((e) => e.event === "step" && /^c\d-first$/.test(String(e.label)));
    assert.equal(firsts.length, 2);
    const [earlier, later] = firsts;
    const earlierChain = String(earlier?.label).slice(0, 2);
    // The later chain's first step starts only after the earlier chain's last step ended.
    assert.ok(
      (later?.t ?? 0) >= at("nap_end", (e) => e.key === `${earlierChain}-second`),
      "the chain-scoped slot was not held across the chain",
    );
  });

  test("routing: heavy tasks and heavy chains reach only the heavy worker; an explicit queue wins", async (t) => {
    const { scope, broker } = await setup(t);
    await scope.worker(broker, { name: "general-w", queues: ["general"], concurrency: 2 });
    await scope.worker(broker, { name: "heavy-w", queues: ["heavy"], concurrency: 1 });
    await scope.worker(broker, { name: "special-w", queues: ["special"], concurrency: 1 });
    const declared = (await (await tasks.heavy.delay()).get({ timeout: 10_000 })) as Record<string, string>;
    assert.deepEqual(declared, { queue: "heavy", worker: "heavy-w" });
    const light = (await (await tasks.whoami.delay()).get({ timeout: 10_000 })) as Record<string, string>;
    assert.equal(light.worker, "general-w");
    // A chain-level heavy applies to every step (Celery applied it to the first only).
    const h = await chain(tasks.whoami.si(), tasks.step.si("heavy-2")).applyAsync({ heavy: true });
    await h.get({ timeout: 10_000 });
    const info = await h.info();
    assert.deepEqual(
      info.steps.map((s) => [s.queue, s.worker]),
      [
        ["heavy", "heavy-w"],
        ["heavy", "heavy-w"],
      ],
    );
    const special = (await (
      await tasks.heavy.si().set({ queue: "special" }).delay()
    ).get({
      timeout: 10_000,
    })) as Record<string, string>;
    assert.deepEqual(special, { queue: "special", worker: "special-w" });
    const chainQueue = await chain(tasks.whoami.si()).applyAsync({ queue: "special" });
    assert.equal(((await chainQueue.get({ timeout: 10_000 })) as Record<string, string>).worker, "special-w");
  });

  test("prefetch: the broker sends assignments beyond concurrency; they run one at a time", async (t) => {
    const { scope, broker } = await setup(t);
    await scope.worker(broker, { name: "prefetcher", concurrency: 1, prefetch: 2 });
    const handles = await Promise.all(["p1", "p2", "p3"].map((k) => tasks.nap.delay(k, 400)));
    const w = await waitUntil(
      async () => (await broker.workers()).find((x) => x.workerName === "prefetcher" && x.inFlight.length === 3),
      5_000,
      "three assignments in flight",
    );
    assert.equal(w.prefetch, 2);
    assert.equal(w.concurrency, 1);
    for (const h of handles) await h.get({ timeout: 20_000 });
    const starts = scope.events("nap_start").map((e) => e.t);
    const ends = scope.events("nap_end").map((e) => e.t);
    assert.equal(starts.length, 3);
    for (let i = 1; i < 3; i++) assert.ok((starts[i] ?? 0) >= (ends[i - 1] ?? 0), "prefetched runs overlapped");
  });

  test("SIGTERM drains: the running task finishes, nothing new is taken, exit 0", async (t) => {
    const { scope, broker } = await setup(t);
    const worker = await scope.worker(broker, { name: "drainer", concurrency: 2 });
    const running = await tasks.nap.delay("drain-run", 1000);
    await scope.waitForEvents("nap_start", 1, 10_000, { key: "drain-run" });
    worker.signal("SIGTERM");
    await waitUntil(
      async () => (await broker.workers()).find((w) => w.workerName === "drainer")?.draining,
      5_000,
      "the worker to be draining",
    );
    const later = await tasks.step.delay("after-drain");
    assert.equal(await worker.exited(), 0);
    assert.equal(await running.get({ timeout: 5_000 }), "drain-run");
    assert.equal(await later.status(), "RUNNING");
    assert.equal(scope.events("step").filter((e) => e.label === "after-drain").length, 0);
    assert.match(worker.log(), /draining/);
    // A new worker takes it.
    await scope.worker(broker, { name: "successor" });
    assert.equal(await later.get({ timeout: 10_000 }), "after-drain");
  });

  test("a second SIGTERM exits at once with status 1", async (t) => {
    const { scope, broker } = await setup(t);
    const worker = await scope.worker(broker, { concurrency: 1 });
    await tasks.nap.delay("forced", 30_000);
    await scope.waitForEvents("nap_start", 1, 10_000, { key: "forced" });
    worker.signal("SIGTERM");
    await sleep(200);
    worker.signal("SIGTERM");
    assert.equal(await worker.exited(), 1);
  });

  test("a crashed worker's run is redelivered to another worker with the next attempt", async (t) => {
    const { scope, broker } = await setup(t);
    const victim = await scope.worker(broker, { name: "victim" });
    const handle = await tasks.nap.delay("crash", 700);
    await scope.waitForEvents("nap_start", 1, 10_000, { key: "crash" });
    victim.signal("SIGKILL");
    await victim.exited();
    await scope.worker(broker, { name: "rescuer" });
    assert.equal(await handle.get({ timeout: 20_000 }), "crash");
    const starts = scope.events("nap_start").filter((e) => e.key === "crash");
    assert.deepEqual(
      starts.map((e) => [e.worker, e.attempt]),
      [
        ["victim", 1],
        ["rescuer", 2],
      ],
    );
  });

  test("heartbeats keep a run longer than the lease: it finishes as attempt 1", async (t) => {
    const { scope, broker } = await setup(t);
    assert.equal(broker.leaseMs, 2000);
    await scope.worker(broker, { name: "beater" });
    const handle = await tasks.nap.delay("long", 5000);
    assert.equal(await handle.get({ timeout: 20_000 }), "long");
    assert.deepEqual(
      scope.events("nap_start").map((e) => e.attempt),
      [1],
    );
    assert.equal((await handle.info()).steps[0]?.attempts, 1);
  });

  test("a worker in-process: app.worker().run() serves, stop() drains and run() resolves", async (t) => {
    const { scope, broker } = await setup(t);
    const app = new Baton(broker.address);
    t.after(() => app.close());
    const seen: string[] = [];
    const lines: string[] = [];
    const logger: Logger = {
      debug: () => {},
      info: (m) => lines.push(m),
      warn: (m) => lines.push(m),
      error: (m) => lines.push(m),
    };
    app.task({ name: "inproc.echo" }, async (ctx, text: string) => {
      seen.push(`${ctx.name}:${text}`);
      return text.toUpperCase();
    });
    const worker = app.worker({ name: "in-process", concurrency: 2, logger });
    const running = worker.run();
    await waitUntil(async () => (await broker.workers()).some((w) => w.workerName === "in-process"), 10_000, "it");
    const handle = await app.signature("inproc.echo", ["hi"], { immutable: true }).delay();
    assert.equal(await handle.get({ timeout: 10_000 }), "HI");
    assert.deepEqual(seen, ["inproc.echo:hi"]);
    worker.stop();
    await running;
    assert.ok(
      lines.some((l) => l.startsWith("connected as")),
      lines.join("\n"),
    );
    assert.deepEqual(worker.held, { runs: 0, running: 0 });
    await waitUntil(async () => !(await broker.workers()).some((w) => w.workerName === "in-process"), 5_000, "gone");
    void scope;
  });

  test("cancelling a run that waits for an in-body slot withdraws its request", async (t) => {
    const { scope, broker } = await setup(t);
    await scope.worker(broker, { concurrency: 3 });
    const holder = await tasks.hold.delay("vm:busy", 1500);
    await scope.waitForEvents("hold_enter", 1, 10_000, { key: "vm:busy" });
    const waiter = await tasks.hold.delay("vm:busy", 10);
    await waitUntil(
      async () => (await broker.app.client.listThrottles()).find((x) => x.identity?.key === "vm:busy")?.waiters,
      5_000,
      "a waiter on vm:busy",
    );
    assert.equal(await waiter.cancel("no longer needed"), "CANCELLED");
    await assert.rejects(waiter.get({ timeout: 5_000 }), ChainCancelled);
    await waitUntil(
      async () => (await broker.app.client.listThrottles()).find((x) => x.identity?.key === "vm:busy")?.waiters === 0,
      5_000,
      "the waiter to be withdrawn",
    );
    assert.equal(await holder.get({ timeout: 10_000 }), 1);
    assert.equal(scope.events("hold_enter").length, 1);
  });
});
