package baton_test

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel/trace"

	baton "example.invalid/baton/worker-sdk/go"
)

// A chain submitted inside a span carries it to every step and callback:
// the body sees the submitter's trace id, and its context's span (OTel's
// no-op tracer keeps the parent's trace without an SDK) is of that trace.
// An explicit traceparent wins; a malformed one is refused before sending.
func TestTraceReachesEveryStepAndCallback(t *testing.T) {
	b := startBroker(t, baton.Connection{})
	rec := newRecorder()
	w := newWorker(b, "w-trace", nil, 2)
	note := func(ctx *baton.TaskContext) {
		rec.add("%s trace=%s span=%s parent=%s", ctx.Name, ctx.TraceID(),
			trace.SpanContextFromContext(ctx).TraceID(), strings.Split(ctx.Traceparent(), "-")[2])
	}
	step := w.Register("trace.step", func(ctx *baton.TaskContext) error { note(ctx); return nil })
	w.Register("trace.done", func(ctx *baton.TaskContext) error { note(ctx); return nil })
	startWorker(t, b, w, "w-trace")
	ctx := testCtx(t, 30*time.Second)

	tid, _ := trace.TraceIDFromHex("0af7651916cd43dd8448eb211c80319c")
	sid, _ := trace.SpanIDFromHex("b7ad6b7169203331")
	submitter := trace.ContextWithSpanContext(ctx, trace.NewSpanContext(trace.SpanContextConfig{
		TraceID: tid, SpanID: sid, TraceFlags: trace.FlagsSampled,
	}))
	res, err := b.client.Submit(submitter, baton.Chain{
		Steps:     []baton.Signature{step.Si(), step.Si()},
		OnSuccess: []baton.Signature{baton.Si("trace.done")},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := res.Get(ctx, nil); err != nil {
		t.Fatal(err)
	}
	explicit, err := b.client.Submit(submitter, baton.Chain{
		Steps:   []baton.Signature{step.Si()},
		Context: map[string]string{"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := explicit.Get(ctx, nil); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 10*time.Second, "on_success", func() bool { return rec.count("trace.done") == 1 })
	got := rec.all()
	slices.Sort(got)
	want := []string{
		"trace.done trace=0af7651916cd43dd8448eb211c80319c span=0af7651916cd43dd8448eb211c80319c parent=b7ad6b7169203331",
		"trace.step trace=0af7651916cd43dd8448eb211c80319c span=0af7651916cd43dd8448eb211c80319c parent=b7ad6b7169203331",
		"trace.step trace=0af7651916cd43dd8448eb211c80319c span=0af7651916cd43dd8448eb211c80319c parent=b7ad6b7169203331",
		"trace.step trace=4bf92f3577b34da6a3ce929d0e0e4736 span=4bf92f3577b34da6a3ce929d0e0e4736 parent=00f067aa0ba902b7",
	}
	if !slices.Equal(got, want) {
		t.Fatalf("runs saw\n%q\nwant\n%q", got, want)
	}

	_, err = b.client.Submit(context.Background(), baton.Chain{
		Steps:   []baton.Signature{step.Si()},
		Context: map[string]string{"traceparent": "00-00000000000000000000000000000000-b7ad6b7169203331-01"},
	})
	if err == nil || !strings.Contains(err.Error(), `context["traceparent"]`) {
		t.Fatalf("a malformed traceparent: %v", err)
	}
}
