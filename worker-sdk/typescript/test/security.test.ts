/**
 * Tokens, TLS and mutual TLS against the real broker. Certificates come
 * from a private CA made at run time with the `openssl` command.
 */
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, test } from "node:test";
import { Baton } from "../src/index";
import * as tasks from "./fixtures/tasks";
import { Scope, SKIP } from "./harness";

function secret(): string {
  return `baton_${randomBytes(32).toString("hex")}`;
}

function tokenFile(scope: Scope, tokens: Record<string, { role: string; secret: string; queues?: string[] }>): string {
  const lines: string[] = [];
  for (const [name, t] of Object.entries(tokens)) {
    lines.push("[[token]]", `name = "${name}"`, `role = "${t.role}"`);
    lines.push(`sha256 = "${createHash("sha256").update(t.secret).digest("hex")}"`);
    if (t.queues) lines.push(`queues = [${t.queues.map((q) => `"${q}"`).join(", ")}]`);
    lines.push("");
  }
  return scope.file("tokens.toml", lines.join("\n"));
}

function hasOpenssl(): boolean {
  try {
    execFileSync("openssl", ["version"], { stdio: "ignore" });
    return true;
  } catch {
    return false;
  }
}

/** A CA, a server certificate for 127.0.0.1 and localhost, and a client certificate. */
function pki(dir: string): Record<"ca" | "serverCert" | "serverKey" | "clientCert" | "clientKey", string> {
  const p = (name: string) => join(dir, name);
  const ssl = (...args: string[]) => execFileSync("openssl", args, { stdio: "pipe" });
  const ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
  ssl(
    "req",
    "-x509",
    ...ec,
    "-keyout",
    p("ca.key"),
    "-out",
    p("ca.pem"),
    "-days",
    "1",
    "-subj",
    "/CN=baton test CA",
    "-addext",
    "basicConstraints=critical,CA:TRUE",
    "-addext",
    "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
  );
  const issue = (name: string, ext: string) => {
    writeFileSync(p(`${name}.ext`), ext);
    ssl("req", ...ec, "-keyout", p(`${name}.key`), "-out", p(`${name}.csr`), "-subj", `/CN=${name}`);
    ssl(
      "x509",
      "-req",
      "-in",
      p(`${name}.csr`),
      "-CA",
      p("ca.pem"),
      "-CAkey",
      p("ca.key"),
      "-CAcreateserial",
      "-out",
      p(`${name}.pem`),
      "-days",
      "1",
      "-extfile",
      p(`${name}.ext`),
    );
  };
  issue(
    "server",
    "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n",
  );
  issue("client", "extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n");
  return {
    ca: p("ca.pem"),
    serverCert: p("server.pem"),
    serverKey: p("server.key"),
    clientCert: p("client.pem"),
    clientKey: p("client.key"),
  };
}

describe("security", { skip: SKIP }, () => {
  test("tokens: every call carries `authorization: Bearer`; a worker without one is refused (exit 2)", async (t) => {
    const scope = Scope.open(t);
    const admin = secret();
    const client = secret();
    const worker = secret();
    const file = tokenFile(scope, {
      ops: { role: "admin", secret: admin },
      app: { role: "client", secret: client },
      w: { role: "worker", secret: worker, queues: ["general"] },
    });
    const broker = await scope.broker({ args: ["--tokens", file], token: admin });
    tasks.app.address = broker.address;
    t.after(() => tasks.app.close());

    // No token: UNAUTHENTICATED (16).
    tasks.app.token = undefined;
    await assert.rejects(tasks.add.delay(1, 2), (err: { code?: number }) => err.code === 16);
    // A worker without a token exits 2, naming the status.
    const refused = await scope.worker(broker, { name: "no-token", wait: false });
    assert.equal(await refused.exited(), 2);
    assert.match(refused.log(), /UNAUTHENTICATED/);
    // A worker token whose queues do not include the worker's: PERMISSION_DENIED.
    const wrongQueue = await scope.worker(broker, {
      name: "wrong-queue",
      queues: ["heavy"],
      wait: false,
      env: { BATON_TOKEN: worker },
    });
    assert.equal(await wrongQueue.exited(), 2);
    assert.match(wrongQueue.log(), /PERMISSION_DENIED/);

    // With tokens: the worker's from $BATON_TOKEN, the client's given to the app.
    await scope.worker(broker, { name: "with-token", env: { BATON_TOKEN: worker } });
    tasks.app.token = client;
    const handle = await tasks.add.delay(1, 2);
    assert.equal(await handle.get({ timeout: 10_000 }), 3);
    // And on --token, for the CLI.
    await scope.worker(broker, { name: "flag-token", args: ["--token", worker] });
  });

  test("TLS: a client and a worker trusting the CA talk to the broker; plaintext does not", async (t) => {
    const scope = Scope.open(t);
    if (!hasOpenssl()) {
      t.skip("needs the openssl command");
      return;
    }
    const certs = pki(scope.dir);
    const broker = await scope.broker({
      args: ["--tls-cert", certs.serverCert, "--tls-key", certs.serverKey],
      tls: { ca: certs.ca },
    });
    await scope.worker(broker, { name: "tls-worker", args: ["--tls-ca", certs.ca] });
    const app = new Baton(broker.address, { tls: { ca: certs.ca }, timeout: 5_000 });
    t.after(() => app.close());
    const add = app.signature("t.add", [20, 22], { immutable: true });
    assert.equal(await (await add.delay()).get({ timeout: 10_000 }), 42);
    // By name, with `domain` naming the certificate's host.
    const byName = new Baton(broker.address, { tls: { ca: certs.ca, domain: "localhost" }, timeout: 5_000 });
    t.after(() => byName.close());
    assert.equal(
      await (await byName.signature("t.add", [1, 1], { immutable: true }).delay()).get({ timeout: 10_000 }),
      2,
    );
    const plain = new Baton(broker.address, { timeout: 1_500 });
    t.after(() => plain.close());
    await assert.rejects(plain.signature("t.add", [1, 1]).delay());
  });

  test("mutual TLS: a worker needs a client certificate the CA signed", async (t) => {
    const scope = Scope.open(t);
    if (!hasOpenssl()) {
      t.skip("needs the openssl command");
      return;
    }
    const certs = pki(scope.dir);
    const broker = await scope.broker({
      args: ["--tls-cert", certs.serverCert, "--tls-key", certs.serverKey, "--tls-client-ca", certs.ca],
      tls: { ca: certs.ca },
    });
    const without = await scope.worker(broker, { name: "no-cert", args: ["--tls-ca", certs.ca], wait: false });
    const withCert = await scope.worker(broker, {
      name: "cert-worker",
      args: ["--tls-ca", certs.ca, "--tls-cert", certs.clientCert, "--tls-key", certs.clientKey],
    });
    const app = new Baton(broker.address, { tls: { ca: certs.ca }, timeout: 5_000 });
    t.after(() => app.close());
    assert.equal(await (await app.signature("t.add", [2, 2], { immutable: true }).delay()).get({ timeout: 10_000 }), 4);
    const workers = await broker.workers();
    assert.ok(workers.some((w) => w.workerName === "cert-worker"));
    assert.ok(!workers.some((w) => w.workerName === "no-cert"));
    assert.equal(await without.exited(), 2, without.log());
    assert.match(without.log(), /UNAUTHENTICATED|PERMISSION_DENIED/);
    assert.equal(withCert.proc.exitCode, null);
  });
});
