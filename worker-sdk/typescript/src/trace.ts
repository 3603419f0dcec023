/**
 * W3C Trace Context as Baton carries it: a chain's `traceparent` and
 * `tracestate` are two reserved keys of its context map, so every step and
 * callback of the chain (retries and a requeued copy too) sees them, and the
 * broker refuses a malformed `traceparent`.
 *
 * OpenTelemetry is optional (`@opentelemetry/api`, an optional peer
 * dependency): when it can be loaded, a submission made inside a span
 * carries that span unless the caller set a `traceparent`, and each run's
 * body runs in a span that is a child of the chain's. Without it nothing is
 * loaded and nothing changes.
 */
import type { Outcome } from "./gen/baton/v1/index";

export const TRACEPARENT = "traceparent";
export const TRACESTATE = "tracestate";

const SHAPE = /^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$/;

/** The trace id of a valid `traceparent`, else undefined. */
export function traceIdOf(traceparent: string | undefined): string | undefined {
  if (traceparent === undefined) return undefined;
  try {
    return checkTraceparent(traceparent);
  } catch {
    return undefined;
  }
}

/** Checks a `traceparent` as the broker does and returns its trace id; throws a TypeError naming the field. */
export function checkTraceparent(value: string): string {
  const m = SHAPE.exec(value);
  const field = `context["traceparent"] ${JSON.stringify(value)}`;
  if (m === null) {
    throw new TypeError(
      `${field} is not a W3C traceparent: it must be version-traceid-parentid-flags in lowercase hex, like 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01`,
    );
  }
  const [, version, traceId, parentId, , rest] = m;
  if (version === "ff" || (version === "00" && rest !== undefined)) {
    throw new TypeError(`${field} has a bad version for its length`);
  }
  if (/^0+$/.test(traceId ?? "") || /^0+$/.test(parentId ?? "")) {
    throw new TypeError(`${field} has an all-zero id, which is invalid`);
  }
  return traceId ?? "";
}

/** The part of `@opentelemetry/api` used here (typed loosely: it is optional). */
interface OtelApi {
  context: { active(): unknown; with<T>(cx: unknown, fn: () => T): T };
  trace: {
    getSpanContext(
      cx: unknown,
    ): { traceId: string; spanId: string; traceFlags: number; traceState?: { serialize(): string } } | undefined;
    isSpanContextValid(sc: unknown): boolean;
    setSpanContext(cx: unknown, sc: unknown): unknown;
    setSpan(cx: unknown, span: unknown): unknown;
    getTracer(name: string): {
      startSpan(
        name: string,
        options: unknown,
        cx: unknown,
      ): {
        setStatus(status: { code: number; message?: string }): void;
        end(): void;
      };
    };
  };
  createTraceState?(raw: string): unknown;
  ROOT_CONTEXT: unknown;
  SpanKind: { CONSUMER: number };
  SpanStatusCode: { OK: number; ERROR: number };
}

let loaded: OtelApi | null | undefined;

/** `@opentelemetry/api` when it is installed (looked for once). */
function otel(): OtelApi | null {
  if (loaded === undefined) {
    try {
      loaded = require("@opentelemetry/api") as OtelApi;
    } catch {
      loaded = null;
    }
  }
  return loaded;
}

/** Checks an explicit `traceparent`, or adds the active OpenTelemetry span's. */
export function withCurrentTrace(context: Record<string, string>): void {
  const explicit = context[TRACEPARENT];
  if (explicit !== undefined) {
    checkTraceparent(explicit);
    return;
  }
  const api = otel();
  if (api === null) return;
  const sc = api.trace.getSpanContext(api.context.active());
  if (sc === undefined || !api.trace.isSpanContextValid(sc)) return;
  context[TRACEPARENT] = `00-${sc.traceId}-${sc.spanId}-${(sc.traceFlags & 0xff).toString(16).padStart(2, "0")}`;
  const state = sc.traceState?.serialize();
  if (state) context[TRACESTATE] = state;
}

/** A run's span: `run` calls the body with the span active; `end` sets its status from the outcome. */
export interface TaskSpan {
  run<T>(body: () => T): T;
  end(outcome: Outcome): void;
}

const NO_SPAN: TaskSpan = { run: (body) => body(), end: () => {} };

/** Starts a run's span as a child of the chain's `traceparent` (a no-op without OpenTelemetry). */
export function startTaskSpan(
  name: string,
  attributes: Record<string, string | number>,
  context: Readonly<Record<string, string>>,
): TaskSpan {
  const api = otel();
  if (api === null) return NO_SPAN;
  let parent = api.ROOT_CONTEXT;
  const traceparent = context[TRACEPARENT];
  const m = traceparent !== undefined && traceIdOf(traceparent) !== undefined ? SHAPE.exec(traceparent) : null;
  if (m !== null) {
    const state = context[TRACESTATE];
    parent = api.trace.setSpanContext(api.ROOT_CONTEXT, {
      traceId: m[2],
      spanId: m[3],
      traceFlags: Number.parseInt(m[4] ?? "0", 16),
      isRemote: true,
      ...(state && api.createTraceState ? { traceState: api.createTraceState(state) } : {}),
    });
  }
  const span = api.trace.getTracer("baton-worker").startSpan(name, { kind: api.SpanKind.CONSUMER, attributes }, parent);
  const active = api.trace.setSpan(parent, span);
  return {
    run: (body) => api.context.with(active, body),
    end: (outcome) => {
      if (outcome.failure) {
        span.setStatus({
          code: api.SpanStatusCode.ERROR,
          message: `${outcome.failure.errorType}: ${outcome.failure.message}`,
        });
      } else if (outcome.success) {
        span.setStatus({ code: api.SpanStatusCode.OK });
      }
      span.end();
    },
  };
}
