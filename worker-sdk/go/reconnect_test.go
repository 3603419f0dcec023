package baton_test

import (
	"context"
	"sync"
	"testing"
	"time"

	baton "example.invalid/baton/worker-sdk/go"
	"example.invalid/baton/worker-sdk/go/pb"
)

// A run holding an in-body throttle slot keeps running through a broker
// crash (kill -9) and restart: the worker reconnects, lists the run and its
// slot in Hello.held / held_slots, the broker keeps both, so the run is
// not redelivered (attempt 1 succeeds) and a second run of the same key
// waits until the first leaves its block.
func TestHeldRunAndSlotSurviveBrokerRestart(t *testing.T) {
	b := startBroker(t, baton.Connection{})
	rec := newRecorder()
	release := make(chan struct{})
	started := make(chan string, 4)
	w := newWorker(b, "w-held", nil, 2)
	holder := w.Register("test.hold_slot", func(ctx *baton.TaskContext, label string) (uint32, error) {
		err := ctx.Throttle(baton.Limit{Concurrency: 1, Key: "volume-7"}, func() error {
			rec.enter("volume-7")
			defer rec.leave("volume-7")
			rec.add("enter %s attempt=%d", label, ctx.Attempt)
			started <- label
			if label == "first" {
				<-release
			}
			rec.add("leave %s", label)
			return nil
		})
		return ctx.Attempt, err
	})
	startWorker(t, b, w, "w-held")
	ctx := testCtx(t, 60*time.Second)

	first, err := b.client.Submit(ctx, holder.Si("first"))
	if err != nil {
		t.Fatal(err)
	}
	if got := <-started; got != "first" {
		t.Fatal(got)
	}
	b.kill()
	time.Sleep(200 * time.Millisecond)
	b.start()
	// The worker is back with its run (the broker lists it in flight).
	waitUntil(t, 10*time.Second, "the worker to reconnect with its run", func() bool {
		for _, wi := range b.workers(t) {
			if wi.WorkerName == "w-held" && len(wi.InFlight) == 1 {
				return true
			}
		}
		return false
	})
	second, err := b.client.Submit(ctx, holder.Si("second"))
	if err != nil {
		t.Fatal(err)
	}
	// The second run asks for the slot and must wait: the first still holds it.
	waitUntil(t, 10*time.Second, "the second run to wait for the slot", func() bool {
		resp, err := b.client.Admin().ListThrottles(ctx, &pb.ListThrottlesRequest{})
		if err != nil {
			return false
		}
		for _, th := range resp.Throttles {
			if th.Identity.Key == "volume-7" && len(th.Holders) == 1 && th.Waiters == 1 {
				return true
			}
		}
		return false
	})
	close(release)
	var a1, a2 uint32
	if err := first.Get(ctx, &a1); err != nil || a1 != 1 {
		t.Fatalf("first: attempt %d, %v", a1, err)
	}
	if err := second.Get(ctx, &a2); err != nil {
		t.Fatal(err)
	}
	if most := rec.maxInside("volume-7"); most != 1 {
		t.Fatalf("%d holders at once: %q", most, rec.all())
	}
	if n := rec.count("enter first"); n != 1 {
		t.Fatalf("first entered %d times: %q", n, rec.all())
	}
	if rec.index("enter second attempt=1") < rec.index("leave first") {
		t.Fatalf("second entered before first left: %q", rec.all())
	}
}

// A run that ends while the broker is down keeps its outcome; the worker
// reports it on the next connection and the chain goes on (no second run).
func TestOutcomeOfARunEndedWhileDisconnectedIsReported(t *testing.T) {
	b := startBroker(t, baton.Connection{})
	rec := newRecorder()
	var once sync.Once
	release := make(chan struct{})
	started := make(chan struct{})
	w := newWorker(b, "w-resend", nil, 1)
	step := w.Register("test.step", func(ctx *baton.TaskContext, label string) (string, error) {
		rec.add("%s attempt=%d", label, ctx.Attempt)
		if label == "one" {
			once.Do(func() { close(started) })
			<-release
		}
		return label + " done", nil
	})
	startWorker(t, b, w, "w-resend")
	ctx := testCtx(t, 60*time.Second)

	res, err := b.client.Submit(ctx, baton.NewChain(step.Si("one"), step.S()))
	if err != nil {
		t.Fatal(err)
	}
	<-started
	b.kill()
	close(release) // "one" ends while the broker is down
	time.Sleep(300 * time.Millisecond)
	b.start()
	var got string
	if err := res.Get(ctx, &got); err != nil {
		t.Fatal(err)
	}
	// The mutable second step got "one done" first; JSON of a string arg.
	if got != "one done done" {
		t.Fatalf("result %q", got)
	}
	if n := rec.count("one attempt="); n != 1 {
		t.Fatalf("step one ran %d times: %q", n, rec.all())
	}
	info, _ := res.Info(ctx)
	if info.Steps[0].Attempts != 1 {
		t.Fatalf("attempts %d", info.Steps[0].Attempts)
	}
}

// A worker started while the broker is down keeps trying (backoff) and
// serves once the broker is up.
func TestWorkerWaitsForABrokerThatIsDown(t *testing.T) {
	b := startBroker(t, baton.Connection{})
	b.kill()
	w := newWorker(b, "w-early", nil, 1)
	echo := w.Register("test.echo", func(ctx *baton.TaskContext, s string) (string, error) { return s, nil })
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	time.Sleep(700 * time.Millisecond)
	select {
	case err := <-done:
		t.Fatalf("the worker gave up: %v", err)
	default:
	}
	b.start()
	waitUntil(t, 10*time.Second, "the worker to connect", func() bool { return len(b.workers(t)) == 1 })
	tctx := testCtx(t, 30*time.Second)
	res, err := b.client.Submit(tctx, echo.Si("up"))
	if err != nil {
		t.Fatal(err)
	}
	var got string
	if err := res.Get(tctx, &got); err != nil || got != "up" {
		t.Fatalf("%q %v", got, err)
	}
}
