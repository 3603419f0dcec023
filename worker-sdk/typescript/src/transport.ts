/**
 * Channels to the broker: plaintext or TLS (mutual with a client
 * certificate), and the token sent as `authorization: Bearer <token>`
 * metadata on every call.
 *
 * The token travels as per-call metadata rather than call credentials:
 * gRPC refuses call credentials on a plaintext channel, and a token over
 * plaintext on loopback is a legitimate local setup.
 */
import { readFileSync } from "node:fs";
import * as grpc from "@grpc/grpc-js";

/** A PEM: a `Buffer` is the PEM itself; a string is a file path, unless it starts with `-----BEGIN`. */
export type PemSource = string | Buffer;

/** TLS settings. `ca` absent trusts the system roots; `cert`+`key` are a client certificate (mutual TLS). */
export interface TlsOptions {
  ca?: PemSource;
  cert?: PemSource;
  key?: PemSource;
  /** The name in the broker's certificate, when the address does not carry it (connecting by IP). */
  domain?: string;
}

export const DEFAULT_ADDRESS = "127.0.0.1:7070";

/** `$BATON_ADDR` (one address, or several as a comma list), else the broker's default address. */
export function envAddress(): string {
  return process.env.BATON_ADDR || DEFAULT_ADDRESS;
}

/** The token, trimmed; `undefined` for none. Refuses what cannot travel in a header. */
export function checkToken(token: string | undefined): string | undefined {
  if (token === undefined) return undefined;
  const t = token.trim();
  if (t === "") return undefined;
  if (!/^[\x21-\x7e]+$/.test(t)) {
    throw new Error("token must be visible ASCII (no spaces or control characters)");
  }
  return t;
}

function pem(source: PemSource | undefined, what: string): Buffer | null {
  if (source === undefined) return null;
  if (Buffer.isBuffer(source)) return source;
  if (source.trimStart().startsWith("-----BEGIN")) return Buffer.from(source);
  try {
    return readFileSync(source);
  } catch (err) {
    throw new Error(`tls: cannot read ${what} ${JSON.stringify(source)}: ${(err as Error).message}`);
  }
}

/** Normalizes `tls`: `undefined`/`false` is plaintext, `true` TLS with the system roots. */
export function tlsConfig(tls: boolean | TlsOptions | undefined): TlsOptions | undefined {
  if (tls === undefined || tls === false) return undefined;
  if (tls === true) return {};
  if ((tls.cert === undefined) !== (tls.key === undefined)) {
    throw new Error("tls: cert and key go together (a client certificate needs its key)");
  }
  return tls;
}

/** Reconnect backoff as the other SDKs use it (0.1 s doubling to 2 s). */
const RECONNECT_OPTIONS: grpc.ChannelOptions = {
  "grpc.initial_reconnect_backoff_ms": 100,
  "grpc.min_reconnect_backoff_ms": 100,
  "grpc.max_reconnect_backoff_ms": 2000,
};

/** Credentials and channel options for `tls`. */
export function channelArgs(
  tls: TlsOptions | undefined,
  extra: grpc.ChannelOptions = {},
): { credentials: grpc.ChannelCredentials; options: grpc.ChannelOptions } {
  const options: grpc.ChannelOptions = { ...RECONNECT_OPTIONS, ...extra };
  if (tls === undefined) {
    return { credentials: grpc.credentials.createInsecure(), options };
  }
  if (tls.domain) {
    options["grpc.ssl_target_name_override"] = tls.domain;
    options["grpc.default_authority"] = tls.domain;
  }
  const credentials = grpc.credentials.createSsl(pem(tls.ca, "ca"), pem(tls.key, "key"), pem(tls.cert, "cert"));
  return { credentials, options };
}

/** Call metadata carrying `token`; `waitForReady` makes a call wait for a broker that is (re)starting. */
export function metadata(token: string | undefined, waitForReady = false): grpc.Metadata {
  const md = new grpc.Metadata(waitForReady ? { waitForReady: true } : undefined);
  if (token) md.set("authorization", `Bearer ${token}`);
  return md;
}
