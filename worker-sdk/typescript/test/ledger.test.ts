/** The worker's ledger on its own: what a Hello lists and what a Welcome re-sends. */
import assert from "node:assert/strict";
import { test } from "node:test";
import type { Outcome } from "../src/gen/baton/v1/index";
import { Ledger } from "../src/ledger";

const a = { taskId: "a", attempt: 1 };
const b = { taskId: "b", attempt: 2 };
const c = { taskId: "c", attempt: 1 };
const ok: Outcome = { success: { result: "1" } };

test("a run is held from its start until its outcome is acknowledged", () => {
  const ledger = new Ledger();
  assert.equal(ledger.start(a), true);
  assert.equal(ledger.start(a), false, "the same attempt twice");
  assert.equal(ledger.running(), 1);
  assert.deepEqual(ledger.finish(a, ok), { outcome: { success: { result: "1" }, task: a } });
  assert.equal(ledger.finish(a, ok), undefined, "one outcome per run");
  assert.equal(ledger.running(), 0);
  assert.equal(ledger.size, 1, "held until acknowledged");
  assert.deepEqual(ledger.hello().held, [a]);
  assert.equal(ledger.acked({ taskId: "a", attempt: 2 }), false, "another attempt's ack");
  assert.equal(ledger.acked(a), true);
  assert.equal(ledger.size, 0);
  assert.equal(ledger.finish(c, ok), undefined, "a run not held reports nothing");
});

test("throttle requests: pending, granted, released; the run's end forgets them", () => {
  const ledger = new Ledger();
  ledger.start(a);
  const first = ledger.request(a, { concurrency: 1, key: "vm:1" });
  const second = ledger.request(a, { concurrency: 2, key: "vm:2" });
  assert.ok(first && second);
  assert.notEqual(first.requestId, second.requestId);
  assert.deepEqual(first.message, {
    throttleAcquire: { requestId: first.requestId, task: a, throttle: { concurrency: 1, key: "vm:1" } },
  });
  assert.deepEqual(ledger.granted(first.requestId), a);
  assert.equal(ledger.granted(first.requestId), undefined, "granted once");
  assert.deepEqual(ledger.hello().heldSlots, [{ task: a, requestId: first.requestId }]);
  assert.deepEqual(ledger.release(first.requestId), { throttleRelease: { requestId: first.requestId, task: a } });
  assert.equal(ledger.release(first.requestId), undefined, "released once");
  assert.deepEqual(ledger.hello().heldSlots, []);
  // A pending request is withdrawn by a release too.
  assert.deepEqual(ledger.release(second.requestId), { throttleRelease: { requestId: second.requestId, task: a } });
  const third = ledger.request(a, { key: "vm:3" });
  assert.ok(third);
  assert.deepEqual(ledger.refused(third.requestId), a);
  assert.equal(ledger.granted(third.requestId), undefined, "a refused request is forgotten");
  const fourth = ledger.request(a, { key: "vm:4" });
  assert.ok(fourth);
  ledger.granted(fourth.requestId);
  ledger.finish(a, ok);
  assert.equal(ledger.release(fourth.requestId), undefined, "the broker frees a finished run's slots");
  assert.equal(ledger.request(a, { key: "vm:5" }), undefined, "no request for a finished run");
  assert.equal(ledger.request(c, { key: "vm:5" }), undefined, "nor for a run not held");
});

test("a Welcome drops the lost runs and re-sends outcomes and pending requests of the kept ones", () => {
  const ledger = new Ledger();
  ledger.start(a); // running, with a slot and a pending request
  ledger.start(b); // finished, not acknowledged
  ledger.start(c); // running, lost while disconnected
  const slot = ledger.request(a, { key: "held" });
  const pending = ledger.request(a, { key: "waiting" });
  const lostSlot = ledger.request(c, { key: "c" });
  assert.ok(slot && pending && lostSlot);
  ledger.granted(slot.requestId);
  ledger.granted(lostSlot.requestId);
  const outcome = ledger.finish(b, ok);
  assert.deepEqual(ledger.hello(), {
    held: [a, b, c],
    heldSlots: [
      { task: a, requestId: slot.requestId },
      { task: c, requestId: lostSlot.requestId },
    ],
  });
  const { lost, resend } = ledger.welcome({ lost: [c, { taskId: "unknown", attempt: 1 }] });
  assert.deepEqual(lost, [c]);
  assert.deepEqual(resend, [
    { throttleAcquire: { requestId: pending.requestId, task: a, throttle: { key: "waiting" } } },
    outcome,
  ]);
  assert.deepEqual(ledger.hello().held, [a, b]);
  assert.equal(ledger.release(lostSlot.requestId), undefined, "a lost run's slot is gone");
  ledger.drop(a);
  assert.equal(ledger.granted(pending.requestId), undefined);
  assert.equal(ledger.size, 1);
});
