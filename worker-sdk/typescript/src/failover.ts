/**
 * Several brokers, one leader: which address a client or worker tries next
 * (docs/deployment.md, "How clients find the leader"; the Rust SDK's
 * `baton::failover`).
 *
 * Brokers sharing one PostgreSQL database elect a leader; the others are
 * standbys, which refuse every call with `UNAVAILABLE`, the metadata
 * `baton-standby: 1` and, when they know it, `baton-leader: HOST:PORT`.
 * {@link Brokers} is the rule, as plain data (no sockets, no clock), so that
 * it is tested alone and the client and the worker share it:
 *
 * 1. Try the addresses in order, starting with the last one that worked.
 * 2. On a connection failure or `UNAVAILABLE`: if the answer carries
 *    `baton-leader` and that address was not tried in this round, try it
 *    next, at once (even if it is not in the list); else the next address
 *    of the list not tried in this round, at once.
 * 3. When every address of the list was tried, the round ends: pause with
 *    the backoff, then start a new round. A round in which a standby
 *    answered pauses only the backoff's first step and does not grow it.
 * 4. A success ends the round and resets the backoff.
 */
import * as grpc from "@grpc/grpc-js";

/** The metadata key of a standby's refusal that names the leader. */
export const LEADER_KEY = "baton-leader";
/** The metadata key that marks a standby's refusal. */
export const STANDBY_KEY = "baton-standby";

/** The addresses of a comma-separated list (`"h1:7070,h2:7070"`), trimmed, empty items dropped. */
export function splitAddrs(list: string): string[] {
  return list
    .split(",")
    .map((a) => a.trim())
    .filter((a) => a !== "");
}

/** What a refusal said about where the leader is. */
export interface Refusal {
  /** The refusal came from a standby (`baton-standby`). */
  standby: boolean;
  /** The leader's address (`baton-leader`), if the answer named one. */
  leader?: string | undefined;
}

/** A connection failure: no standby's marks. */
export const NO_REFUSAL: Refusal = { standby: false };

/** What an error's trailers say: a standby's marks, if any (a connection failure has none). */
export function refusalOf(err: unknown): Refusal {
  const md = (err as { metadata?: unknown } | null)?.metadata;
  if (!(md instanceof grpc.Metadata)) return NO_REFUSAL;
  const leader = md
    .get(LEADER_KEY)
    .map((v) => v.toString().trim())
    .find((v) => v !== "");
  return { standby: md.get(STANDBY_KEY).length > 0, leader };
}

/** What to do after a failure: try `current` at once, or pause first (the round ended). */
export type Next =
  | { readonly kind: "now" }
  /** `standby`: a standby answered in the round (pause the first backoff step only). */
  | { readonly kind: "pause"; readonly standby: boolean };

/** The rotation over a list of broker addresses (see the module doc). */
export class Brokers {
  /** The addresses as configured, in order; never empty. */
  readonly list: readonly string[];
  /** The address to try now: one of `list`, or a leader named by a standby. */
  private currentValue: string;
  /** Tried in this round. */
  private readonly tried = new Set<string>();
  /** A standby answered in this round. */
  private standbySeen = false;

  /**
   * A rotation over `list` (as given, in order), starting at its first address.
   *
   * @throws TypeError the list is empty
   */
  constructor(list: readonly string[]) {
    const first = list[0];
    if (first === undefined) throw new TypeError("no broker address (an empty address list)");
    this.list = [...list];
    this.currentValue = first;
  }

  /** A rotation over a comma-separated list (`"h1:7070,h2:7070"`). */
  static parse(list: string): Brokers {
    return new Brokers(splitAddrs(list));
  }

  /** The address to try now. */
  get current(): string {
    return this.currentValue;
  }

  /** The current address worked: it stays current, the round ends. */
  succeeded(): void {
    this.tried.clear();
    this.standbySeen = false;
  }

  /**
   * The current address failed to connect, or refused (`refusal`: what its
   * answer said; {@link NO_REFUSAL} for a connection failure). Moves to the
   * address to try next.
   */
  failed(refusal: Refusal): Next {
    this.tried.add(this.currentValue);
    this.standbySeen ||= refusal.standby;
    if (refusal.leader !== undefined && !this.tried.has(refusal.leader)) {
      this.currentValue = refusal.leader;
      return { kind: "now" };
    }
    const next = this.list.find((a) => !this.tried.has(a));
    if (next !== undefined) {
      this.currentValue = next;
      return { kind: "now" };
    }
    const standby = this.standbySeen;
    this.standbySeen = false;
    this.tried.clear();
    this.currentValue = this.list[0] as string;
    return { kind: "pause", standby };
  }
}

/**
 * Whether a call that failed with `err` is worth making at another broker:
 * a standby refused it (it did nothing), or its broker could not be reached
 * (grpc-js's words for a call that found no connection, or no address).
 * A connection that broke mid-call is not: the call may have been carried out.
 */
export function elsewhere(err: unknown): boolean {
  const e = err as Partial<grpc.ServiceError> | null;
  if (e?.code !== grpc.status.UNAVAILABLE) return false;
  if (refusalOf(err).standby) return true;
  const details = e.details ?? "";
  return details.includes("No connection established") || details.includes("Name resolution failed");
}
