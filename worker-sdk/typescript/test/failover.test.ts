/**
 * Several brokers (docs/deployment.md, "How clients find the leader"): the
 * rotation alone, then clients and workers against the real broker, a
 * closed port, and fake standbys (a gRPC server here answering every
 * Broker, Worker and Admin call as a standby does).
 */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import * as grpc from "@grpc/grpc-js";
import { Brokers, elsewhere, NO_REFUSAL, type Refusal, refusalOf, splitAddrs } from "../src/failover";
import { Baton } from "../src/index";
import { protocol } from "../src/proto";
import * as tasks from "./fixtures/tasks";
import { freePort, Scope, SKIP, waitUntil } from "./harness";

function standby(leader?: string): Refusal {
  return { standby: true, leader };
}

test("lists split on commas and ignore blanks; an empty list is refused", () => {
  assert.deepEqual(splitAddrs(" a:1, b:2 ,,"), ["a:1", "b:2"]);
  assert.deepEqual(splitAddrs(" , "), []);
  assert.throws(() => new Brokers([]), TypeError);
  assert.throws(() => new Baton(" , "), TypeError);
  assert.equal(new Baton("a:1, b:2").address, "a:1, b:2");
  const saved = process.env.BATON_ADDR;
  try {
    process.env.BATON_ADDR = "a:1, b:2";
    assert.deepEqual(new Baton().client.brokers.list, ["a:1", "b:2"]);
  } finally {
    if (saved === undefined) delete process.env.BATON_ADDR;
    else process.env.BATON_ADDR = saved;
  }
});

test("down brokers are skipped and a round ends with a pause", () => {
  const b = Brokers.parse("a:1,b:2,c:3");
  assert.equal(b.current, "a:1");
  assert.deepEqual(b.failed(NO_REFUSAL), { kind: "now" });
  assert.equal(b.current, "b:2");
  assert.deepEqual(b.failed(NO_REFUSAL), { kind: "now" });
  assert.equal(b.current, "c:3");
  assert.deepEqual(b.failed(NO_REFUSAL), { kind: "pause", standby: false });
  assert.equal(b.current, "a:1");
});

test("a success keeps the address and starts a new round", () => {
  const b = Brokers.parse("a:1,b:2");
  b.failed(NO_REFUSAL);
  b.succeeded();
  assert.equal(b.current, "b:2");
  // b:2 fails: a:1 was tried in the earlier round only, so it is next.
  assert.deepEqual(b.failed(NO_REFUSAL), { kind: "now" });
  assert.equal(b.current, "a:1");
});

test("a standby sends the client to the leader, even outside the list", () => {
  const b = Brokers.parse("a:1,b:2");
  assert.deepEqual(b.failed(standby("z:9")), { kind: "now" });
  assert.equal(b.current, "z:9");
  b.succeeded();
  assert.equal(b.current, "z:9");
  // The leader dies: z refuses, then the list, where a standby still names
  // the dead leader (already tried): the round ends.
  assert.deepEqual(b.failed(NO_REFUSAL), { kind: "now" });
  assert.equal(b.current, "a:1");
  assert.deepEqual(b.failed(standby("z:9")), { kind: "now" });
  assert.equal(b.current, "b:2");
  assert.deepEqual(b.failed(standby()), { kind: "pause", standby: true });
  // A round of standbys alone: after it, a round of nothing.
  assert.deepEqual(b.failed(NO_REFUSAL), { kind: "now" });
  assert.deepEqual(b.failed(NO_REFUSAL), { kind: "pause", standby: false });
});

function refusal(leader?: string): grpc.ServiceError {
  const metadata = new grpc.Metadata();
  metadata.set("baton-standby", "1");
  if (leader !== undefined) metadata.set("baton-leader", leader);
  const details = `this broker is a standby; ${leader ? `the leader is at ${leader}` : "no leader is known yet"}`;
  return Object.assign(new Error(details), { code: grpc.status.UNAVAILABLE, details, metadata });
}

test("a standby's trailers are read; which failures go elsewhere", () => {
  assert.deepEqual(refusalOf(refusal("h:7070")), standby("h:7070"));
  assert.deepEqual(refusalOf(refusal()), standby());
  assert.deepEqual(refusalOf(new Error("down")), NO_REFUSAL);
  const unreachable = Object.assign(new Error("x"), {
    code: grpc.status.UNAVAILABLE,
    details: "No connection established. Last error: connect ECONNREFUSED 127.0.0.1:1",
    metadata: new grpc.Metadata(),
  });
  const broken = Object.assign(new Error("x"), {
    code: grpc.status.UNAVAILABLE,
    details: "Connection dropped",
    metadata: new grpc.Metadata(),
  });
  const invalid = Object.assign(refusal(), { code: grpc.status.INVALID_ARGUMENT });
  assert.equal(elsewhere(refusal()), true);
  assert.equal(elsewhere(unreachable), true);
  assert.equal(elsewhere(broken), false, "a call cut off mid-way may have been carried out");
  assert.equal(elsewhere(invalid), false);
});

/** A gRPC server answering every Broker, Worker and Admin call as a standby, naming `leader` if given. */
class FakeStandby {
  /** The methods called, in order. */
  readonly calls: string[] = [];
  private constructor(
    private readonly server: grpc.Server,
    readonly address: string,
  ) {}

