package baton_test

import (
	"errors"
	"fmt"
	"testing"
	"time"

	baton "example.invalid/baton/worker-sdk/go"
)

// The seed's demo: two chains slow(uuid) -> fast(uuid) with an in-body
// throttle of concurrency 1 keyed by the uuid. The slow parts never overlap
// though the worker has free slots, and each fast follows its own slow.
func TestInBodyThrottleSeedDemo(t *testing.T) {
	b := startBroker(t, baton.Connection{})
	rec := newRecorder()
	w := newWorker(b, "w-seed", nil, 4)
	slow := w.Register("demo.slow", func(ctx *baton.TaskContext, uuid int) (any, error) {
		key := fmt.Sprintf("vm:%d", uuid)
		err := ctx.Throttle(baton.Limit{Concurrency: 1, Key: key}, func() error {
			rec.enter(key)
			defer rec.leave(key)
			rec.add("start %d %s", uuid, ctx.ChainID)
			time.Sleep(300 * time.Millisecond)
			rec.add("end %d %s", uuid, ctx.ChainID)
			return nil
		})
		return nil, err
	})
	fast := w.Register("demo.fast", func(ctx *baton.TaskContext, uuid int) (any, error) {
		rec.add("fast %d %s", uuid, ctx.ChainID)
		return nil, nil
	})
	startWorker(t, b, w, "w-seed")
	ctx := testCtx(t, 60*time.Second)

	var results []*baton.Result
	for range 3 {
		r, err := b.client.Submit(ctx, baton.NewChain(slow.Si(10), fast.Si(10)))
		if err != nil {
			t.Fatal(err)
		}
		results = append(results, r)
	}
	for _, r := range results {
		if _, err := r.Wait(ctx); err != nil {
			t.Fatal(err)
		}
		for _, ev := range []string{"start", "end", "fast"} {
			if rec.index(fmt.Sprintf("%s 10 %s", ev, r.ID)) < 0 {
				t.Fatalf("no %s for %s: %q", ev, r.ID, rec.all())
			}
		}
		if !(rec.index("end 10 "+r.ID) < rec.index("fast 10 "+r.ID)) {
			t.Fatalf("fast before its slow ended: %q", rec.all())
		}
	}
	if most := rec.maxInside("vm:10"); most != 1 {
		t.Fatalf("%d holders of vm:10 at once", most)
	}
}

// A throttle declared on the task (the seed's @throttle) is enforced by the
// broker: never more holders than its concurrency, though the worker could
// run more; a shared key limits several task names together.
func TestDeclaredAndSharedThrottlesNeverExceedTheLimit(t *testing.T) {
	b := startBroker(t, baton.Connection{})
	rec := newRecorder()
	w := newWorker(b, "w-declared", nil, 6)
	body := func(label string) func(ctx *baton.TaskContext, i int) error {
		return func(ctx *baton.TaskContext, i int) error {
			rec.enter(label)
			defer rec.leave(label)
			time.Sleep(80 * time.Millisecond)
			rec.add("%s %d", label, i)
			return nil
		}
	}
	dangerous := w.Register("demo.dangerous", body("dangerous"), baton.Throttle(1))
	pair := w.Register("demo.pair", body("pair"), baton.Throttle(2))
	// Two task names sharing the identity "tenant:42", at most 1 between them.
	shared := baton.ThrottleLimit(baton.Limit{Concurrency: 1, Key: "tenant:42", Shared: true})
	w.Register("demo.tenant_a", func(ctx *baton.TaskContext, i int) error { return body("tenant")(ctx, i) }, shared)
	w.Register("demo.tenant_b", func(ctx *baton.TaskContext, i int) error { return body("tenant")(ctx, i) }, shared)
	startWorker(t, b, w, "w-declared")
	ctx := testCtx(t, 60*time.Second)

	var items []baton.Submittable
	for i := range 4 {
		items = append(items, dangerous.Si(i), pair.Si(i), baton.Si("demo.tenant_a", i), baton.Si("demo.tenant_b", i))
	}
	results, err := b.client.SubmitMany(ctx, items...)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range results {
		if _, err := r.Wait(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if got := rec.maxInside("dangerous"); got != 1 {
		t.Fatalf("dangerous: %d at once", got)
	}
	if got := rec.maxInside("pair"); got < 1 || got > 2 {
		t.Fatalf("pair: %d at once", got)
	}
	if got := rec.maxInside("tenant"); got != 1 {
		t.Fatalf("tenant:42: %d at once", got)
	}
	if n := rec.count(""); n != 16 {
		t.Fatalf("%d runs", n)
	}
}

// A throttle the broker would refuse (a shared throttle needs a key) fails
// the run fatally with ThrottleRefused, without retries.
func TestRefusedInBodyThrottle(t *testing.T) {
	b := startBroker(t, baton.Connection{})
	w := newWorker(b, "w-refused", nil, 1)
	bad := w.Register("test.bad_throttle", func(ctx *baton.TaskContext) error {
		return ctx.Throttle(baton.Limit{Shared: true, Key: ""}, func() error { return nil })
	}, baton.MaxRetries(3))
	startWorker(t, b, w, "w-refused")
	ctx := testCtx(t, 30*time.Second)
	res, err := b.client.Submit(ctx, bad.Si())
	if err != nil {
		t.Fatal(err)
	}
	_, err = res.Wait(ctx)
	var failed *baton.ChainFailedError
	if !errors.As(err, &failed) || failed.Record.ErrorType != baton.ErrorTypeThrottleRefused || failed.Record.Attempt != 1 {
		t.Fatalf("wait: %v", err)
	}
}

// A chain-scoped throttle (ScopeChain) is held by the chain from its first
// dispatch through its remaining steps: two chains of the same shared key
// never overlap, step 2 included.
func TestChainScopedThrottleIsHeldAcrossTheChain(t *testing.T) {
	b := startBroker(t, baton.Connection{})
	rec := newRecorder()
	w := newWorker(b, "w-chain-scope", nil, 4)
	provision := w.Register("test.provision", func(ctx *baton.TaskContext, chain int) error {
		rec.enter("tenant")
		rec.add("provision %d", chain)
		time.Sleep(150 * time.Millisecond)
		return nil
	}, baton.ThrottleLimit(baton.Limit{Concurrency: 1, Key: "tenant:9", Shared: true, Scope: baton.ScopeChain}))
	finish := w.Register("test.finish", func(ctx *baton.TaskContext, chain int) error {
		time.Sleep(150 * time.Millisecond)
		rec.add("finish %d", chain)
		rec.leave("tenant")
		return nil
	})
	startWorker(t, b, w, "w-chain-scope")
	ctx := testCtx(t, 30*time.Second)
	var results []*baton.Result
	for i := range 3 {
		r, err := b.client.Submit(ctx, baton.NewChain(provision.Si(i), finish.Si(i)))
		if err != nil {
			t.Fatal(err)
		}
		results = append(results, r)
	}
	for _, r := range results {
		if _, err := r.Wait(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if most := rec.maxInside("tenant"); most != 1 {
		t.Fatalf("%d chains inside at once: %q", most, rec.all())
	}
}
