/**
 * The README's demo, as a user runs it: its tsconfig.json, tasks.ts and
 * demo.ts compiled with tsc in a fresh project that has the package
 * installed, two workers (general and heavy) started with the package's
 * `baton` bin, and demo.js run against the real broker.
 */
import assert from "node:assert/strict";
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { mkdirSync, openSync, readFileSync, symlinkSync } from "node:fs";
import { join } from "node:path";
import { describe, test } from "node:test";
import { PACKAGE, Scope, SKIP, waitUntil } from "./harness";

/** The fenced block that follows the first mention of `name` as the file to save. */
function block(readme: string, name: string): string {
  const at = readme.indexOf(`as \`${name}\``);
  assert.ok(at >= 0, `the README names no ${name}`);
  const match = /```\w*\n([\s\S]*?)```/.exec(readme.slice(at));
  assert.ok(match?.[1], `no code block after ${name}`);
  return match[1];
}

describe("README", { skip: SKIP }, () => {
  test("the seed's demo in the README runs as written", async (t) => {
    const scope = Scope.open(t);
    const readme = readFileSync(join(PACKAGE, "README.md"), "utf8");
    const project = join(scope.dir, "project");
    for (const name of ["tsconfig.json", "tasks.ts", "demo.ts"]) scope.file(`project/${name}`, block(readme, name));
    mkdirSync(join(project, "node_modules", "@baton"), { recursive: true });
    mkdirSync(join(project, "node_modules", "@types"), { recursive: true });
    symlinkSync(PACKAGE, join(project, "node_modules", "@baton", "sdk"), "dir");
    symlinkSync(join(PACKAGE, "node_modules", "typescript"), join(project, "node_modules", "typescript"), "dir");
    symlinkSync(
      join(PACKAGE, "node_modules", "@types", "node"),
      join(project, "node_modules", "@types", "node"),
      "dir",
    );
    execFileSync(process.execPath, [join(project, "node_modules", "typescript", "bin", "tsc")], {
      cwd: project,
      stdio: "pipe",
    });

    const broker = await scope.broker();
    const env = { ...process.env, BATON_ADDR: broker.address };
    const bin = join(PACKAGE, "dist", "cjs", "cli.js");
    const procs: ChildProcess[] = [];
    t.after(() => {
      for (const p of procs) if (p.exitCode === null && p.signalCode === null) p.kill("SIGKILL");
    });
    const startWorker = (name: string, args: string[]) => {
      const out = join(scope.dir, `${name}.out`);
      const p = spawn(process.execPath, [bin, "worker", "--app", "./tasks.js", ...args, "-n", name], {
        cwd: project,
        env,
        stdio: ["ignore", openSync(out, "w"), openSync(join(scope.dir, `${name}.err`), "w")],
      });
      procs.push(p);
      return () => readFileSync(out, "utf8");
    };
    const general = startWorker("general", ["--queues", "general", "--concurrency", "4"]);
    const heavy = startWorker("heavy", ["--queues", "heavy", "--concurrency", "1"]);
    await waitUntil(async () => (await broker.workers()).length === 2, 20_000, "both workers");

    const demo = execFileSync(process.execPath, ["demo.js"], { cwd: project, env, encoding: "utf8", timeout: 90_000 });
    assert.match(demo, /vm 13: vm\.provision failed after 3 attempts/);
    assert.match(demo, /all done/);

    const lines = general()
      .split("\n")
      .filter((l) => l.startsWith("** "));
    const seed = lines.filter((l) => / 10$/.test(l));
    assert.equal(seed[0], "** Start 10");
    assert.equal(seed[1], "** End 10");
    assert.deepEqual([...seed.slice(2, 4)].sort(), ["** Fast 10", "** Start 10"]);
    assert.deepEqual(seed.slice(4), ["** End 10", "** Fast 10"]);
    assert.deepEqual(lines.filter((l) => l.startsWith("** Dangerous")).sort(), [
      "** Dangerous 0",
      "** Dangerous 1",
      "** Dangerous 2",
    ]);
    assert.ok(!lines.some((l) => l.startsWith("** Heavy")));
    assert.match(heavy(), /^\*\* Heavy 1$/m);
    assert.ok(lines.includes("** vm 1 ok at vm-1.internal"), lines.join("\n"));
    assert.ok(lines.includes("** vm 13 erred: ProvisionError: no capacity for vm 13 (attempt 3)"), lines.join("\n"));
  });
});
