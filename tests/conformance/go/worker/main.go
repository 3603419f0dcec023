// Command worker is the Go conformance worker: the task names every SDK's
// conformance worker registers, with the same behaviour (see
// tests/conformance/typescript/tasks.ts), so one client in any language
// can check any worker.
//
//	BATON_ADDR=127.0.0.1:7070 go run ./worker -queues general,heavy -concurrency 4
//
// (flags: baton.WorkerConfig.RegisterFlags; the defaults are general,heavy and 4).
//
// | task                       | does                                                                  |
// | -------------------------- | --------------------------------------------------------------------- |
// | noop()                     | returns null                                                          |
// | echo(x)                    | returns x unchanged                                                   |
// | add(a, b)                  | returns a + b                                                         |
// | fail_once(key)             | attempt 1 returns ConformanceError("fail_once <key>: attempt 1"), retryable; declared MaxRetries 1, RetryBackoff 100 ms; a later attempt returns its attempt number |
// | fail_always(message)       | returns ConformanceError(message), retryable; declared MaxRetries 0: the chain fails with error_type "ConformanceError" |
// | retry_later_n(n)           | while ctx.Polls < n: RetryLater after 50 ms ("poll <polls> of <n>"); then returns the polls seen (n) |
// | sleep(ms)                  | sleeps ms (cut short by a cancel, which reports Cancelled); returns ms |
// | throttled_in_body(key, ms) | holds an in-body slot of (throttled_in_body, key), concurrency 1, for ms; returns key |
// | throttled_declared(ms)     | declared throttle concurrency 1 on the task name; sleeps ms; returns ms |
// | rated_in_body(key)         | enters an in-body throttle of (rated_in_body, key) with a rate of 4 a second and no concurrency limit, leaves at once; returns key |
// | heavy()                    | declared heavy (routed to the "heavy" queue); returns the queue it ran from |
// | cancellable(ms)            | waits up to ms for its cancel: cancelled, it returns the cancellation (error_type "Cancelled"); else returns "not cancelled" |
// | nan()                      | returns the float NaN, which JSON cannot carry: the SDK's encoder decides (null, or a failure), but the run must end |
// | trace_id()                 | returns the trace id of the chain's W3C traceparent as the SDK reads it (its context key "traceparent"), or null |
//
// With $BATON_CONFORMANCE_RECORD set to a file, the throttled tasks append
// one JSON line when they start holding their slot and one just before they
// give it back ({"sdk": "go", "event": "enter"|"leave", "task", "key",
// "task_id", "attempt", "t_us"}, wall-clock microseconds), each with one
// write to the file opened for appending, so the conformance runner
// (tests/conformance/run.py) can count holders across languages.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"math"
	"os"
	"time"

	baton "example.invalid/baton/worker-sdk/go"
)

// ConformanceError is the error the failing tasks return; its failure
// records say "ConformanceError", as every SDK's conformance worker does.
type ConformanceError struct{ Message string }

func (e *ConformanceError) Error() string { return e.Message }

// ErrorType implements baton.ErrorType.
func (e *ConformanceError) ErrorType() string { return "ConformanceError" }

// sleep waits ms or until the run is cancelled (then it returns the
// context's error; the run is reported as Cancelled).
func sleep(ctx *baton.TaskContext, ms int) error {
	select {
	case <-time.After(time.Duration(ms) * time.Millisecond):
		return nil
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}

// record appends an enter or leave line to $BATON_CONFORMANCE_RECORD, if set.
func record(event string, ctx *baton.TaskContext, key string) {
	path := os.Getenv("BATON_CONFORMANCE_RECORD")
	if path == "" {
		return
	}
	line, err := json.Marshal(map[string]any{
		"sdk": "go", "event": event, "task": ctx.Name, "key": key,
		"task_id": ctx.TaskID, "attempt": ctx.Attempt, "t_us": time.Now().UnixMicro(),
	})
	if err == nil {
		var f *os.File
		if f, err = os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644); err == nil {
			_, err = f.Write(append(line, '\n'))
			if cerr := f.Close(); err == nil {
				err = cerr
			}
		}
	}
	if err != nil {
		log.Fatalf("conformance worker: cannot write the record: %v", err)
	}
}

