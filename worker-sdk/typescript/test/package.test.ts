/**
 * The package as a user gets it: `npm pack`'s file list, `require` and
 * `import` of the package name (one copy of the SDK behind both), and the
 * `baton` bin running an ESM task module against the real broker.
 */
import assert from "node:assert/strict";
import { execFileSync, spawn } from "node:child_process";
import { mkdirSync, symlinkSync } from "node:fs";
import { join } from "node:path";
import { describe, test } from "node:test";
import { Baton } from "../src/index";
import { PACKAGE, Scope, SKIP, waitUntil } from "./harness";

test("npm pack ships the build, the types and the proto, not the sources or tests", () => {
  const out = execFileSync("npm", ["pack", "--dry-run", "--json", "--ignore-scripts"], {
    cwd: PACKAGE,
    encoding: "utf8",
  });
  const files = (JSON.parse(out) as { files: { path: string }[] }[])[0]?.files.map((f) => f.path) ?? [];
  for (const f of [
    "dist/cjs/index.js",
    "dist/cjs/index.d.ts",
    "dist/cjs/cli.js",
    "dist/esm/index.mjs",
    "dist/esm/index.d.mts",
    "proto/baton/v1/baton.proto",
    "package.json",
    "README.md",
  ]) {
    assert.ok(files.includes(f), `${f} missing from the package`);
  }
  assert.ok(!files.some((f) => f.startsWith("src/") || f.startsWith("test/") || f.startsWith("build/")));
});

describe("the installed package", { skip: SKIP }, () => {
  test("ESM and CommonJS entry points share one SDK; the bin runs an ESM app module", async (t) => {
    const scope = Scope.open(t);
    // A project with the package installed as node_modules/@baton/sdk.
    const project = join(scope.dir, "project");
    mkdirSync(join(project, "node_modules", "@baton"), { recursive: true });
    symlinkSync(PACKAGE, join(project, "node_modules", "@baton", "sdk"), "dir");
    const check = scope.file(
      "project/check.mjs",
      `import { createRequire } from "node:module";
import * as esm from "@baton/sdk";
const cjs = createRequire(import.meta.url)("@baton/sdk");
if (esm.Baton !== cjs.Baton || esm.chain !== cjs.chain) throw new Error("two copies of the SDK");
console.log(Object.keys(esm).sort().join(","));
`,
    );
    const exported = execFileSync(process.execPath, [check], { cwd: project, encoding: "utf8" });
    for (const name of ["Baton", "chain", "Retry", "Fatal", "ChainFailed", "Worker"]) {
      assert.ok(exported.split(",").includes(name), exported);
    }

    const tasks = scope.file(
      "project/tasks.mjs",
      `import { Baton } from "@baton/sdk";
export const app = new Baton();
export const hello = app.task({ name: "esm.hello" }, async (ctx, who) => \`hello \${who} from \${ctx.queue}\`);
`,
    );
    const broker = await scope.broker();
    const bin = join(PACKAGE, "dist", "cjs", "cli.js");
    const worker = spawn(process.execPath, [bin, "worker", "--app", tasks, "--broker", broker.address, "-n", "esm-w"], {
      cwd: project,
      stdio: "ignore",
    });
    t.after(() => {
      if (worker.exitCode === null) worker.kill("SIGKILL");
    });
    await waitUntil(async () => (await broker.workers()).some((w) => w.workerName === "esm-w"), 20_000, "esm-w");
    const app = new Baton(broker.address);
    t.after(() => app.close());
    const handle = await app.signature("esm.hello", ["ts"], { immutable: true }).delay();
    assert.equal(await handle.get({ timeout: 10_000 }), "hello ts from general");
  });
});
