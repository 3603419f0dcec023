package baton_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	baton "example.invalid/baton/worker-sdk/go"
	"example.invalid/baton/worker-sdk/go/pb"
)

// Retryable errors are retried while MaxRetries (a task default announced
// to the broker, or a signature option) allows; Fatal is never retried.
func TestRetriesCountAndFatal(t *testing.T) {
	b := startBroker(t, baton.Connection{})
	rec := newRecorder()
	w := newWorker(b, "w-retry", nil, 2)
	failOnce := w.Register("test.fail_once", func(ctx *baton.TaskContext) (uint32, error) {
		rec.add("fail_once attempt=%d retries=%d", ctx.Attempt, ctx.Retries)
		if ctx.Attempt == 1 {
			return 0, errors.New("flaky")
		}
		return ctx.Attempt, nil
	}, baton.MaxRetries(3), baton.RetryBackoff(50*time.Millisecond, 100*time.Millisecond))
	w.Register("test.fail_always", func(ctx *baton.TaskContext) error {
		rec.add("fail_always %d", ctx.Attempt)
		return fmt.Errorf("attempt %d failed", ctx.Attempt)
	})
	fatal := w.Register("test.fatal", func(ctx *baton.TaskContext) error {
		rec.add("fatal %d", ctx.Attempt)
		return baton.Fatal(&quotaError{tenant: "x"})
	}, baton.MaxRetries(5))
	startWorker(t, b, w, "w-retry")
	ctx := testCtx(t, 60*time.Second)

	// Declared on the task only: a submitter by name gets the retries too.
	res, err := b.client.Submit(ctx, baton.Si(failOnce.Name))
	if err != nil {
		t.Fatal(err)
	}
	var attempt uint32
	if err := res.Get(ctx, &attempt); err != nil || attempt != 2 {
		t.Fatalf("fail_once: %d %v", attempt, err)
	}
	info, _ := res.Info(ctx)
	if s := info.Steps[0]; s.Attempts != 2 || s.Retries != 1 {
		t.Fatalf("fail_once step: attempts %d retries %d", s.Attempts, s.Retries)
	}

	// On the signature: 2 retries, so 3 runs, then the chain fails.
	res, err = b.client.Submit(ctx, baton.Si("test.fail_always").With(baton.MaxRetries(2), baton.RetryBackoff(20*time.Millisecond, 0)))
	if err != nil {
		t.Fatal(err)
	}
	_, err = res.Wait(ctx)
	var failed *baton.ChainFailedError
	if !errors.As(err, &failed) || failed.Record.Attempt != 3 || failed.Record.Message != "attempt 3 failed" {
		t.Fatalf("fail_always: %v", err)
	}
	if failed.Record.ErrorType != "*errors.errorString" {
		t.Fatalf("error type %q", failed.Record.ErrorType)
	}
	if n := rec.count("fail_always"); n != 3 {
		t.Fatalf("fail_always ran %d times", n)
	}

	// Fatal: one run despite MaxRetries(5).
	res, err = b.client.Submit(ctx, fatal.Si())
	if err != nil {
		t.Fatal(err)
	}
	if _, err = res.Wait(ctx); !errors.As(err, &failed) || failed.Record.Attempt != 1 || failed.Record.ErrorType != "*baton_test.quotaError" {
		t.Fatalf("fatal: %v", err)
	}
	if n := rec.count("fatal"); n != 1 {
		t.Fatalf("fatal ran %d times", n)
	}
}

