// The dashboard in a real browser (Debian's Chromium, driven by
// playwright-core) against a real broker (target/debug/baton, token
// authentication on) with two real workers (examples/dashboard_worker.rs).
// Each action on a page is checked at the broker through the JSON API; a
// screenshot of every page is saved to $ARTIFACTS. Run by run.sh.
//
// Everything listens on 127.0.0.1; the processes started here are ended
// by their PIDs.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import crypto from "node:crypto";
import fs from "node:fs";
import https from "node:https";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { chromium } from "playwright-core";
import selfsigned from "selfsigned";

const ROOT = path.resolve(import.meta.dirname, "../..");
const BATON = process.env.BATON_BIN || `${ROOT}/target/debug/baton`;
const WORKER = process.env.WORKER_BIN || `${ROOT}/target/debug/examples/dashboard_worker`;
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const ARTIFACTS = process.env.ARTIFACTS || `${ROOT}/target/browser-artifacts`;
const PATIENCE = 30_000;

const SECRETS = { admin: "baton_test_admin_secret", client: "baton_test_client_secret", worker: "baton_test_worker_secret" };
const sha256 = (s) => crypto.createHash("sha256").update(s).digest("hex");

const children = [];
let dir, http, grpc, browser;

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.listen(0, "127.0.0.1", () => { const { port } = srv.address(); srv.close(() => resolve(port)); });
    srv.on("error", reject);
  });
}

function start(name, cmd, args, env = {}) {
  const log = fs.openSync(path.join(ARTIFACTS, `${name}.log`), "w");
  const child = spawn(cmd, args, { env: { ...process.env, ...env }, stdio: ["ignore", log, log] });
  children.push(child);
  return child;
}

