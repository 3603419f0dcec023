package baton_test

import (
	"testing"
	"time"

	baton "example.invalid/baton/worker-sdk/go"
)

// With Prefetch the broker sends assignments beyond the concurrency; they
// wait in the worker and start one by one as slots free (never more bodies
// than Concurrency), and a prefetched run cancelled before it started never
// starts.
func TestPrefetchWaitsForASlotAndCancelledOnesNeverStart(t *testing.T) {
	b := startBroker(t, baton.Connection{})
	rec := newRecorder()
	w := baton.NewWorker(baton.WorkerConfig{Connection: b.conn, Name: "w-prefetch", Concurrency: 1, Prefetch: 3})
	sleep := w.Register("test.sleep", func(ctx *baton.TaskContext, label string, ms int) error {
		rec.enter("body")
		defer rec.leave("body")
		rec.add("start %s", label)
		select {
		case <-time.After(time.Duration(ms) * time.Millisecond):
		case <-ctx.Done():
		}
		return nil
	})
	startWorker(t, b, w, "w-prefetch")
	ctx := testCtx(t, 60*time.Second)

	first, err := b.client.Submit(ctx, sleep.Si("first", 800))
	if err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 10*time.Second, "first to start", func() bool { return rec.index("start first") >= 0 })
	var rest []*baton.Result
	for _, label := range []string{"second", "third", "cancelled"} {
		r, err := b.client.Submit(ctx, sleep.Si(label, 50))
		if err != nil {
			t.Fatal(err)
		}
		rest = append(rest, r)
	}
	// All four are the worker's while only one body runs.
	waitUntil(t, 10*time.Second, "4 assignments in flight", func() bool {
		for _, wi := range b.workers(t) {
			if wi.WorkerName == "w-prefetch" && len(wi.InFlight) == 4 && wi.Prefetch == 3 {
				return true
			}
		}
		return false
	})
	if st, err := rest[2].Cancel(ctx, "not needed"); err != nil || st != baton.StateCancelled {
		t.Fatalf("cancel: %s %v", st, err)
	}
	for _, r := range append([]*baton.Result{first}, rest[:2]...) {
		if _, err := r.Wait(ctx); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(200 * time.Millisecond)
	if got := rec.all(); len(got) != 3 || got[0] != "start first" || got[1] != "start second" || got[2] != "start third" {
		t.Fatalf("starts %q", got)
	}
	if most := rec.maxInside("body"); most != 1 {
		t.Fatalf("%d bodies at once with concurrency 1", most)
	}
}
