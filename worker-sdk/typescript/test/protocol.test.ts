/**
 * The SDK follows the proto: every field of the messages it builds or
 * reads, and every RPC of the Broker service, is either handled or listed
 * here as deliberately left alone, with why. A field or RPC added to
 * proto/ that the SDK does not follow fails this test (a renamed or
 * removed one already fails the type check of the generated types).
 */
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import type { MessageTypeDefinition } from "@grpc/proto-loader";
import { LOADER_OPTIONS, protocol } from "../src/proto";
import { PACKAGE } from "./harness";

/** message -> field -> how the SDK handles it ("" = set or read by the SDK; text = why it is left alone). */
const FIELDS: Record<string, Record<string, string>> = {
  Options: Object.fromEntries(
    [
      "queue",
      "heavy",
      "throttle",
      "max_retries",
      "retry_backoff_ms",
      "retry_backoff_max_ms",
      "max_polls",
      "timeout_ms",
      "countdown_ms",
      "eta_unix_ms",
      "priority",
      "description",
    ].map((f) => [f, ""]),
  ),
  Throttle: { concurrency: "", key: "", shared: "", scope: "", rate: "" },
  Rate: { count: "", period_ms: "", burst: "" },
  Signature: { name: "", args: "", kwargs: "", immutable: "", options: "", members: "", executor: "" },
  Executor: { steps: "", on_success: "", on_failure: "" },
  SubmitChainRequest: {
    steps: "",
    on_success: "",
    on_failure: "",
    heavy: "",
    context: "",
    idempotency_key: "",
    unique_key: "",
    deadline_unix_ms: "",
    chain_id: "",
  },
  SubmitChainResponse: { chain_id: "", dedup: "" },
  TaskDefinition: { name: "", defaults: "" },
  TaskRef: { task_id: "", attempt: "" },
  HeldSlot: { task: "", request_id: "" },
  Hello: {
    worker_name: "",
    queues: "",
    tasks: "",
    concurrency: "",
    held: "",
    held_slots: "",
    batch_bytes: "left 0: the broker sends every message on its own (one event-loop turn per message is cheap in Node)",
    prefetch: "",
  },
  Welcome: {
    worker_id: "",
    lease_ms: "",
    heartbeat_interval_ms: "",
    kept: "",
    lost: "",
    batch_bytes: "not read: the worker sends every message on its own",
  },
  WorkerMessage: {
    hello: "",
    outcome: "",
    heartbeat: "",
    throttle_acquire: "",
    throttle_release: "",
    drain: "",
    goodbye: "",
    batch: "never sent (see Welcome.batch_bytes)",
    window:
      "never sent: the SDK prefetches nothing by default, and a window set by hand stays as the Hello announced it",
  },
  BrokerMessage: {
    welcome: "",
    assignment: "",
    cancel: "",
    outcome_ack: "",
    throttle_granted: "",
    error: "",
    batch: "",
  },
  Assignment: {
    task: "",
    chain_id: "",
    phase: "",
    step_index: "",
    name: "",
    args: "",
    kwargs: "",
    context: "",
    queue: "",
    lease_deadline_unix_ms: "not read: the worker heartbeats every heartbeat_interval_ms whatever the deadline",
    timeout_ms: "",
    polls: "",
    retries: "",
  },
  Outcome: { task: "", success: "", failure: "", retry_later: "" },
  Success: { result: "" },
  Failure: { error_type: "", message: "", traceback: "", retryable: "" },
  RetryLater: { delay_ms: "", message: "" },
  Heartbeat: { tasks: "always empty: extends every assignment of the stream" },
  ThrottleAcquire: { request_id: "", task: "", throttle: "" },
  ThrottleRelease: { request_id: "", task: "" },
  Cancel: { task: "", reason: "" },
  OutcomeAck: { task: "", accepted: "", reason: "" },
  ThrottleGranted: { request_id: "" },
  WorkerError: { request_id: "", task: "logged with the message", message: "" },
  FailureRecord: Object.fromEntries(
    ["chain_id", "phase", "step_index", "task_name", "task_id", "attempt", "error_type", "message", "traceback"].map(
      (f) => [f, ""],
    ),
  ),
};

/** Broker RPCs: what wraps each. */
const BROKER_RPCS: Record<string, string> = {
  SubmitChain: "Baton.submit, delay(), applyAsync()",
  SubmitChains: "Baton.submitMany",
  GetChain: "ChainHandle.info/status/ready",
  GetStepResult: "ChainHandle.stepResult",
  WatchChain: "ChainHandle.get/watch",
  CancelChain: "ChainHandle.cancel",
};

const WORKER_RPCS = new Set(["Session"]);

/** proto-loader names fields in camelCase (LOADER_OPTIONS.keepCase is false). */
function camel(name: string): string {
  return name.replace(/_([a-z0-9])/g, (_m, c: string) => c.toUpperCase());
}

test("every field of the messages the SDK builds or reads is handled or listed", () => {
  const { definition } = protocol();
  const problems: string[] = [];
  for (const [message, known] of Object.entries(FIELDS)) {
    const def = definition[`baton.v1.${message}`] as MessageTypeDefinition<object, object> | undefined;
    if (def === undefined) {
      problems.push(`message ${message} is gone from the proto`);
      continue;
    }
    const fields = (def.type as { field: { name: string }[] }).field.map((f) => f.name);
    const knownCamel = Object.fromEntries(Object.entries(known).map(([k, v]) => [camel(k), v]));
    for (const f of fields) {
      if (!(f in knownCamel))
        problems.push(`${message}.${f} is new: handle it in the SDK, or list it here with why not`);
    }
    for (const f of Object.keys(knownCamel)) {
      if (!fields.includes(f)) problems.push(`${message}.${f} is gone from the proto`);
    }
  }
  assert.deepEqual(problems, []);
});

test("every RPC of the Broker and Worker services is wrapped", () => {
  const { definition } = protocol();
  const broker = Object.keys(definition["baton.v1.Broker"] as object).filter((k) => /^[A-Z]/.test(k));
  assert.deepEqual(broker.sort(), Object.keys(BROKER_RPCS).sort());
  const worker = Object.keys(definition["baton.v1.Worker"] as object).filter((k) => /^[A-Z]/.test(k));
  assert.deepEqual(new Set(worker), WORKER_RPCS);
});

test("the run-time loader and the type generator agree on the shape of messages", () => {
  const gen = readFileSync(join(PACKAGE, "scripts", "gen.mjs"), "utf8");
  assert.equal(LOADER_OPTIONS.keepCase, false);
  assert.ok(!gen.includes("--keepCase"));
  assert.equal(LOADER_OPTIONS.longs, Number);
  assert.ok(gen.includes('"--longs=Number"'));
  assert.equal(LOADER_OPTIONS.enums, String);
  assert.ok(gen.includes('"--enums=String"'));
  assert.equal(LOADER_OPTIONS.defaults, true);
  assert.ok(gen.includes('"--defaults"'));
  assert.equal(LOADER_OPTIONS.oneofs, true);
  assert.ok(gen.includes('"--oneofs"'));
});

test("the package ships the repository's proto, byte for byte", () => {
  const shipped = readFileSync(join(PACKAGE, "proto", "baton", "v1", "baton.proto"), "utf8");
  const source = readFileSync(join(PACKAGE, "..", "..", "proto", "baton", "v1", "baton.proto"), "utf8");
  assert.equal(shipped, source);
});
