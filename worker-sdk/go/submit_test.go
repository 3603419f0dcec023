package baton_test

import (
	"errors"
	"slices"
	"testing"
	"time"

	baton "example.invalid/baton/worker-sdk/go"
)

// Routing: an explicit queue, else "heavy" when heavy (declared on the
// task, on the signature or on the chain, for every step), else "general";
// a heavy task never runs on a worker that did not subscribe to "heavy".
func TestHeavyAndQueueRouting(t *testing.T) {
	b := startBroker(t, baton.Connection{})
	rec := newRecorder()
	register := func(w *baton.Worker) {
		w.Register("demo.heavy", func(ctx *baton.TaskContext, i int) error {
			rec.add("heavy %d queue=%s", i, ctx.Queue)
			return nil
		}, baton.Heavy())
		w.Register("demo.any", func(ctx *baton.TaskContext, i int) error {
			rec.add("any %d queue=%s", i, ctx.Queue)
			return nil
		})
	}
	general := newWorker(b, "w-general", []string{"general", "special"}, 2)
	register(general)
	startWorker(t, b, general, "w-general")
	ctx := testCtx(t, 60*time.Second)

	// No heavy worker yet: the heavy task waits, the general one runs.
	heavyRes, err := b.client.Submit(ctx, baton.Si("demo.heavy", 1))
	if err != nil {
		t.Fatal(err)
	}
	anyRes, err := b.client.Submit(ctx, baton.Si("demo.any", 1))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := anyRes.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	if st, _ := heavyRes.Status(ctx); st != baton.StateRunning || rec.count("heavy") != 0 {
		t.Fatalf("heavy ran without a heavy worker: %s %q", st, rec.all())
	}

	heavy := newWorker(b, "w-heavy", []string{"heavy"}, 1)
	register(heavy)
	startWorker(t, b, heavy, "w-heavy")
	chainHeavy, err := b.client.Submit(ctx, baton.Chain{Steps: []baton.Signature{baton.Si("demo.any", 2), baton.Si("demo.any", 3)}, Heavy: true})
	if err != nil {
		t.Fatal(err)
	}
	sigHeavy, err := b.client.Submit(ctx, baton.Si("demo.any", 4).With(baton.Heavy()))
	if err != nil {
		t.Fatal(err)
	}
	queued, err := b.client.Submit(ctx, baton.Chain{Steps: []baton.Signature{baton.Si("demo.any", 5).With(baton.Queue("special"))}, Heavy: true})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range []*baton.Result{heavyRes, chainHeavy, sigHeavy, queued} {
		if _, err := r.Wait(ctx); err != nil {
			t.Fatal(err)
		}
	}
	for _, want := range []string{"heavy 1 queue=heavy", "any 1 queue=general", "any 2 queue=heavy", "any 3 queue=heavy", "any 4 queue=heavy", "any 5 queue=special"} {
		if rec.index(want) < 0 {
			t.Fatalf("no %q in %q", want, rec.all())
		}
	}
}

