/**
 * Helpers of the tests against the real broker.
 *
 * - The broker is `$BATON_BIN`, else `target/debug/baton` of this
 *   repository. When it is missing the tests are skipped, unless `$CI` or
 *   `$BATON_REQUIRE_BROKER` is set, which makes them fail.
 * - Each test starts its own broker on a free loopback port (found by
 *   binding port 0) with a temporary data directory and a short lease.
 *   Readiness is a gRPC call that succeeds, not a sleep.
 * - Workers are `node build/src/cli.js worker` processes running
 *   `fixtures/tasks.ts`, so a test can SIGKILL a real process by its pid.
 *   Tests end only the processes they started, by pid.
 */
import { type ChildProcess, spawn } from "node:child_process";
import {
  appendFileSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import type { TestContext } from "node:test";
import type { WorkerInfo__Output } from "../src/gen/baton/v1/index";
import { Baton, type BatonOptions } from "../src/index";

/** The package's root (build/test/ is two levels below). */
export const PACKAGE = resolve(__dirname, "..", "..");
export const REPO = resolve(PACKAGE, "..", "..");
export const CLI = join(PACKAGE, "build", "src", "cli.js");
export const TASKS = join(PACKAGE, "build", "test", "fixtures", "tasks.js");
export const LEASE_MS = 2000;

function findBroker(): { path: string; skip: string | false } {
  const path = process.env.BATON_BIN || join(REPO, "target", "debug", "baton");
  if (existsSync(path)) return { path, skip: false };
  const message = `baton broker binary not found at ${path} (build it with \`cargo build -p baton-server\`, or set BATON_BIN)`;
  if (process.env.CI || process.env.BATON_REQUIRE_BROKER) throw new Error(message);
  return { path, skip: message };
}

const BROKER = findBroker();
/** `describe(name, { skip: SKIP }, ...)`: a reason to skip when there is no broker binary. */
export const SKIP: string | false = BROKER.skip;

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Polls `predicate` until it returns a truthy value; throws after `timeout` ms. */
export async function waitUntil<T>(
  predicate: () => T | Promise<T>,
  timeout: number,
  what: string,
): Promise<NonNullable<T>> {
  const deadline = Date.now() + timeout;
  for (;;) {
    const value = await predicate();
    if (value) return value as NonNullable<T>;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeout} ms waiting for ${what}`);
    await sleep(50);
  }
}

export function freePort(): Promise<number> {
  return new Promise((resolvePort, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const address = server.address();
      server.close(() => resolvePort(typeof address === "object" && address ? address.port : 0));
    });
  });
}

function exited(proc: ChildProcess): Promise<number | null> {
  if (proc.exitCode !== null || proc.signalCode !== null) return Promise.resolve(proc.exitCode);
  return new Promise((r) => proc.once("exit", (code) => r(code)));
}

/** Everything a test started, ended by pid when it ends. */
export class Scope {
  readonly dir: string;
  private readonly cleanups: (() => Promise<void>)[] = [];
  private readonly binary: string;
  private readonly eventsPath: string;

  private constructor(binary: string) {
    this.binary = binary;
    this.dir = mkdtempSync(join(tmpdir(), "baton-ts-"));
    this.eventsPath = join(this.dir, "events.jsonl");
    writeFileSync(this.eventsPath, "");
  }

  /** A scope closed after test `t`. */
  static open(t: TestContext): Scope {
    const scope = new Scope(BROKER.path);
    t.after(() => scope.close());
    return scope;
  }

  /** A scope the caller closes (for a suite's `before`/`after`). */
  static create(): Scope {
    return new Scope(BROKER.path);
  }

  async close(): Promise<void> {
    for (const cleanup of this.cleanups.reverse()) await cleanup();
    if (!process.env.BATON_KEEP_TMP) rmSync(this.dir, { recursive: true, force: true });
  }

  /** Starts a broker: on a free port unless `address` is given, on a data directory of its own unless `dataDir` is. */
  async broker(options: BrokerSpec = {}): Promise<Broker> {
    const dataDir = options.dataDir ?? join(this.dir, `data${this.cleanups.length}`);
    const broker = new Broker(this.binary, dataDir, this.dir, options);
    this.cleanups.push(() => broker.stop());
    await broker.start();
    return broker;
  }

  /** Starts a worker process on `fixtures/tasks` and waits until the broker lists it. */
  async worker(broker: Broker, options: WorkerSpec = {}): Promise<WorkerProcess> {
    const name = options.name ?? `w${this.cleanups.length}-${(options.queues ?? ["general"]).join("+")}`;
    const logPath = join(this.dir, `${name}.log`);
    const args = [
      CLI,
      "worker",
      "--app",
      options.app ?? TASKS,
      "--broker",
      options.address ?? broker.address,
      "--queues",
      (options.queues ?? ["general"]).join(","),
      "--concurrency",
      String(options.concurrency ?? 1),
      "--name",
      name,
      ...(options.prefetch ? ["--prefetch", String(options.prefetch)] : []),
      ...(options.args ?? []),
    ];
    const out = openSync(logPath, "a");
    const proc = spawn(process.execPath, args, {
      stdio: ["ignore", out, out],
      env: { ...process.env, BATON_TEST_EVENTS: this.eventsPath, BATON_TEST_WORKER: name, ...(options.env ?? {}) },
    });
    const worker = new WorkerProcess(proc, name, logPath);
    this.cleanups.push(async () => {
      if (proc.exitCode === null && proc.signalCode === null) {
        proc.kill("SIGKILL"); // only the process this test started, by pid
        await exited(proc);
      }
      if (process.env.BATON_TEST_VERBOSE) process.stderr.write(`--- ${name} ---\n${worker.log()}\n`);
    });
    if (options.wait ?? true) {
      await waitUntil(
        async () => {
          if (proc.exitCode !== null) throw new Error(`worker ${name} exited with ${proc.exitCode}:\n${worker.log()}`);
          return (await broker.workers()).some((w) => w.workerName === name);
        },
        20_000,
        `worker ${name} to register`,
      );
    }
    return worker;
  }

  /** The JSON lines the fixture tasks append (see fixtures/tasks.ts `record`). */
  events(kind?: string): Event[] {
    const lines = readFileSync(this.eventsPath, "utf8").split("\n").filter(Boolean);
    const all = lines.map((l) => JSON.parse(l) as Event);
    return kind === undefined ? all : all.filter((e) => e.event === kind);
  }

  async waitForEvents(kind: string, count: number, timeout = 20_000, match: Partial<Event> = {}): Promise<Event[]> {
    return waitUntil(
      () => {
        const hits = this.events(kind).filter((e) => Object.entries(match).every(([k, v]) => e[k] === v));
        return hits.length >= count ? hits : undefined;
      },
      timeout,
      `${count} x ${kind} ${JSON.stringify(match)}`,
    );
  }

  /** A file in the scope's directory. */
  file(name: string, content: string): string {
    const path = join(this.dir, name);
    mkdirSync(join(path, ".."), { recursive: true });
    writeFileSync(path, content);
    return path;
  }
}

export interface Event {
  event: string;
  t: number;
  worker?: string;
  [key: string]: unknown;
}

export interface BrokerSpec {
  leaseMs?: number;
  args?: string[];
  token?: string;
  tls?: BatonOptions["tls"];
  /** The data directory (another broker's, to take over from it); default a new one. */
  dataDir?: string;
  /** `host:port` to listen on; default a free loopback port. */
  address?: string;
}

export interface WorkerSpec {
  /** The worker's `--broker` (an address list); default the broker's address. */
  address?: string;
  queues?: string[];
  concurrency?: number;
  prefetch?: number;
  name?: string;
  args?: string[];
  env?: Record<string, string>;
  app?: string;
  /** Wait until the broker lists the worker (default true). */
  wait?: boolean;
}

export class WorkerProcess {
  constructor(
    readonly proc: ChildProcess,
    readonly name: string,
    readonly logPath: string,
  ) {}

  get pid(): number {
    return this.proc.pid ?? -1;
  }

  signal(sig: NodeJS.Signals): void {
    this.proc.kill(sig);
  }

  exited(): Promise<number | null> {
    return exited(this.proc);
  }

  log(): string {
    return existsSync(this.logPath) ? readFileSync(this.logPath, "utf8").slice(-8000) : "";
  }
}

/** A `baton serve` process on a free port; restartable on the same port and data. */
export class Broker {
  address = "";
  readonly leaseMs: number;
  private proc: ChildProcess | undefined;
  private readonly logPath: string;
  private readonly args: string[];
  /** A client app on this broker (also for Admin calls). */
  readonly app: Baton;

  constructor(
    private readonly binary: string,
    readonly dataDir: string,
    dir: string,
    options: BrokerSpec,
  ) {
    this.address = options.address ?? "";
    this.leaseMs = options.leaseMs ?? LEASE_MS;
    this.logPath = join(dir, `broker-${Math.random().toString(36).slice(2, 8)}.log`);
    this.args = options.args ?? [];
    const appOptions: BatonOptions = { timeout: 10_000 };
    if (options.token !== undefined) appOptions.token = options.token;
    if (options.tls !== undefined) appOptions.tls = options.tls;
    this.app = new Baton(this.address || "127.0.0.1:1", appOptions);
  }

  async start(): Promise<void> {
    if (this.address === "") {
      this.address = `127.0.0.1:${await freePort()}`;
      this.app.address = this.address;
    }
    appendFileSync(this.logPath, `--- start ${new Date().toISOString()}\n`);
    const out = openSync(this.logPath, "a");
    const proc = spawn(
      this.binary,
      ["serve", "--listen", this.address, "--data", this.dataDir, "--lease-ms", String(this.leaseMs), ...this.args],
      { stdio: ["ignore", out, out] },
    );
    this.proc = proc;
    await waitUntil(
      async () => {
        if (proc.exitCode !== null) throw new Error(`broker exited with ${proc.exitCode}:\n${this.log()}`);
        try {
          await this.app.client.call(this.app.admin, this.app.admin.ListQueues.bind(this.app.admin), {}, 500);
          return true;
        } catch {
          return false;
        }
      },
      20_000,
      `the broker on ${this.address}`,
    );
  }

  /** SIGKILL (a crash). */
  async kill(): Promise<void> {
    if (this.proc && this.proc.exitCode === null && this.proc.signalCode === null) {
      this.proc.kill("SIGKILL");
      await exited(this.proc);
    }
  }

  async stop(): Promise<void> {
    const proc = this.proc;
    if (proc && proc.exitCode === null && proc.signalCode === null) {
      proc.kill("SIGTERM");
      const timer = setTimeout(() => proc.kill("SIGKILL"), 5000);
      await exited(proc);
      clearTimeout(timer);
    }
    this.app.close();
  }

  async workers(): Promise<WorkerInfo__Output[]> {
    return this.app.client.listWorkers();
  }

  log(): string {
    return existsSync(this.logPath) ? readFileSync(this.logPath, "utf8").slice(-8000) : "";
  }
}