// held runs body between an enter and a leave record of key.
func held(ctx *baton.TaskContext, key string, body func() error) error {
	record("enter", ctx, key)
	err := body()
	record("leave", ctx, key)
	return err
}

func register(w *baton.Worker) {
	w.Register("noop", func(ctx *baton.TaskContext) (any, error) { return nil, nil })
	w.Register("trace_id", func(ctx *baton.TaskContext) (any, error) {
		if id := ctx.TraceID(); id != "" {
			return id, nil
		}
		return nil, nil
	})
	w.Register("echo", func(ctx *baton.TaskContext, x any) (any, error) { return x, nil })
	w.Register("add", func(ctx *baton.TaskContext, a, b float64) (float64, error) { return a + b, nil })
	w.Register("fail_once", func(ctx *baton.TaskContext, key string) (uint32, error) {
		if ctx.Attempt == 1 {
			return 0, baton.WithStack(&ConformanceError{fmt.Sprintf("fail_once %s: attempt 1", key)})
		}
		return ctx.Attempt, nil
	}, baton.MaxRetries(1), baton.RetryBackoff(100*time.Millisecond, 0))
	w.Register("fail_always", func(ctx *baton.TaskContext, message string) error {
		return baton.WithStack(&ConformanceError{message})
	}, baton.MaxRetries(0))
	w.Register("retry_later_n", func(ctx *baton.TaskContext, n uint32) (uint32, error) {
		if ctx.Polls < n {
			return 0, baton.RetryLater(50*time.Millisecond, fmt.Sprintf("poll %d of %d", ctx.Polls, n))
		}
		return ctx.Polls, nil
	})
	w.Register("sleep", func(ctx *baton.TaskContext, ms int) (int, error) { return ms, sleep(ctx, ms) })
	w.Register("throttled_in_body", func(ctx *baton.TaskContext, key string, ms int) (string, error) {
		err := ctx.Throttle(baton.Limit{Concurrency: 1, Key: key}, func() error {
			return held(ctx, key, func() error { return sleep(ctx, ms) })
		})
		return key, err
	})
	w.Register("rated_in_body", func(ctx *baton.TaskContext, key string) (string, error) {
		rate := &baton.Rate{Count: 4, Per: time.Second}
		err := ctx.Throttle(baton.Limit{Key: key, Rate: rate}, func() error {
			return held(ctx, key, func() error { return nil })
		})
		return key, err
	})
	w.Register("throttled_declared", func(ctx *baton.TaskContext, ms int) (int, error) {
		return ms, held(ctx, "*", func() error { return sleep(ctx, ms) })
	}, baton.Throttle(1))
	w.Register("heavy", func(ctx *baton.TaskContext) (string, error) { return ctx.Queue, nil }, baton.Heavy())
	w.Register("nan", func(ctx *baton.TaskContext) (float64, error) { return math.NaN(), nil })
	w.Register("cancellable", func(ctx *baton.TaskContext, ms int) (string, error) {
		if err := sleep(ctx, ms); err != nil {
			return "", err
		}
		return "not cancelled", nil
	})
}

func main() {
	// The usual worker flags: -broker, -queues, -concurrency, -prefetch,
	// -name, -token, -tls, -tls-ca, -tls-cert, -tls-key, -tls-server-name.
	cfg := baton.WorkerConfig{Queues: []string{"general", "heavy"}, Concurrency: 4}
	cfg.RegisterFlags(flag.CommandLine)
	flag.Parse()
	cfg.ApplyFlags()
	w := baton.NewWorker(cfg)
	register(w)
	if err := w.RunWithSignals(context.Background()); err != nil {
		log.Fatal(err)
	}
}
