/**
 * The TypeScript conformance worker and client (tests/conformance/typescript)
 * against the real broker: compiled with this package's tsc, the worker
 * started with the package's bin on "general" and "heavy", the client run
 * to the end.
 */
import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import { join } from "node:path";
import { describe, test } from "node:test";
import { PACKAGE, REPO, Scope, SKIP } from "./harness";

const DIR = join(REPO, "tests", "conformance", "typescript");

describe("conformance", { skip: SKIP }, () => {
  test("the conformance client passes every case against the conformance worker", async (t) => {
    const scope = Scope.open(t);
    execFileSync(process.execPath, [join(PACKAGE, "node_modules", "typescript", "bin", "tsc"), "-p", DIR], {
      stdio: "pipe",
    });
    const broker = await scope.broker();
    const worker = await scope.worker(broker, {
      name: "conformance",
      app: join(DIR, "tasks.js"),
      queues: ["general", "heavy"],
      concurrency: 4,
    });
    const client = spawnSync(process.execPath, [join(DIR, "client.js")], {
      env: { ...process.env, BATON_ADDR: broker.address },
      encoding: "utf8",
      timeout: 120_000,
    });
    const out = `${client.stdout}${client.stderr}`;
    assert.equal(client.status, 0, `${out}\n--- worker ---\n${worker.log()}`);
    for (const name of [
      "noop",
      "echo",
      "add",
      "fail_once",
      "fail_always",
      "retry_later_n",
      "sleep",
      "throttled_in_body",
      "throttled_declared",
      "heavy",
      "cancellable",
    ]) {
      assert.match(out, new RegExp(`^ok ${name}$`, "m"));
    }
    assert.match(out, /^conformance: 11 passed, 0 failed$/m);
  });
});
