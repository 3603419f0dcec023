package baton_test

import (
	"sync/atomic"
	"testing"
	"time"

	baton "example.invalid/baton/worker-sdk/go"
)

// Many short tasks through two prefetching workers: every chain ends
// succeeded, every body ran exactly once, and the workers never run more
// bodies at once than their concurrency.
func TestManyShortTasksWithPrefetch(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	b := startBroker(t, baton.Connection{})
	var ran atomic.Int64
	rec := newRecorder()
	for _, name := range []string{"w-load-1", "w-load-2"} {
		w := baton.NewWorker(baton.WorkerConfig{Connection: b.conn, Name: name, Concurrency: 4, Prefetch: 8})
		label := name
		w.Register("test.noop", func(ctx *baton.TaskContext, i int) (int, error) {
			rec.enter(label)
			defer rec.leave(label)
			ran.Add(1)
			return i, nil
		})
		startWorker(t, b, w, name)
	}
	ctx := testCtx(t, 120*time.Second)
	const n = 2000
	items := make([]baton.Submittable, n)
	for i := range items {
		items[i] = baton.Si("test.noop", i)
	}
	start := time.Now()
	results, err := b.client.SubmitMany(ctx, items...)
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range results {
		var got int
		if err := r.Get(ctx, &got); err != nil || got != i {
			t.Fatalf("chain %d: %d %v", i, got, err)
		}
	}
	t.Logf("%d tasks in %s", n, time.Since(start))
	if ran.Load() != n {
		t.Fatalf("%d runs for %d tasks", ran.Load(), n)
	}
	for _, name := range []string{"w-load-1", "w-load-2"} {
		if most := rec.maxInside(name); most > 4 {
			t.Fatalf("%s ran %d bodies at once", name, most)
		}
	}
}