async function until(what, f, timeout = PATIENCE) {
  const end = Date.now() + timeout;
  let last;
  while (Date.now() < end) {
    try { const v = await f(); if (v) return v; } catch (e) { last = e; }
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error(`timed out waiting for ${what}${last ? `: ${last.message}` : ""}`);
}

/** The JSON API as an admin (or with `secret`, or none). */
async function api(method, p, body, secret = SECRETS.admin) {
  const headers = { "content-type": "application/json" };
  if (secret) headers.authorization = `Bearer ${secret}`;
  const res = await fetch(`${http}${p}`, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await res.text();
  let data;
  try { data = JSON.parse(text); } catch { data = text; }
  return { status: res.status, data };
}

const sig = (name, args, options) => ({ name, args, immutable: true, ...(options ? { options } : {}) });

before(async () => {
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  dir = fs.mkdtempSync(path.join(os.tmpdir(), "baton-browser-"));
  const tokens = path.join(dir, "tokens.toml");
  fs.writeFileSync(tokens, [
    `[[token]]\nname = "ops"\nrole = "admin"\nsha256 = "${sha256(SECRETS.admin)}"\n`,
    `[[token]]\nname = "app"\nrole = "client"\nsha256 = "${sha256(SECRETS.client)}"\n`,
    `[[token]]\nname = "workers"\nrole = "worker"\nsha256 = "${sha256(SECRETS.worker)}"\nqueues = ["*"]\n`,
  ].join("\n"));
  const [g, h] = [await freePort(), await freePort()];
  grpc = `127.0.0.1:${g}`;
  http = `http://127.0.0.1:${h}`;
  start("broker", BATON, ["serve", "--listen", grpc, "--http", `127.0.0.1:${h}`, "--data", path.join(dir, "data"), "--tokens", tokens]);
  await until("the broker's /healthz", async () => (await fetch(`${http}/healthz`)).ok);
  for (const name of ["dash-1", "dash-2"]) {
    start(`worker-${name}`, WORKER, [grpc, "--name", name, "--concurrency", "4"],
      { BATON_TOKEN: SECRETS.worker, BATON_DEMO_SLOW_MS: "3000" });
  }
  await until("two workers", async () => (await api("GET", "/api/v1/workers")).data.workers?.length === 2);
  browser = await chromium.launch({ executablePath: CHROMIUM, args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"] });
});

after(async () => {
  if (browser) await browser.close();
  for (const child of children.reverse()) {
    if (child.exitCode === null) {
      child.kill("SIGTERM");
      await new Promise((r) => { const t = setTimeout(() => { child.kill("SIGKILL"); r(); }, 10_000); child.once("exit", () => { clearTimeout(t); r(); }); });
    }
  }
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

const shot = (page, name) => page.screenshot({ path: path.join(ARTIFACTS, `${name}.png`), fullPage: true });

/** The history list's lines as "kind task" ("step_started demo.slow"),
 * or the kind alone for the chain's own events. */
function historyOf(lines) {
  return lines.map((line) => {
    const m = line.match(/\b(submitted|requeued|step_\w+|chain_\w+)(?: (\S+) \(\w+(?: \w+)? #\d+\))?/);
    assert.ok(m, `a history line: ${line}`);
    return m[2] ? `${m[1]} ${m[2]}` : m[1];
  });
}

test("without a token only health and the login form are served", async () => {
  assert.equal((await fetch(`${http}/healthz`)).status, 200);
  for (const p of ["/api/v1/queues", "/api/v1/chains?q=x", "/metrics", "/assets/app.js", "/api/v1/overview/events"]) {
    const r = await api("GET", p, undefined, null);
    assert.equal(r.status, 401, p);
    assert.equal(r.data.code, "UNAUTHENTICATED", p);
  }
  const metrics = await fetch(`${http}/metrics`, { headers: { authorization: `Bearer ${SECRETS.admin}` } });
  assert.equal(metrics.status, 200);
  assert.match(await metrics.text(), /baton_workers_connected 2/);
  const client = await api("GET", "/metrics", undefined, SECRETS.client);
  assert.equal(client.status, 403);
  assert.equal(client.data.message, 'token "app" has role client; baton.v1.Admin needs role admin');
});

test("the JSON API answers errors with the gRPC message", async () => {
  const r = await api("POST", "/api/v1/chains", { steps: [] });
  assert.equal(r.status, 400);
  assert.deepEqual(r.data, { code: "INVALID_ARGUMENT", message: "steps is empty: a chain needs at least one step" });
  const missing = await api("GET", "/api/v1/chains/0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b");
  assert.equal(missing.status, 404);
  assert.equal(missing.data.code, "NOT_FOUND");
});

test("an operator watches the demo and a failed executor, and acts on queues, throttles, workers and dead chains", async () => {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  page.setDefaultTimeout(PATIENCE);
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));
  const requests = [];
  page.on("request", (r) => requests.push(r.url()));

  // Login.
  await page.goto(`${http}/`);
  await shot(page, "login");
  await page.getByLabel("Token").fill(SECRETS.admin);
  await page.keyboard.press("Enter");
  await page.getByRole("heading", { name: "Overview" }).waitFor();
  assert.match(await page.locator("#who").textContent(), /ops \(admin\)/);

  // The seed's demo, twice; the failing executor; two provisions behind a
  // declared shared throttle (one holds it, one waits).
  const demo = [];
  for (let i = 0; i < 2; i++) {
    const r = await api("POST", "/api/v1/chains", { steps: [sig("demo.slow", [10]), sig("demo.fast", [10])] });
    assert.equal(r.status, 200, JSON.stringify(r.data));
    demo.push(r.data.chain_id);
  }
  const executor = await api("POST", "/api/v1/chains", {
    steps: [sig("volume.begin_creating", ["vol-1"]), sig("volume.create", ["vol-1"])],
    on_success: [sig("volume.set_ok", ["vol-1"])],
    on_failure: [{ name: "volume.set_erred", args: ["vol-1"] }],
    context: { user: "alice", request_id: "req-42" },
    idempotency_key: "create-vol-1",
  });
  const failed = executor.data.chain_id;
  const throttle = { concurrency: 1, key: "tenant:42", shared: true };
  const vms = [];
  for (const vm of ["vm-a", "vm-b", "vm-c"]) {
    vms.push((await api("POST", "/api/v1/chains", { steps: [sig("vm.provision", [vm, 120_000], { throttle })] })).data.chain_id);
  }

  // Overview, live: the workers, the queue and the throttle at its limit.
  await page.getByText("workers connected").waitFor();
  await until("the general queue on the overview", () => page.getByRole("region", { name: "Queue general" }).isVisible());
  await until("the throttle at its limit", () => page.getByText("(shared) / tenant:42").first().isVisible());
  await shot(page, "overview");

  // The demo chain, live: running, then succeeded, with no reload.
  await page.goto(`${http}/#/chains/${demo[1]}`);
  await page.getByRole("heading", { name: /Chain/ }).waitFor();
  await page.locator("ol.timeline li", { hasText: "demo.slow" }).waitFor();
  await until("the demo's slow step to start", async () => /running|succeeded/.test(await page.locator("ol.timeline li", { hasText: "demo.slow" }).locator(".badge").first().textContent()));
  await shot(page, "chain-running");
  await page.locator("h1 .badge", { hasText: "succeeded" }).waitFor();
  // Its history, from the broker's record, in order.
  const demoHistory = page.getByRole("list", { name: "History of the chain, oldest first" });
  await demoHistory.locator("li", { hasText: "chain_succeeded" }).waitFor();
  assert.deepEqual(historyOf(await demoHistory.locator("li").allTextContents()), [
    "submitted", "step_started demo.slow", "step_succeeded demo.slow",
    "step_started demo.fast", "step_succeeded demo.fast", "chain_succeeded"]);
  assert.match(await demoHistory.locator("li", { hasText: "step_started demo.slow" }).textContent(), /attempt 1 on \S+/);
  await shot(page, "chain-demo");
  assert.equal((await api("GET", `/api/v1/chains/${demo[1]}`)).data.state, "CHAIN_STATE_SUCCEEDED");

  // Per-queue throughput and latency: the feed counts the demo's runs in
  // general, and the overview charts them.
  await until("the general queue's runs in the feed", async () => (await api("GET", "/api/v1/overview")).data.history
    .some((s) => s.queues.some((q) => q.name === "general" && q.started > 0 && q.latency_ms !== null)));
  await page.goto(`${http}/#/overview`);
  await page.getByRole("img", { name: /Queue general: throughput \(per minute\)/ }).waitFor();
  await page.getByRole("img", { name: /Queue general: ready-to-start latency/ }).waitFor();

  // The failed executor: failure record with the full traceback, on_failure ran.
  await page.goto(`${http}/#/chains/${failed}`);
  await page.locator("h1 .badge", { hasText: "failed" }).waitFor();
  const traceback = page.getByRole("region", { name: "Failure record" }).locator("pre.traceback");
  await traceback.waitFor();
  assert.match(await traceback.textContent(), /cinderclient\.exceptions\.OverLimit: VolumeSizeExceedsAvailableQuota/);
  assert.match(await traceback.textContent(), /File "waldur_openstack\/backend\.py", line 812/);
  await page.locator("ol.timeline li", { hasText: "volume.set_erred" }).locator(".badge", { hasText: "succeeded" }).waitFor();
  const failedHistory = page.getByRole("list", { name: "History of the chain, oldest first" });
  await failedHistory.locator("li", { hasText: "chain_failed" }).waitFor();
  assert.deepEqual(historyOf(await failedHistory.locator("li").allTextContents()), [
    "submitted", "step_started volume.begin_creating", "step_succeeded volume.begin_creating",
    "step_started volume.create", "step_failed volume.create",
    "step_started volume.set_erred", "step_succeeded volume.set_erred", "chain_failed"]);
  assert.match(await failedHistory.locator("li", { hasText: "step_failed" }).textContent(), /BackendError: cinder refused to create vol-1/);
  await shot(page, "chain-failed");

  // Chains: the failed list, and a search by idempotency key.
  await page.getByRole("link", { name: "Chains", exact: true }).click();
  await page.getByRole("heading", { name: "Chains" }).waitFor();
  await page.locator(`a[href="#/chains/${failed}"]`).waitFor();
  await page.getByLabel("Chain id or idempotency key").fill("create-vol-1");
  await page.getByRole("button", { name: "Find" }).click();
  await page.getByText("Chains matching “create-vol-1”").waitFor();
  await page.locator(`a[href="#/chains/${failed}"]`).waitFor();
  await shot(page, "chains");
  // Running chains, by state: the provisions wait or run.
  await page.getByLabel("Chain id or idempotency key").fill("");
  await page.getByLabel("State").selectOption("CHAIN_STATE_RUNNING");
  await page.getByRole("button", { name: "Find" }).click();
  await page.locator(`a[href="#/chains/${vms[2]}"]`).waitFor();
  assert.equal(await page.locator(`a[href="#/chains/${failed}"]`).count(), 0, "an ended chain is not running");

  // A group: its members side by side, their chains linked from its step.
  const fan = await api("POST", "/api/v1/chains", {
    steps: [{ members: [sig("demo.fast", [1]), sig("demo.fast", [2])] }],
  });
  assert.equal(fan.status, 200, JSON.stringify(fan.data));
  await page.goto(`${http}/#/chains/${fan.data.chain_id}`);
  await page.locator("h1 .badge", { hasText: "succeeded" }).waitFor();
  const group = page.locator("ol.timeline li", { hasText: "group" });
  await group.getByText("2 of 2 succeeded").waitFor();
  assert.equal(await group.locator("ul.children a").count(), 2);
  await shot(page, "chain-group");
  await group.locator("ul.children a").first().click();
  await page.getByText("Parent").waitFor();

  // Dead chains: requeue the failed executor; the broker has the new chain.
  await page.getByRole("link", { name: "Dead chains", exact: true }).click();
  await page.getByRole("heading", { name: "Dead chains" }).waitFor();
  await shot(page, "dead");
  await page.getByRole("button", { name: `Requeue chain ${failed}` }).click();
  await page.getByText(/Chain requeued as/).waitFor();
  const original = (await api("GET", `/api/v1/chains/${failed}`)).data;
  assert.notEqual(original.requeued_as, "");
  const requeued = (await api("GET", `/api/v1/chains/${original.requeued_as}`)).data;
  assert.equal(requeued.requeued_from, failed);
  // The requeue is the original's last event, naming the new chain.
  assert.deepEqual(original.history.at(-1).kind, "requeued");
  assert.equal(original.history.at(-1).detail, original.requeued_as);
  await until("the requeued chain to fail too (same backend)", async () =>
    (await api("GET", `/api/v1/chains/${original.requeued_as}`)).data.state === "CHAIN_STATE_FAILED");
  // Requeue many: select all, requeue selected.
  await page.reload();
  await page.getByRole("button", { name: `Requeue chain ${original.requeued_as}` }).waitFor();
  await page.getByLabel("Select every chain on this page").check();
  await page.getByRole("button", { name: /Requeue selected \(1\)/ }).click();
  await page.getByText(/1 chains requeued/).waitFor();
  assert.notEqual((await api("GET", `/api/v1/chains/${original.requeued_as}`)).data.requeued_as, "");

  // Throttles: raise the shared key's limit in place, with the keyboard.
  await page.getByRole("link", { name: "Throttles", exact: true }).click();
  const limit = page.getByRole("spinbutton", { name: "Limit of (shared) / tenant:42" });
  await limit.waitFor();
  // Its waiters, in the order they will be served: the two later provisions.
  const waiters = page.getByRole("list", { name: "Waiters of (shared) / tenant:42, in order" });
  await waiters.waitFor();
  await until("both waiters listed", async () => (await waiters.locator("a").count()) === 2);
  assert.deepEqual(await waiters.locator("a").evaluateAll((as) => as.map((a) => a.getAttribute("href"))),
    [`#/chains/${vms[1]}`, `#/chains/${vms[2]}`]);
  await shot(page, "throttles");
  await limit.fill("2");
  await limit.press("Enter");
  await page.getByText("Limit of (shared) / tenant:42 set to 2").waitFor();
  await until("the new limit at the broker", async () => {
    const t = (await api("GET", "/api/v1/throttles")).data.throttles.find((x) => x.identity.key === "tenant:42");
    return t && t.limit === 2 && t.limit_overridden && t.holders.length === 2;
  });

  // A rate alone: the row says no limit at once (never "at its limit") and shows the rate.
  const rate = { key: "cloud-api", shared: true, rate: { count: 1, period_ms: 60_000 } };
  vms.push((await api("POST", "/api/v1/chains", { steps: [sig("vm.provision", ["rated", 120_000], { throttle: rate })] })).data.chain_id);
  await page.getByText("rate 1/m (declared)").waitFor();
  await page.getByText("no limit at once").waitFor();

  await shot(page, "throttles");
  for (const id of vms) await api("POST", `/api/v1/chains/${id}/cancel`, { reason: "end of the test" });

  // Queues: pause, refuse a purge at its confirmation, resume.
  await page.getByRole("link", { name: "Queues", exact: true }).click();
  await page.getByRole("button", { name: "Pause queue general" }).click();
  await until("general paused at the broker", async () =>
    (await api("GET", "/api/v1/queues")).data.queues.find((q) => q.name === "general")?.paused === true);
  await page.getByRole("button", { name: "Resume queue general" }).waitFor();
  await page.getByRole("button", { name: "Purge queue general" }).click();
  await page.getByRole("dialog", { name: "Purge queue general?" }).waitFor();
  await shot(page, "queues-purge-confirm");
  await page.getByRole("button", { name: "Cancel", exact: true }).click();
  await shot(page, "queues");
  await page.getByRole("button", { name: "Resume queue general" }).click();
  await until("general resumed at the broker", async () =>
    (await api("GET", "/api/v1/queues")).data.queues.find((q) => q.name === "general")?.paused !== true);

  // Workers: drain dash-2 through its confirmation.
  await page.getByRole("link", { name: "Workers", exact: true }).click();
  await page.getByRole("button", { name: "Drain worker dash-2" }).click();
  await page.getByRole("dialog", { name: "Drain dash-2?" }).getByRole("button", { name: "Drain" }).click();
  await until("dash-2 draining at the broker", async () =>
    (await api("GET", "/api/v1/workers")).data.workers.find((w) => w.worker_name === "dash-2")?.draining === true);
  await page.locator("tr", { hasText: "dash-2" }).getByText("draining").waitFor();
  await shot(page, "workers");

  // Keyboard: after a page change the focus is on the page's content;
  // from the top, the first Tab reaches the skip link, then the pages.
  await page.getByRole("link", { name: "Overview", exact: true }).click();
  await page.getByRole("heading", { name: "Overview" }).waitFor();
  assert.equal(await page.evaluate(() => document.activeElement.id), "main");
  await page.reload();
  await page.getByRole("heading", { name: "Overview" }).waitFor();
  await page.keyboard.press("Tab");
  assert.equal(await page.evaluate(() => document.activeElement.textContent), "Skip to content");
  await page.keyboard.press("Tab");
  await page.keyboard.press("Tab");
  await page.keyboard.press("Tab");
  assert.equal(await page.evaluate(() => document.activeElement.textContent), "Chains");
  await page.keyboard.press("Enter");
  await page.getByRole("heading", { name: "Chains" }).waitFor();

  // A phone's width: nothing wider than the screen; tables scroll inside.
  await page.setViewportSize({ width: 390, height: 844 });
  for (const [name, hash] of [["overview", "#/overview"], ["chain-failed", `#/chains/${failed}`], ["throttles", "#/throttles"], ["dead", "#/dead"]]) {
    await page.goto(`${http}/${hash}`);
    await page.locator("main h1").waitFor();
    await page.waitForTimeout(500);
    const width = await page.evaluate(() => document.documentElement.scrollWidth);
    assert.ok(width <= 391, `${name} is ${width}px wide at 390px`);
    await shot(page, `phone-${name}`);
  }

  // Nothing was fetched from anywhere but the broker.
  assert.deepEqual(requests.filter((u) => !u.startsWith(http)), []);
  assert.deepEqual(errors, []);
  await context.close();
});

test("a client token sees its own chains only", async () => {
  const mine = (await api("POST", "/api/v1/chains", { steps: [sig("demo.fast", [1])], idempotency_key: "mine" }, SECRETS.client)).data.chain_id;
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const page = await context.newPage();
  page.setDefaultTimeout(PATIENCE);
  await page.goto(`${http}/`);
  await page.getByLabel("Token").fill(SECRETS.client);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByRole("heading", { name: "Chains" }).waitFor();
  assert.equal(await page.getByRole("link", { name: "Queues", exact: true }).count(), 0);
  await page.getByLabel("Chain id or idempotency key").fill("mine");
  await page.getByRole("button", { name: "Find" }).click();
  await page.locator(`a[href="#/chains/${mine}"]`).waitFor();
  await page.locator(`a[href="#/chains/${mine}"]`).click();
  await page.locator("h1 .badge", { hasText: "succeeded" }).waitFor();
  await shot(page, "client-chain");
  // An admin's chain is "not found" for the client, as over gRPC.
  const others = (await api("GET", "/api/v1/dead")).data.chains;
  const other = others.length ? others[0].chain_id : mine;
  if (other !== mine) {
    const r = await api("GET", `/api/v1/chains/${other}`, undefined, SECRETS.client);
    assert.equal(r.status, 404);
    assert.equal(r.data.message, `chain ${other} not found`);
  }
  const queues = await page.evaluate(async () => (await fetch("/api/v1/queues")).status);
  assert.equal(queues, 403);
  await context.close();
});

test("over TLS: the dashboard signs in with a Secure cookie, watches a chain live and acts", async () => {
  // A certificate for 127.0.0.1 and localhost, made for this test.
  const pems = await selfsigned.generate([{ name: "commonName", value: "localhost" }], {
    keyType: "ec", curve: "P-256", algorithm: "sha256",
    extensions: [
      { name: "basicConstraints", cA: false },
      { name: "subjectAltName", altNames: [{ type: 2, value: "localhost" }, { type: 7, ip: "127.0.0.1" }] },
    ],
  });
  const cert = path.join(dir, "tls-cert.pem");
  const key = path.join(dir, "tls-key.pem");
  fs.writeFileSync(cert, pems.cert);
  fs.writeFileSync(key, pems.private);
  const [g, h] = [await freePort(), await freePort()];
  const base = `https://127.0.0.1:${h}`;
  start("broker-tls", BATON, ["serve", "--listen", `127.0.0.1:${g}`, "--http", `127.0.0.1:${h}`,
    "--data", path.join(dir, "data-tls"), "--tokens", path.join(dir, "tokens.toml"), "--tls-cert", cert, "--tls-key", key]);
  // Node checks the broker's certificate against the one made above.
  const healthz = () => new Promise((resolve, reject) => {
    https.get(`${base}/healthz`, { ca: pems.cert }, (res) => { res.resume(); resolve(res.statusCode); }).on("error", reject);
  });
  await until("the TLS broker's /healthz", async () => (await healthz()) === 200);
  // Plain HTTP to the TLS listener gets no page.
  await assert.rejects(fetch(`http://127.0.0.1:${h}/healthz`));
  start("worker-tls", WORKER, [`127.0.0.1:${g}`, "--name", "tls-worker", "--concurrency", "2"],
    { BATON_TOKEN: SECRETS.worker, BATON_CA: cert, BATON_DEMO_SLOW_MS: "1500" });

  const context = await browser.newContext({ viewport: { width: 1280, height: 900 }, ignoreHTTPSErrors: true });
  const page = await context.newPage();
  page.setDefaultTimeout(PATIENCE);
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));
  await page.goto(`${base}/`);
  await page.getByLabel("Token").fill(SECRETS.admin);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByRole("heading", { name: "Overview" }).waitFor();
  const [cookie] = await context.cookies(base);
  assert.ok(cookie, "a session cookie");
  assert.equal(cookie.secure, true);
  assert.equal(cookie.httpOnly, true);
  // The worker connected over TLS shows on the Workers page.
  await page.getByRole("link", { name: "Workers", exact: true }).click();
  await page.getByText("tls-worker").waitFor();

  // The seed's demo, submitted over the JSON API on TLS, watched live.
  const admin = { authorization: `Bearer ${SECRETS.admin}` };
  const submitted = await context.request.post(`${base}/api/v1/chains`, { headers: admin,
    data: { steps: [sig("demo.slow", [7]), sig("demo.fast", [7])] } });
  assert.equal(submitted.status(), 200, await submitted.text());
  const id = (await submitted.json()).chain_id;
  await page.goto(`${base}/#/chains/${id}`);
  const history = page.getByRole("list", { name: "History of the chain, oldest first" });
  await history.locator("li", { hasText: "step_started demo.slow" }).waitFor();
  await page.locator("h1 .badge", { hasText: "succeeded" }).waitFor();
  assert.deepEqual(historyOf(await history.locator("li").allTextContents()), [
    "submitted", "step_started demo.slow", "step_succeeded demo.slow",
    "step_started demo.fast", "step_succeeded demo.fast", "chain_succeeded"]);
  assert.match(await history.locator("li", { hasText: "step_started demo.slow" }).textContent(), /on tls-worker/);
  await shot(page, "tls-chain");

  // An action over TLS: pause a queue from the page; the broker has it.
  await page.getByRole("link", { name: "Queues", exact: true }).click();
  await page.getByLabel("Queue name").fill("tls-queue");
  await page.getByRole("button", { name: "Pause queue", exact: true }).click();
  await until("the queue paused at the broker", async () => {
    const r = await context.request.get(`${base}/api/v1/queues`, { headers: admin });
    return (await r.json()).queues.some((q) => q.name === "tls-queue" && q.paused);
  });
  assert.deepEqual(errors, []);
  await context.close();
});
