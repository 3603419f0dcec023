/**
 * Recovery against the real broker: a broker killed (SIGKILL) and restarted
 * on the same port and data while a worker holds runs and throttle slots.
 */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import * as tasks from "./fixtures/tasks";
import { Scope, SKIP, sleep, waitUntil } from "./harness";

describe("recovery", { skip: SKIP }, () => {
  test("held runs and their slots survive a broker restart: Hello.held keeps them, outcomes are re-sent", async (t) => {
    const scope = Scope.open(t);
    // A lease long enough for the restart: the worker must come back within it.
    const broker = await scope.broker({ leaseMs: 6000 });
    tasks.app.address = broker.address;
    t.after(() => tasks.app.close());
    const worker = await scope.worker(broker, { name: "survivor", concurrency: 2 });

    const first = await tasks.hold.delay("vm:restart", 2000);
    await scope.waitForEvents("hold_enter", 1, 10_000, { key: "vm:restart" });
    const second = await tasks.hold.delay("vm:restart", 100);
    await waitUntil(
      async () => (await broker.app.client.listThrottles()).find((x) => x.identity?.key === "vm:restart")?.waiters,
      5_000,
      "the second run waiting for vm:restart",
    );

    // Crash the broker while the first run holds the slot, and keep it down
    // past the moment the run ends: its outcome waits in the worker.
    await broker.kill();
    await sleep(2500);
    await scope.waitForEvents("hold_exit", 1, 5_000, { key: "vm:restart" });
    await broker.start();

    assert.equal(await first.get({ timeout: 20_000 }), 1, "the first run finished as attempt 1");
    assert.equal(await second.get({ timeout: 20_000 }), 1);
    const enters = scope.events("hold_enter").filter((e) => e.key === "vm:restart");
    const exits = scope.events("hold_exit").filter((e) => e.key === "vm:restart");
    assert.equal(enters.length, 2, "no run was redelivered");
    // Throttle safety across the restart: the second entered after the first left.
    assert.ok((enters[1]?.t ?? 0) >= (exits[0]?.t ?? 0), "two holders of vm:restart at once");
    const info = await first.info();
    assert.equal(info.steps[0]?.attempts, 1);
    assert.match(worker.log(), /connected as .*kept 2, lost 0|connected as .*kept 1, lost 0/);
    assert.match(worker.log(), /connection lost/);
  });

  test("runs whose lease lapsed while the broker was away are reported lost and redelivered", async (t) => {
    const scope = Scope.open(t);
    const broker = await scope.broker({ leaseMs: 1000 });
    tasks.app.address = broker.address;
    t.after(() => tasks.app.close());
    const worker = await scope.worker(broker, { name: "late", concurrency: 1 });
    const handle = await tasks.nap.delay("lapsed", 4000);
    await scope.waitForEvents("nap_start", 1, 10_000, { key: "lapsed" });
    // Stop the worker's heartbeats long enough for its lease to lapse.
    worker.signal("SIGSTOP");
    await sleep(2500);
    worker.signal("SIGCONT");
    assert.equal(await handle.get({ timeout: 30_000 }), "lapsed");
    const starts = scope.events("nap_start").filter((e) => e.key === "lapsed");
    assert.deepEqual(
      starts.map((e) => e.attempt),
      [1, 2],
    );
    // The first attempt was stopped (its signal aborted) and not reported.
    await scope.waitForEvents("nap_cancelled", 1, 10_000, { key: "lapsed" });
    assert.equal((await handle.info()).steps[0]?.attempts, 2);
  });

  test("a submission and a worker made while the broker is down wait for it", async (t) => {
    const scope = Scope.open(t);
    const broker = await scope.broker();
    tasks.app.address = broker.address;
    t.after(() => tasks.app.close());
    await broker.kill();
    const worker = await scope.worker(broker, { name: "early", wait: false });
    const submitted = tasks.add.delay(40, 2); // waits for the broker (wait-for-ready), within the app's timeout
    await sleep(1000);
    await broker.start();
    const handle = await submitted;
    assert.equal(await handle.get({ timeout: 20_000 }), 42);
    assert.equal(worker.proc.exitCode, null);
    assert.match(worker.log(), /could not connect|connection lost/);
  });
});
