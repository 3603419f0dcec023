#!/usr/bin/env node
/**
 * `baton worker --app ./tasks.js --queues general --concurrency 4`: runs the
 * tasks of an app module until SIGTERM/SIGINT drains it.
 *
 * The module is loaded with `import()`, so it may be CommonJS or ESM. The
 * app is its export named after `:attr` (`./tasks.js:app`), else its
 * `default` export, else its export named `app`.
 */
import { resolve } from "node:path";
import { pathToFileURL } from "node:url";
import { parseArgs } from "node:util";
import type { Baton } from "./app";
import { WorkerConfigError } from "./errors";
import type { TlsOptions } from "./transport";

const USAGE = `usage: baton worker --app MODULE[:EXPORT] [options]

  -A, --app MODULE[:EXPORT]   the module defining the app (default export, or 'app')
  -Q, --queues a,b            queues to take tasks from (repeatable; default general)
  -c, --concurrency N         task bodies run at once (default 1)
      --prefetch N            assignments waiting beyond concurrency (default 0)
  -n, --name NAME             worker name shown in inspection (default host:pid)
  -b, --broker HOST:PORT      the broker, or several as h1:7070,h2:7070
                              (default $BATON_ADDR, else 127.0.0.1:7070)
      --token TOKEN           token (prefer $BATON_TOKEN: arguments show in ps)
      --tls                   TLS with the system's roots
      --tls-ca FILE           TLS, trusting this CA
      --tls-cert FILE         client certificate (mutual TLS), with --tls-key
      --tls-key FILE
      --tls-domain NAME       the name in the broker's certificate
  -l, --loglevel LEVEL        debug, info, warn, error (default info)
`;

function isBaton(value: unknown): value is Baton {
  return (
    typeof value === "object" &&
    value !== null &&
    (value as { tasks?: unknown }).tasks instanceof Map &&
    typeof (value as { worker?: unknown }).worker === "function"
  );
}

/** Loads the app of `spec` ("./tasks.js" or "./tasks.js:myApp"). */
export async function loadApp(spec: string): Promise<Baton> {
  const colon = spec.lastIndexOf(":");
  const hasAttr = colon > 1; // not a Windows drive letter
  const file = hasAttr ? spec.slice(0, colon) : spec;
  const attr = hasAttr ? spec.slice(colon + 1) : undefined;
  const module = (await import(pathToFileURL(resolve(file)).href)) as Record<string, unknown>;
  const candidates: unknown[] = attr
    ? [module[attr], (module.default as Record<string, unknown> | undefined)?.[attr]]
    : [module.default, module.app, (module.default as Record<string, unknown> | undefined)?.app];
  const app = candidates.find(isBaton);
  if (app === undefined) {
    throw new Error(`${spec}: no Baton app exported (${attr ? `as ${attr}` : "as default or app"})`);
  }
  return app;
}

export async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  if (command !== "worker") {
    process.stderr.write(USAGE);
    return command === "--help" || command === "-h" ? 0 : 2;
  }
  let values: ReturnType<typeof parse>;
  try {
    values = parse(rest);
  } catch (err) {
    process.stderr.write(`${(err as Error).message}\n${USAGE}`);
    return 2;
  }
  if (values.help) {
    process.stdout.write(USAGE);
    return 0;
  }
  if (!values.app) {
    process.stderr.write(`--app is required\n${USAGE}`);
    return 2;
  }
  if (values.loglevel) process.env.BATON_LOG_LEVEL = values.loglevel;
  const app = await loadApp(values.app);
  if (values.broker) {
    try {
      app.address = values.broker;
    } catch (err) {
      process.stderr.write(`--broker: ${(err as Error).message}\n${USAGE}`);
      return 2;
    }
  }
  if (values.token) app.token = values.token;
  if (values.tls || values["tls-ca"] || values["tls-cert"] || values["tls-key"] || values["tls-domain"]) {
    const tls: TlsOptions = { ...(app.tls ?? {}) };
    if (values["tls-ca"]) tls.ca = values["tls-ca"];
    if (values["tls-cert"]) tls.cert = values["tls-cert"];
    if (values["tls-key"]) tls.key = values["tls-key"];
    if (values["tls-domain"]) tls.domain = values["tls-domain"];
    app.tls = tls;
  }
  const queues = (values.queues ?? [])
    .flatMap((q) => q.split(","))
    .map((q) => q.trim())
    .filter(Boolean);
  const options = {
    queues: queues.length > 0 ? queues : ["general"],
    concurrency: Number(values.concurrency ?? "1"),
    prefetch: Number(values.prefetch ?? "0"),
    handleSignals: true,
    ...(values.name ? { name: values.name } : {}),
  };
  try {
    await app.worker(options).run();
  } catch (err) {
    if (err instanceof WorkerConfigError) {
      process.stderr.write(`baton: ${err.message}\n`);
      return 2;
    }
    throw err;
  }
  app.close();
  return 0;
}

function parse(args: string[]) {
  return parseArgs({
    args,
    options: {
      app: { type: "string", short: "A" },
      queues: { type: "string", short: "Q", multiple: true },
      concurrency: { type: "string", short: "c" },
      prefetch: { type: "string" },
      name: { type: "string", short: "n" },
      broker: { type: "string", short: "b" },
      token: { type: "string" },
      tls: { type: "boolean" },
      "tls-ca": { type: "string" },
      "tls-cert": { type: "string" },
      "tls-key": { type: "string" },
      "tls-domain": { type: "string" },
      loglevel: { type: "string", short: "l" },
      help: { type: "boolean", short: "h" },
    },
    strict: true,
  }).values;
}

if (require.main === module) {
  main(process.argv.slice(2)).then(
    (code) => process.exit(code),
    (err: unknown) => {
      process.stderr.write(`baton: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
      process.exit(1);
    },
  );
}
