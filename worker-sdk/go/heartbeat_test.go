package baton_test

import (
	"strings"
	"testing"
	"time"

	baton "example.invalid/baton/worker-sdk/go"
)

// Heartbeats keep a run's lease (2 s here) alive however long it runs, and
// keep an idle worker's stream open: a 4.5 s run succeeds at attempt 1,
// and the worker keeps its stream while idle for longer than a lease.
func TestHeartbeatsKeepLongRunsAndIdleStreams(t *testing.T) {
	b := startBroker(t, baton.Connection{})
	w := newWorker(b, "w-beat", nil, 1)
	long := w.Register("test.long", func(ctx *baton.TaskContext, ms int) (uint32, error) {
		select {
		case <-time.After(time.Duration(ms) * time.Millisecond):
			return ctx.Attempt, nil
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	})
	startWorker(t, b, w, "w-beat")
	ctx := testCtx(t, 30*time.Second)
	id := w.ID()
	time.Sleep(3 * time.Second) // idle for more than a lease
	if ws := b.workers(t); len(ws) != 1 || ws[0].WorkerId != id {
		t.Fatalf("the idle worker's stream was ended: %v (was %s)", ws, id)
	}
	res, err := b.client.Submit(ctx, long.Si(4500))
	if err != nil {
		t.Fatal(err)
	}
	var attempt uint32
	if err := res.Get(ctx, &attempt); err != nil || attempt != 1 {
		t.Fatalf("attempt %d, %v", attempt, err)
	}
	if w.ID() != id {
		t.Fatal("the worker reconnected")
	}
}

// Keyword arguments reach the body (TaskContext.Kwarg), and a result larger
// than the broker keeps inline (16 KiB) still comes back whole.
func TestKwargsAndLargeResults(t *testing.T) {
	b := startBroker(t, baton.Connection{})
	w := newWorker(b, "w-kw", nil, 1)
	w.Register("test.repeat", func(ctx *baton.TaskContext, s string) (string, error) {
		var n int
		if ok, err := ctx.Kwarg("times", &n); err != nil || !ok {
			return "", baton.Fatal(err)
		}
		return strings.Repeat(s, n), nil
	})
	w.Register("test.length", func(ctx *baton.TaskContext, s string) (int, error) { return len(s), nil })
	startWorker(t, b, w, "w-kw")
	ctx := testCtx(t, 30*time.Second)
	res, err := b.client.Submit(ctx, baton.Si("test.repeat", "ab").WithKwargs(map[string]any{"times": 20000}))
	if err != nil {
		t.Fatal(err)
	}
	var got string
	if err := res.Get(ctx, &got); err != nil || len(got) != 40000 {
		t.Fatalf("%d bytes, %v", len(got), err)
	}
	// The large result handed to a mutable next step.
	res, err = b.client.Submit(ctx, baton.NewChain(baton.Si("test.repeat", "xyz").WithKwargs(map[string]any{"times": 10000}), baton.S("test.length")))
	if err != nil {
		t.Fatal(err)
	}
	var n int
	if err := res.Get(ctx, &n); err != nil || n != 30000 {
		t.Fatalf("%d, %v", n, err)
	}
}