// Idempotency and unique keys, client-chosen ids, SubmitMany.
func TestIdempotencyUniqueKeysAndSubmitMany(t *testing.T) {
	b := startBroker(t, baton.Connection{})
	release := make(chan struct{})
	w := newWorker(b, "w-keys", nil, 4)
	hold := w.Register("test.hold", func(ctx *baton.TaskContext) error {
		select {
		case <-release:
		case <-ctx.Done():
		}
		return nil
	})
	echo := w.Register("test.echo", func(ctx *baton.TaskContext, v any) (any, error) { return v, nil })
	startWorker(t, b, w, "w-keys")
	ctx := testCtx(t, 60*time.Second)

	first, err := b.client.Submit(ctx, baton.Chain{Steps: []baton.Signature{echo.Si("a")}, IdempotencyKey: "create-vm-42"})
	if err != nil || first.Dedup != baton.DedupNone {
		t.Fatalf("%v %v", first, err)
	}
	again, err := b.client.Submit(ctx, baton.Chain{Steps: []baton.Signature{echo.Si("b")}, IdempotencyKey: "create-vm-42"})
	if err != nil || again.ID != first.ID || again.Dedup != baton.DedupIdempotencyKey {
		t.Fatalf("repeat: %+v %v", again, err)
	}

	u1, err := b.client.Submit(ctx, baton.Chain{Steps: []baton.Signature{hold.Si()}, UniqueKey: "pull-tenant-7"})
	if err != nil {
		t.Fatal(err)
	}
	u2, err := b.client.Submit(ctx, baton.Chain{Steps: []baton.Signature{hold.Si()}, UniqueKey: "pull-tenant-7"})
	if err != nil || u2.ID != u1.ID || u2.Dedup != baton.DedupUniqueKey {
		t.Fatalf("unique: %+v %v", u2, err)
	}
	close(release)
	if _, err := u1.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	u3, err := b.client.Submit(ctx, baton.Chain{Steps: []baton.Signature{hold.Si()}, UniqueKey: "pull-tenant-7"})
	if err != nil || u3.ID == u1.ID || u3.Dedup != baton.DedupNone {
		t.Fatalf("unique after the end: %+v %v", u3, err)
	}

	own := "0190a5b2-7c4e-7a1b-8c3d-1234567890ab"
	r, err := b.client.Submit(ctx, baton.Chain{Steps: []baton.Signature{echo.Si(1)}, ID: own})
	if err != nil || r.ID != own {
		t.Fatalf("own id: %+v %v", r, err)
	}
	r, err = b.client.Submit(ctx, baton.Chain{Steps: []baton.Signature{echo.Si(1)}, ID: own})
	if err != nil || r.Dedup != baton.DedupChainID {
		t.Fatalf("own id again: %+v %v", r, err)
	}

	var items []baton.Submittable
	for i := range 1500 { // two SubmitChains calls
		items = append(items, echo.Si(i))
	}
	results, err := b.client.SubmitMany(ctx, items...)
	if err != nil || len(results) != 1500 {
		t.Fatalf("%d %v", len(results), err)
	}
	for _, i := range []int{0, 999, 1000, 1499} {
		var got int
		if err := results[i].Get(ctx, &got); err != nil || got != i {
			t.Fatalf("item %d: %d %v", i, got, err)
		}
	}

	// A bad chain is refused whole with INVALID_ARGUMENT naming it.
	_, err = b.client.SubmitMany(ctx, echo.Si(1), baton.Si("test.echo", 1).With(baton.Queue("bad queue!")))
	if err == nil {
		t.Fatal("a bad queue name was accepted")
	}
	t.Logf("refused: %v", err)
}

// Countdown and ETA delay a step; a chain deadline fails it with
// DeadlineExceeded and runs on_failure.
func TestCountdownEtaAndDeadline(t *testing.T) {
	b := startBroker(t, baton.Connection{})
	rec := newRecorder()
	w := newWorker(b, "w-time", nil, 2)
	stamp := w.Register("test.stamp", func(ctx *baton.TaskContext, label string) error {
		rec.add("%s", label)
		return nil
	})
	w.Register("test.sleep", func(ctx *baton.TaskContext, ms int) error {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Duration(ms) * time.Millisecond):
			return nil
		}
	})
	w.Register("test.erred", func(ctx *baton.TaskContext, r baton.FailureRecord) error {
		rec.add("erred %s", r.ErrorType)
		return nil
	})
	startWorker(t, b, w, "w-time")
	ctx := testCtx(t, 60*time.Second)

	start := time.Now()
	cd, err := b.client.Submit(ctx, stamp.Si("countdown").With(baton.Countdown(700*time.Millisecond)))
	if err != nil {
		t.Fatal(err)
	}
	eta, err := b.client.Submit(ctx, stamp.Si("eta").With(baton.ETA(time.Now().Add(900*time.Millisecond))))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cd.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < 650*time.Millisecond {
		t.Fatalf("countdown step ran after %s", d)
	}
	if _, err := eta.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < 850*time.Millisecond {
		t.Fatalf("eta step ran after %s", d)
	}

	res, err := b.client.Submit(ctx, baton.Chain{
		Steps:     []baton.Signature{baton.Si("test.sleep", 10000), stamp.Si("never")},
		OnFailure: []baton.Signature{baton.S("test.erred")},
		Deadline:  time.Now().Add(500 * time.Millisecond),
	})
	if err != nil {
		t.Fatal(err)
	}
	_, err = res.Wait(ctx)
	var failed *baton.ChainFailedError
	if !errors.As(err, &failed) || failed.Record.ErrorType != "DeadlineExceeded" {
		t.Fatalf("deadline: %v", err)
	}
	waitUntil(t, 10*time.Second, "on_failure", func() bool { return rec.count("erred DeadlineExceeded") == 1 })
	if slices.Contains(rec.all(), "never") {
		t.Fatal("a step after the deadline ran")
	}
}
