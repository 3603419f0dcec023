package baton_test

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	baton "example.invalid/baton/worker-sdk/go"
	"example.invalid/baton/worker-sdk/go/pb"
)

// quotaError is a task's own error type; the failure record must name it.
type quotaError struct{ tenant string }

func (e *quotaError) Error() string { return "quota exceeded for " + e.tenant }

// Steps run in order, a mutable step gets the previous result first,
// on_success gets the last result, the context map reaches every step, and
// on_failure never runs for a chain that succeeded.
func TestChainOrderResultsAndOnSuccess(t *testing.T) {
	b := startBroker(t, baton.Connection{})
	rec := newRecorder()
	w := newWorker(b, "w-chain", nil, 4)
	add := w.Register("test.add", func(ctx *baton.TaskContext, x, y int) (int, error) {
		rec.add("add %d %d user=%s phase=%s step=%d", x, y, ctx.ChainContext["user"], ctx.Phase, ctx.StepIndex)
		return x + y, nil
	})
	double := w.Register("test.double", func(ctx *baton.TaskContext, x int) (int, error) {
		time.Sleep(50 * time.Millisecond) // a slow step must still come before the next
		rec.add("double %d", x)
		return 2 * x, nil
	})
	w.Register("test.done", func(ctx *baton.TaskContext, result int, label string) error {
		rec.add("done %d %s phase=%s", result, label, ctx.Phase)
		return nil
	})
	w.Register("test.erred", func(ctx *baton.TaskContext, rec baton.FailureRecord) error {
		return errors.New("on_failure must not run")
	})
	startWorker(t, b, w, "w-chain")
	ctx := testCtx(t, 30*time.Second)

	res, err := b.client.Submit(ctx, baton.Chain{
		Steps:     []baton.Signature{add.Si(1, 2), double.S(), add.S(10)},
		OnSuccess: []baton.Signature{baton.S("test.done", "ok")},
		OnFailure: []baton.Signature{baton.S("test.erred")},
		Context:   map[string]string{"user": "alice"},
	})
	if err != nil {
		t.Fatal(err)
	}
	var got int
	if err := res.Get(ctx, &got); err != nil {
		t.Fatal(err)
	}
	if got != 16 { // (1+2)*2 + 10
		t.Fatalf("result %d, want 16", got)
	}
	want := []string{"add 1 2 user=alice phase=main step=0", "double 3", "add 6 10 user=alice phase=main step=2"}
	waitUntil(t, 10*time.Second, "on_success", func() bool { return rec.count("done") == 1 })
	events := rec.all()
	if !slices.Equal(events[:3], want) || events[3] != "done 16 ok phase=on_success" {
		t.Fatalf("events %q", events)
	}
	info, err := res.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State != pb.ChainState_CHAIN_STATE_SUCCEEDED || info.OnFailure[0].State == pb.StepState_STEP_STATE_SUCCEEDED {
		t.Fatalf("chain %v, on_failure %v", info.State, info.OnFailure[0].State)
	}
	if st, _ := res.Status(ctx); st != baton.StateSucceeded {
		t.Fatalf("status %s", st)
	}
}

// A failed step runs on_failure once with the failure record first: the
// Go error's own type, message and stack; on_success does not run, and
// waiting returns ChainFailedError with the same record.
func TestOnFailureGetsFailureRecordWithGoErrorAndStack(t *testing.T) {
	b := startBroker(t, baton.Connection{})
	rec := newRecorder()
	records := make(chan baton.FailureRecord, 4)
	w := newWorker(b, "w-fail", nil, 2)
	create := w.Register("test.create_vm", func(ctx *baton.TaskContext, uuid string) error {
		rec.add("create %s", uuid)
		return baton.Errorf("provisioning %s: %w", uuid, &quotaError{tenant: "t-42"})
	})
	w.Register("test.set_ok", func(ctx *baton.TaskContext, uuid string) error {
		rec.add("set_ok %s", uuid)
		return nil
	})
	w.Register("test.set_erred", func(ctx *baton.TaskContext, failure baton.FailureRecord, uuid string) error {
		rec.add("set_erred %s", uuid)
		records <- failure
		return nil
	})
	startWorker(t, b, w, "w-fail")
	ctx := testCtx(t, 30*time.Second)

	res, err := b.client.Submit(ctx, baton.Chain{
		Steps:     []baton.Signature{create.Si("vm-1")},
		OnSuccess: []baton.Signature{baton.Si("test.set_ok", "vm-1")},
		OnFailure: []baton.Signature{baton.S("test.set_erred", "vm-1")},
	})
	if err != nil {
		t.Fatal(err)
	}
	_, err = res.Wait(ctx)
	var failed *baton.ChainFailedError
	if !errors.As(err, &failed) {
		t.Fatalf("Wait: %v, want ChainFailedError", err)
	}
	var r baton.FailureRecord
	select {
	case r = <-records:
	case <-ctx.Done():
		t.Fatal("on_failure did not run")
	}
	if r.ChainID != res.ID || r.Phase != "main" || r.StepIndex != 0 || r.TaskName != "test.create_vm" || r.Attempt != 1 {
		t.Fatalf("record %+v", r)
	}
	if r.ErrorType != "*baton_test.quotaError" || r.Message != "provisioning vm-1: quota exceeded for t-42" {
		t.Fatalf("error type %q message %q", r.ErrorType, r.Message)
	}
	for _, want := range []string{"*baton_test.quotaError: quota exceeded for t-42", "stack:", "TestOnFailureGetsFailureRecordWithGoErrorAndStack", "chain_test.go:"} {
		if !strings.Contains(r.Traceback, want) {
			t.Fatalf("traceback lacks %q:\n%s", want, r.Traceback)
		}
	}
	if failed.Record.ErrorType != r.ErrorType || failed.Record.Traceback != r.Traceback {
		t.Fatalf("ChainFailedError record %+v", failed.Record)
	}
	time.Sleep(200 * time.Millisecond)
	if got := rec.all(); !slices.Equal(got, []string{"create vm-1", "set_erred vm-1"}) {
		t.Fatalf("events %q", got)
	}
}

