package baton_test

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	baton "example.invalid/baton/worker-sdk/go"
)

// proxy forwards 127.0.0.1 connections to the broker; cut() drops every
// connection and refuses new ones until heal(): a network partition.
type proxy struct {
	addr   string
	target string
	l      net.Listener
	mu     sync.Mutex
	cutOff bool
	conns  []net.Conn
}

func startProxy(t *testing.T, target string) *proxy {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{addr: l.Addr().String(), target: target, l: l}
	t.Cleanup(func() { l.Close(); p.cut() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			p.mu.Lock()
			if p.cutOff {
				p.mu.Unlock()
				c.Close()
				continue
			}
			up, err := net.Dial("tcp", target)
			if err != nil {
				p.mu.Unlock()
				c.Close()
				continue
			}
			p.conns = append(p.conns, c, up)
			p.mu.Unlock()
			go func() { _, _ = io.Copy(up, c); up.Close() }()
			go func() { _, _ = io.Copy(c, up); c.Close() }()
		}
	}()
	return p
}

func (p *proxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cutOff = true
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}

func (p *proxy) heal() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cutOff = false
}

// A worker cut off for longer than its lease gets its run declared lost on
// reconnect (Welcome.lost): the body's context is cancelled ("lease lost"),
// its outcome is never reported, and the broker's redelivery (attempt 2)
// completes the chain. A blip shorter than the lease keeps the run.
func TestPartitionLongerThanTheLeaseLosesTheRun(t *testing.T) {
	b := startBroker(t, baton.Connection{})
	p := startProxy(t, b.addr)
	rec := newRecorder()
	causes := make(chan error, 4)
	w := baton.NewWorker(baton.WorkerConfig{Connection: baton.Connection{Address: p.addr}, Name: "w-cut", Concurrency: 2})
	step := w.Register("test.step", func(ctx *baton.TaskContext, ms int) (uint32, error) {
		rec.add("start attempt=%d", ctx.Attempt)
		if ctx.Attempt > 1 {
			return ctx.Attempt, nil // the redelivery is quick
		}
		select {
		case <-time.After(time.Duration(ms) * time.Millisecond):
			rec.add("end attempt=%d", ctx.Attempt)
			return ctx.Attempt, nil
		case <-ctx.Done():
			causes <- context.Cause(ctx)
			return 0, ctx.Err()
		}
	})
	startWorker(t, b, w, "w-cut")
	ctx := testCtx(t, 60*time.Second)

	// A blip shorter than the lease: the run is kept and finishes as attempt 1.
	res, err := b.client.Submit(ctx, step.Si(1500))
	if err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 10*time.Second, "attempt 1", func() bool { return rec.index("start attempt=1") >= 0 })
	p.cut()
	time.Sleep(300 * time.Millisecond)
	p.heal()
	var attempt uint32
	if err := res.Get(ctx, &attempt); err != nil || attempt != 1 {
		t.Fatalf("after a blip: attempt %d, %v", attempt, err)
	}

	// A partition longer than the lease (2 s): the run is lost.
	rec = newRecorder()
	res, err = b.client.Submit(ctx, step.Si(30000))
	if err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 10*time.Second, "attempt 1", func() bool { return rec.index("start attempt=1") >= 0 })
	p.cut()
	time.Sleep(3500 * time.Millisecond)
	p.heal()
	select {
	case cause := <-causes:
		var c *baton.CancelledError
		if !errors.As(cause, &c) || !strings.Contains(c.Reason, "lease") {
			t.Fatalf("cause %v", cause)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("the lost run's context was not cancelled")
	}
	if err := res.Get(ctx, &attempt); err != nil || attempt < 2 {
		t.Fatalf("after the partition: attempt %d, %v", attempt, err)
	}
	if rec.index("end attempt=1") >= 0 {
		t.Fatalf("the lost run went on: %q", rec.all())
	}
}
