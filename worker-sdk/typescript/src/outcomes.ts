/**
 * How a task body's ending becomes an `Outcome`: the one place that maps
 * JavaScript to the protocol.
 *
 * - a returned value: `Success` (JSON); an unencodable one (a BigInt, a
 *   cycle) is a fatal `EncodeError`, since running again would return it again;
 * - {@link Retry}: `RetryLater`;
 * - {@link Fatal}: a failure never retried (a plain `Fatal` with a `cause`
 *   reports the cause's type);
 * - {@link Cancelled}: a failure of type "Cancelled", never retried;
 * - a {@link ThrottleError} (the broker refused an in-body throttle): a
 *   failure of type "ThrottleRefused", never retried;
 * - any other thrown value: a retryable failure with the error's name,
 *   message and full stack (with its causes), which the broker retries
 *   while `maxRetries` allows.
 */
import { Cancelled, Fatal, Retry, ThrottleError } from "./errors";
import type { Outcome } from "./gen/baton/v1/index";

export function failure(errorType: string, message: string, traceback = "", retryable = false): Outcome {
  return { failure: { errorType, message, traceback, retryable } };
}

export function cancelled(reason: string): Outcome {
  return failure("Cancelled", reason || "cancelled by the broker");
}

export function fromResult(value: unknown, taskName: string): Outcome {
  let text: string | undefined;
  try {
    text = JSON.stringify(value);
  } catch (err) {
    return failure("EncodeError", `result of ${taskName} is not JSON-encodable: ${(err as Error).message}`, stack(err));
  }
  return { success: { result: text ?? "null" } };
}

/** The error's type as the failure record shows it: its `name`, else its constructor's name. */
export function errorType(err: unknown): string {
  if (err instanceof Error) {
    // `class VolumeBusy extends Error {}` keeps the name it inherits
    // ("Error", or "Fatal" under Fatal): report the class then. A name the
    // class sets itself wins.
    const own = (err.constructor as { name?: string } | undefined)?.name ?? "";
    const inherited = new Set<string>();
    for (
      let c: unknown = Object.getPrototypeOf(err.constructor);
      typeof c === "function";
      c = Object.getPrototypeOf(c)
    ) {
      inherited.add((c as { name: string }).name);
    }
    if (own && (err.name === "" || inherited.has(err.name))) return own;
    return err.name || own || "Error";
  }
  if (err === null) return "null";
  return typeof err;
}

/** The full stack trace, with the chain of causes (`cause`), as Node prints them. */
export function stack(err: unknown): string {
  if (!(err instanceof Error)) return "";
  const parts: string[] = [];
  let current: unknown = err;
  const seen = new Set<unknown>();
  while (current instanceof Error && !seen.has(current)) {
    seen.add(current);
    let text = current.stack ?? `${current.name}: ${current.message}`;
    // V8 heads the stack with the inherited name ("Error: ..." for
    // `class VolumeBusy extends Error {}`): head it with the type reported.
    const type = errorType(current);
    if (type !== current.name && text.startsWith(current.name)) text = type + text.slice(current.name.length);
    parts.push(text);
    current = current.cause;
    if (current !== undefined && !(current instanceof Error)) parts.push(`[cause]: ${String(current)}`);
  }
  return parts.join("\nCaused by: ");
}

function message(err: unknown): string {
  if (err instanceof Error) return err.message;
  try {
    return typeof err === "string" ? err : (JSON.stringify(err) ?? String(err));
  } catch {
    return String(err);
  }
}

export function fromError(err: unknown): Outcome {
  if (err instanceof Retry) {
    return { retryLater: { delayMs: err.after, message: err.message } };
  }
  if (err instanceof Cancelled) {
    return failure("Cancelled", err.message, stack(err));
  }
  if (err instanceof ThrottleError && err.fatal) {
    return failure("ThrottleRefused", err.message, stack(err), false);
  }
  if (err instanceof Fatal) {
    const cause = err.cause;
    const type = err.constructor === Fatal && cause !== undefined ? errorType(cause) : errorType(err);
    return failure(type, err.message || message(cause), stack(err), false);
  }
  return failure(errorType(err), message(err), stack(err), true);
}