// RetryLater keeps the step's place and spends its poll budget; no callback
// fires until the budget runs out, then PollBudgetExhausted.
func TestRetryLaterPollsThenSucceedsOrExhaustsBudget(t *testing.T) {
	b := startBroker(t, baton.Connection{})
	rec := newRecorder()
	w := newWorker(b, "w-poll", nil, 2)
	poll := w.Register("test.retry_later_n", func(ctx *baton.TaskContext, n uint32) (uint32, error) {
		rec.add("poll %d", ctx.Polls)
		if ctx.Polls < n {
			return 0, baton.RetryLater(30*time.Millisecond, "volume not ready")
		}
		return ctx.Polls, nil
	})
	w.Register("test.after", func(ctx *baton.TaskContext) error { rec.add("after"); return nil })
	w.Register("test.erred", func(ctx *baton.TaskContext, r baton.FailureRecord) error {
		rec.add("erred %s", r.ErrorType)
		return nil
	})
	startWorker(t, b, w, "w-poll")
	ctx := testCtx(t, 60*time.Second)

	res, err := b.client.Submit(ctx, baton.NewChain(poll.Si(3), baton.Si("test.after")))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := res.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	info, _ := res.Info(ctx)
	if s := info.Steps[0]; s.Polls != 3 || s.Attempts != 4 || s.Retries != 0 {
		t.Fatalf("polls %d attempts %d retries %d", s.Polls, s.Attempts, s.Retries)
	}
	if rec.index("after") != 4 {
		t.Fatalf("events %q", rec.all())
	}

	res, err = b.client.Submit(ctx, baton.Chain{
		Steps:     []baton.Signature{poll.Si(100).With(baton.MaxPolls(2))},
		OnFailure: []baton.Signature{baton.S("test.erred")},
	})
	if err != nil {
		t.Fatal(err)
	}
	_, err = res.Wait(ctx)
	var failed *baton.ChainFailedError
	if !errors.As(err, &failed) || failed.Record.ErrorType != "PollBudgetExhausted" {
		t.Fatalf("wait: %v", err)
	}
	waitUntil(t, 10*time.Second, "on_failure", func() bool { return rec.count("erred PollBudgetExhausted") == 1 })
}

// Cancelling a chain cancels the running body's context (its cause says
// why), its later steps never start, and no callback runs.
func TestCancelReachesTheBody(t *testing.T) {
	b := startBroker(t, baton.Connection{})
	rec := newRecorder()
	started := make(chan struct{}, 1)
	causes := make(chan error, 1)
	w := newWorker(b, "w-cancel", nil, 2)
	long := w.Register("test.cancellable", func(ctx *baton.TaskContext) error {
		started <- struct{}{}
		select {
		case <-ctx.Done():
			causes <- context.Cause(ctx)
			return ctx.Err()
		case <-time.After(20 * time.Second):
			return nil
		}
	})
	w.Register("test.next", func(ctx *baton.TaskContext) error { rec.add("next"); return nil })
	w.Register("test.callback", func(ctx *baton.TaskContext) error { rec.add("callback"); return nil })
	startWorker(t, b, w, "w-cancel")
	ctx := testCtx(t, 30*time.Second)

	res, err := b.client.Submit(ctx, baton.Chain{
		Steps:     []baton.Signature{long.Si(), baton.Si("test.next")},
		OnSuccess: []baton.Signature{baton.Si("test.callback")},
		OnFailure: []baton.Signature{baton.Si("test.callback")},
	})
	if err != nil {
		t.Fatal(err)
	}
	<-started
	state, err := res.Cancel(ctx, "user asked")
	if err != nil || state != baton.StateCancelled {
		t.Fatalf("cancel: %s %v", state, err)
	}
	select {
	case cause := <-causes:
		var c *baton.CancelledError
		if !errors.As(cause, &c) {
			t.Fatalf("cause %v", cause)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the body's context was not cancelled")
	}
	_, err = res.Wait(ctx)
	var cancelled *baton.ChainCancelledError
	if !errors.As(err, &cancelled) || cancelled.ChainID != res.ID {
		t.Fatalf("wait: %v", err)
	}
	time.Sleep(300 * time.Millisecond)
	if ev := rec.all(); len(ev) != 0 {
		t.Fatalf("ran after cancel: %q", ev)
	}
	info, _ := res.Info(ctx)
	if info.Steps[1].State == pb.StepState_STEP_STATE_SUCCEEDED {
		t.Fatal("step 2 ran")
	}
}

// A time limit makes the broker cancel the run: the body's context ends.
func TestTimeLimitCancelsTheBody(t *testing.T) {
	b := startBroker(t, baton.Connection{})
	w := newWorker(b, "w-limit", nil, 1)
	slow := w.Register("test.sleep", func(ctx *baton.TaskContext, ms int) error {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Duration(ms) * time.Millisecond):
			return nil
		}
	}, baton.TimeLimit(300*time.Millisecond))
	startWorker(t, b, w, "w-limit")
	ctx := testCtx(t, 30*time.Second)
	res, err := b.client.Submit(ctx, slow.Si(20000))
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err = res.Wait(ctx)
	var failed *baton.ChainFailedError
	if !errors.As(err, &failed) || failed.Record.ErrorType != "TimeLimitExceeded" {
		t.Fatalf("wait: %v", err)
	}
	if time.Since(start) > 10*time.Second {
		t.Fatalf("took %s", time.Since(start))
	}
}