// A panic is a failure with the panic's stack; a wrong argument type is a
// fatal InvalidArguments failure; an unencodable result is EncodeError.
func TestPanicsAndBadArgumentsAreFailures(t *testing.T) {
	b := startBroker(t, baton.Connection{})
	w := newWorker(b, "w-panic", nil, 2)
	w.Register("test.panics", func(ctx *baton.TaskContext, n int) (int, error) {
		return 10 / n, nil // integer divide by zero for n = 0
	})
	w.Register("test.wants_int", func(ctx *baton.TaskContext, n int) error { return nil })
	w.Register("test.unencodable", func(ctx *baton.TaskContext) (any, error) { return func() {}, nil })
	startWorker(t, b, w, "w-panic")
	ctx := testCtx(t, 30*time.Second)

	check := func(sig baton.Signature, errorType string, contains ...string) {
		t.Helper()
		res, err := b.client.Submit(ctx, sig)
		if err != nil {
			t.Fatal(err)
		}
		_, err = res.Wait(ctx)
		var failed *baton.ChainFailedError
		if !errors.As(err, &failed) {
			t.Fatalf("%s: %v", sig.Name, err)
		}
		if failed.Record.ErrorType != errorType {
			t.Fatalf("%s: error type %q, want %q (%s)", sig.Name, failed.Record.ErrorType, errorType, failed.Record.Message)
		}
		for _, c := range contains {
			if !strings.Contains(failed.Record.Message+failed.Record.Traceback, c) {
				t.Fatalf("%s: record lacks %q: %+v", sig.Name, c, failed.Record)
			}
		}
	}
	check(baton.Si("test.panics", 0), "runtime.errorString", "integer divide by zero", "goroutine", "chain_test.go")
	check(baton.Si("test.wants_int", "not a number"), baton.ErrorTypeInvalidArguments, "does not decode into int")
	check(baton.Si("test.wants_int"), baton.ErrorTypeInvalidArguments, "takes 1 argument(s), got 0")
	check(baton.Si("test.unencodable"), baton.ErrorTypeEncode)
}

func TestWatchYieldsEventsUntilTheEnd(t *testing.T) {
	b := startBroker(t, baton.Connection{})
	w := newWorker(b, "w-watch", nil, 1)
	noop := w.Register("test.noop", func(ctx *baton.TaskContext) error { return nil })
	// The first step naps so that the watch opens while the chain runs: a
	// watch opened after the end gets only the snapshot, which says so.
	nap := w.Register("test.nap", func(ctx *baton.TaskContext) error {
		time.Sleep(300 * time.Millisecond)
		return nil
	})
	startWorker(t, b, w, "w-watch")
	ctx := testCtx(t, 30*time.Second)
	res, err := b.client.Submit(ctx, baton.NewChain(nap.Si(), noop.Si()))
	if err != nil {
		t.Fatal(err)
	}
	var kinds []string
	for ev, err := range res.Watch(ctx) {
		if err != nil {
			t.Fatal(err)
		}
		kinds = append(kinds, ev.Kind)
	}
	if kinds[0] != "snapshot" || kinds[len(kinds)-1] != "chain_succeeded" {
		t.Fatalf("kinds %q", kinds)
	}
}