  static async start(leader?: string): Promise<FakeStandby> {
    const server = new grpc.Server();
    const fake = new FakeStandby(server, `127.0.0.1:${await freePort()}`);
    const v1 = protocol().grpcObject.baton.v1;
    for (const service of [v1.Broker.service, v1.Worker.service, v1.Admin.service]) {
      const handlers: grpc.UntypedServiceImplementation = {};
      for (const [name, method] of Object.entries(service)) {
        handlers[name] = (
          call: grpc.ServerWritableStream<unknown, unknown>,
          callback?: grpc.sendUnaryData<unknown>,
        ) => {
          fake.calls.push(name);
          const { code, details, metadata } = refusal(leader);
          const status = { code, details, metadata };
          if (method.responseStream) call.emit("error", status);
          else callback?.(status);
        };
      }
      server.addService(service, handlers);
    }
    await new Promise<void>((resolve, reject) =>
      server.bindAsync(fake.address, grpc.ServerCredentials.createInsecure(), (err) => (err ? reject(err) : resolve())),
    );
    return fake;
  }

  stop(): void {
    this.server.forceShutdown();
  }
}

describe("several brokers", { skip: SKIP }, () => {
  test("a closed port first: submissions and a worker go to the live broker", { timeout: 60_000 }, async (t) => {
    const scope = Scope.open(t);
    const broker = await scope.broker();
    const list = `127.0.0.1:${await freePort()},${broker.address}`;
    tasks.app.address = list;
    t.after(() => tasks.app.close());
    const worker = await scope.worker(broker, { name: "listed", address: list });
    const handle = await tasks.add.delay(40, 2);
    assert.equal(await handle.get({ timeout: 20_000 }), 42);
    assert.equal(tasks.app.client.brokers.current, broker.address);
    assert.match(worker.log(), /could not connect to 127\.0\.0\.1:\d+ .*\n(.*\n)*.*connected as/);
    // Brokers that are simply down: one round, and the call fails at once.
    const down = new Baton(`127.0.0.1:${await freePort()},127.0.0.1:${await freePort()}`, { timeout: 10_000 });
    t.after(() => down.close());
    const started = Date.now();
    await assert.rejects(down.client.listQueues(), (err: grpc.ServiceError) => err.code === grpc.status.UNAVAILABLE);
    assert.ok(Date.now() - started < 5_000, `a round of closed ports took ${Date.now() - started} ms`);
  });

  test("a standby alone in the list: the leader it names is followed", { timeout: 60_000 }, async (t) => {
    const scope = Scope.open(t);
    const broker = await scope.broker();
    const fake = await FakeStandby.start(broker.address);
    t.after(() => fake.stop());
    tasks.app.address = fake.address;
    t.after(() => tasks.app.close());
    await scope.worker(broker, { name: "follower", address: fake.address });
    assert.ok(fake.calls.includes("Session"), "the worker asked the standby first");
    const handle = await tasks.add.delay(1, 2);
    assert.equal(fake.calls.filter((c) => c === "SubmitChain").length, 1);
    assert.equal(await handle.get({ timeout: 20_000 }), 3);
    // An Admin call too, from a client that has not met the leader yet.
    const admin = new Baton(fake.address, { timeout: 5_000 });
    t.after(() => admin.close());
    const workers = await admin.client.listWorkers();
    assert.ok(workers.some((w) => w.workerName === "follower"));
    assert.ok(fake.calls.includes("ListWorkers"));
  });

  test("a standby that knows no leader, then the leader: the list is followed", { timeout: 60_000 }, async (t) => {
    const scope = Scope.open(t);
    const broker = await scope.broker();
    const fake = await FakeStandby.start();
    t.after(() => fake.stop());
    const list = `${fake.address},${broker.address}`;
    tasks.app.address = list;
    t.after(() => tasks.app.close());
    await scope.worker(broker, { name: "second", address: list });
    const handle = await tasks.add.delay(2, 2);
    assert.equal(await handle.get({ timeout: 20_000 }), 4);
    assert.ok(fake.calls.includes("Session"));
    assert.ok(fake.calls.includes("SubmitChain"));
    // A client whose every address refuses (no leader known) gives up after its round budget.
    const stuck = new Baton(fake.address, { timeout: 5_000 });
    t.after(() => stuck.close());
    const started = Date.now();
    await assert.rejects(stuck.client.listQueues(), (err: grpc.ServiceError) => {
      assert.equal(err.code, grpc.status.UNAVAILABLE);
      assert.match(err.details, /standby/);
      return true;
    });
    assert.ok(Date.now() - started >= 29_000, "standbys are asked for 30 s");
  });

  test("a worker follows its run to the broker that takes over", { timeout: 60_000 }, async (t) => {
    const scope = Scope.open(t);
    // A lease long enough for the takeover: the worker must come back within it.
    const a = await scope.broker({ leaseMs: 6000 });
    const bAddress = `127.0.0.1:${await freePort()}`;
    const list = `${a.address},${bAddress}`;
    tasks.app.address = list;
    t.after(() => tasks.app.close());
    const worker = await scope.worker(a, { name: "mover", address: list });
    const handle = await tasks.nap.delay("failover", 2000);
    await scope.waitForEvents("nap_start", 1, 10_000, { key: "failover" });

    await a.kill();
    const b = await scope.broker({ leaseMs: 6000, dataDir: a.dataDir, address: bAddress });
    await waitUntil(
      async () => (await b.workers()).some((w) => w.workerName === "mover"),
      20_000,
      "the worker on broker B",
    );
    assert.equal(await handle.get({ timeout: 20_000 }), "failover");
    const starts = scope.events("nap_start").filter((e) => e.key === "failover");
    assert.equal(starts.length, 1, "the run was not redelivered");
    assert.equal((await handle.info()).steps[0]?.attempts, 1);
    assert.match(worker.log(), /connection lost to 127\.0\.0\.1/);
    assert.equal(tasks.app.client.brokers.current, bAddress);
  });
});
