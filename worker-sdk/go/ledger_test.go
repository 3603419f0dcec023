package baton

import (
	"errors"
	"slices"
	"testing"

	"google.golang.org/protobuf/reflect/protoreflect"

	"example.invalid/baton/worker-sdk/go/pb"
)

// Unit tests of the ledger (no broker): the bookkeeping that outlives a
// connection.

func acquireMsg(id uint64, t taskRef) *pb.ThrottleAcquire {
	return &pb.ThrottleAcquire{RequestId: id, Task: t.pb(), Throttle: &pb.Throttle{Concurrency: 1, Key: "k"}}
}

func success() *pb.Outcome { return fromResult(1, "t") }

func TestLedgerHeldAndResentOnReconnect(t *testing.T) {
	l := newLedger()
	a, b := taskRef{"a", 1}, taskRef{"b", 2}
	idA, _ := l.start(a, func(error) {})
	idB, _ := l.start(b, func(error) {})
	if _, ok := l.start(a, func(error) {}); ok {
		t.Fatal("the same attempt started twice")
	}
	// b holds a slot; a finished while disconnected (link 0).
	reply := make(chan error, 1)
	if !l.request(acquireMsg(7, b), reply, 1) {
		t.Fatal("request refused")
	}
	if rel := l.granted(7, 1); rel != nil || <-reply != nil {
		t.Fatal("grant not delivered")
	}
	if out := l.finish(a, idA, success(), 0); out == nil || out.Task.TaskId != "a" {
		t.Fatalf("finish: %v", out)
	}
	held, slots := l.held()
	if len(held) != 2 || held[0].TaskId != "a" || held[1].TaskId != "b" || len(slots) != 1 || slots[0].RequestId != 7 {
		t.Fatalf("held %v slots %v", held, slots)
	}
	// The broker keeps both: a's outcome goes out again on link 2, once.
	lost, resend := l.reconcile([]*pb.TaskRef{a.pb(), b.pb()}, 2)
	if len(lost) != 0 || len(resend) != 1 || resend[0].GetOutcome().GetTask().GetTaskId() != "a" {
		t.Fatalf("lost %v resend %v", lost, resend)
	}
	if _, again := l.reconcile([]*pb.TaskRef{a.pb(), b.pb()}, 2); len(again) != 0 {
		t.Fatal("re-sent twice on one link")
	}
	if !l.acknowledged(a) || l.len() != 1 {
		t.Fatal("ack")
	}
	// b released its slot: the release is carried by every new link until b ends.
	if rel := l.release(7, 2); rel == nil || rel.RequestId != 7 {
		t.Fatalf("release %v", rel)
	}
	if _, resend := l.reconcile([]*pb.TaskRef{b.pb()}, 3); len(resend) != 1 || resend[0].GetThrottleRelease() == nil {
		t.Fatalf("resend %v", resend)
	}
	if out := l.finish(b, idB, success(), 3); out == nil {
		t.Fatal("finish b")
	}
	if _, resend := l.reconcile([]*pb.TaskRef{b.pb()}, 4); len(resend) != 1 || resend[0].GetOutcome() == nil {
		t.Fatalf("after the end only the outcome: %v", resend)
	}
}

func TestLedgerLostRunsAreStoppedAndNotReported(t *testing.T) {
	l := newLedger()
	a := taskRef{"a", 1}
	var cause error
	id, _ := l.start(a, func(err error) { cause = err })
	reply := make(chan error, 1)
	l.request(acquireMsg(1, a), reply, 1)
	lost, _ := l.reconcile(nil, 2)
	if !slices.Equal(lost, []taskRef{a}) || !errors.Is(cause, errLeaseLost) {
		t.Fatalf("lost %v cause %v", lost, cause)
	}
	if err := <-reply; !errors.Is(err, errRunOver) {
		t.Fatalf("pending request answered %v", err)
	}
	if out := l.finish(a, id, success(), 2); out != nil {
		t.Fatal("a lost run was reported")
	}
	// A new run of the same attempt (a broker that forgot it) is a new run.
	id2, ok := l.start(a, func(error) {})
	if !ok || id2 == id || l.finish(a, id, success(), 2) != nil || l.finish(a, id2, success(), 2) == nil {
		t.Fatal("run ids do not tell runs apart")
	}
}

func TestLedgerCancelledRunReportsCancelled(t *testing.T) {
	l := newLedger()
	a := taskRef{"a", 1}
	id, _ := l.start(a, func(error) {})
	if !l.cancel(a, "chain cancelled: user") {
		t.Fatal("cancel")
	}
	out := l.finish(a, id, success(), 1)
	f := out.GetFailure()
	if f == nil || f.ErrorType != ErrorTypeCancelled || f.Message != "chain cancelled: user" || f.Retryable {
		t.Fatalf("outcome %v", out)
	}
	if l.cancel(a, "again") {
		t.Fatal("a finished run was cancelled")
	}
}

func TestLedgerAbandonedRequestIsGivenBackWhenGranted(t *testing.T) {
	l := newLedger()
	a := taskRef{"a", 1}
	l.start(a, func(error) {})
	reply := make(chan error, 1)
	l.request(acquireMsg(5, a), reply, 1)
	if w := l.release(5, 1); w == nil || w.RequestId != 5 {
		t.Fatalf("withdrawal %v", w)
	}
	if rel := l.granted(5, 1); rel == nil || rel.RequestId != 5 {
		t.Fatalf("a grant for an abandoned request must be released: %v", rel)
	}
	if len(reply) != 0 {
		t.Fatal("the requester was answered after giving up")
	}
	if l.refused(6, "x") {
		t.Fatal("unknown request refused")
	}
}

// Every kind of BrokerMessage in the proto has a case in Worker.dispatch:
// a kind added to proto/ that the SDK does not handle fails here.
func TestEveryBrokerMessageIsHandled(t *testing.T) {
	handled := map[protoreflect.Name]bool{
		"welcome": true, "assignment": true, "cancel": true, "outcome_ack": true,
		"throttle_granted": true, "error": true, "batch": true,
	}
	oneof := (&pb.BrokerMessage{}).ProtoReflect().Descriptor().Oneofs().ByName("msg")
	for i := range oneof.Fields().Len() {
		if name := oneof.Fields().Get(i).Name(); !handled[name] {
			t.Errorf("BrokerMessage.%s is not handled by Worker.dispatch", name)
		}
	}
	// And every WorkerMessage kind the SDK does not send is one it knowingly skips.
	sent := map[protoreflect.Name]bool{
		"hello": true, "outcome": true, "heartbeat": true, "throttle_acquire": true,
		"throttle_release": true, "drain": true, "goodbye": true, "batch": false,
		// Never sent: the SDK prefetches nothing by default, and a window set
		// by hand stays as the Hello announced it.
		"window": false,
	}
	up := (&pb.WorkerMessage{}).ProtoReflect().Descriptor().Oneofs().ByName("msg")
	for i := range up.Fields().Len() {
		if _, known := sent[up.Fields().Get(i).Name()]; !known {
			t.Errorf("WorkerMessage.%s is new to the SDK", up.Fields().Get(i).Name())
		}
	}
}
