/**
 * The TypeScript conformance worker: the task names every SDK's conformance
 * worker registers, with the same behaviour, so one client (in any
 * language) can check any worker.
 *
 *   node ../../../worker-sdk/typescript/dist/cjs/cli.js worker --app ./tasks.js --queues general,heavy
 *
 * | task                       | does                                                                  |
 * | -------------------------- | --------------------------------------------------------------------- |
 * | noop()                     | returns null                                                          |
 * | echo(x)                    | returns x unchanged                                                   |
 * | add(a, b)                  | returns a + b                                                         |
 * | fail_once(key)             | attempt 1 throws ConformanceError("fail_once <key>: attempt 1"), retryable; declared maxRetries 1, retryBackoff 100 ms; a later attempt returns its attempt number |
 * | fail_always(message)       | throws ConformanceError(message), retryable; declared maxRetries 0: the chain fails with error_type "ConformanceError" |
 * | retry_later_n(n)           | while ctx.polls < n: Retry after 50 ms ("poll <polls> of <n>"); then returns the polls seen (n) |
 * | sleep(ms)                  | sleeps ms (cut short by a cancel, which reports Cancelled); returns ms |
 * | throttled_in_body(key, ms) | holds an in-body slot of (throttled_in_body, key), concurrency 1, for ms; returns key |
 * | throttled_declared(ms)     | declared throttle concurrency 1 on the task name; sleeps ms; returns ms |
 * | rated_in_body(key)         | enters an in-body throttle of (rated_in_body, key) with a rate of 4 a second and no concurrency limit, leaves at once; returns key |
 * | heavy()                    | declared heavy (routed to the "heavy" queue); returns the queue it ran from |
 * | cancellable(ms)            | waits up to ms for its cancel: cancelled, it throws Cancelled (error_type "Cancelled"); else returns "not cancelled" |
 * | nan()                      | returns the float NaN, which JSON cannot carry: the SDK's encoder decides (null, or a failure), but the run must end |
 * | trace_id()                 | returns the trace id of the chain's W3C traceparent as the SDK reads it (its context key "traceparent"), or null |
 *
 * With $BATON_CONFORMANCE_RECORD set to a file, the throttled tasks append
 * one JSON line when they start holding their slot and one just before they
 * give it back ({"sdk": "typescript", "event": "enter"|"leave", "task",
 * "key", "task_id", "attempt", "t_us"}, wall-clock microseconds), each with
 * one write to the file opened for appending, so the conformance runner
 * (tests/conformance/run.py) can count holders across languages.
 */
import { appendFileSync } from "node:fs";
import { Baton, Cancelled, Retry, type TaskContext } from "../../../worker-sdk/typescript/dist/cjs/index.js";

export const app = new Baton(); // $BATON_ADDR, else 127.0.0.1:7070

class ConformanceError extends Error {}

/** Appends an enter or leave line to $BATON_CONFORMANCE_RECORD, if set. */
function record(event: "enter" | "leave", ctx: TaskContext, key: string): void {
  const path = process.env.BATON_CONFORMANCE_RECORD;
  if (!path) return;
  const t_us = Math.round((performance.timeOrigin + performance.now()) * 1000);
  const line = { sdk: "typescript", event, task: ctx.name, key, task_id: ctx.taskId, attempt: ctx.attempt, t_us };
  appendFileSync(path, `${JSON.stringify(line)}\n`);
}

app.task({ name: "noop" }, () => null);

app.task({ name: "trace_id" }, (ctx) => ctx.traceId ?? null);

app.task({ name: "echo" }, (_ctx, x: unknown) => x);

app.task({ name: "add" }, (_ctx, a: number, b: number) => a + b);

app.task({ name: "fail_once", maxRetries: 1, retryBackoff: 100 }, (ctx, key: string) => {
  if (ctx.attempt === 1) throw new ConformanceError(`fail_once ${key}: attempt 1`);
  return ctx.attempt;
});

app.task({ name: "fail_always", maxRetries: 0 }, (_ctx, message: string) => {
  throw new ConformanceError(message);
});

app.task({ name: "retry_later_n" }, (ctx, n: number) => {
  if (ctx.polls < n) throw new Retry({ after: 50, message: `poll ${ctx.polls} of ${n}` });
  return ctx.polls;
});

app.task({ name: "sleep" }, async (ctx, ms: number) => {
  await ctx.sleep(ms);
  return ms;
});

app.task({ name: "rated_in_body" }, (ctx, key: string) =>
  ctx.throttle({ rate: "4/s", key }, async () => {
    record("enter", ctx, key);
    record("leave", ctx, key);
    return key;
  }),
);

app.task({ name: "throttled_in_body" }, (ctx, key: string, ms: number) =>
  ctx.throttle({ concurrency: 1, key }, async () => {
    record("enter", ctx, key);
    await ctx.sleep(ms);
    record("leave", ctx, key);
    return key;
  }),
);

app.task({ name: "throttled_declared", throttle: 1 }, async (ctx, ms: number) => {
  record("enter", ctx, "*");
  await ctx.sleep(ms);
  record("leave", ctx, "*");
  return ms;
});

app.task({ name: "heavy", heavy: true }, (ctx) => ctx.queue);

app.task({ name: "cancellable" }, async (ctx, ms: number) => {
  const cancelled = await new Promise<boolean>((resolve) => {
    const timer = setTimeout(() => resolve(false), ms);
    ctx.signal.addEventListener(
      "abort",
      () => {
        clearTimeout(timer);
        resolve(true);
      },
      { once: true },
    );
  });
  if (cancelled) throw new Cancelled(ctx.cancelReason);
  return "not cancelled";
});

app.task({ name: "nan" }, () => Number.NaN);
