package baton_test

// Several brokers (docs/deployment.md, "How clients find the leader"):
// clients and workers against the real broker, a closed port, and fake
// standbys (a gRPC server here answering every Broker, Worker and Admin
// call as a standby does).

import (
	"context"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	baton "example.invalid/baton/worker-sdk/go"
	"example.invalid/baton/worker-sdk/go/pb"
)

// fakeStandby answers every call (Broker, Worker and Admin alike) as a
// standby: UNAVAILABLE, `baton-standby: 1` and, if it names one,
// `baton-leader`.
type fakeStandby struct {
	addr  string
	mu    sync.Mutex
	calls []string // the methods called, in order
}

func startFakeStandby(t *testing.T, leader string) *fakeStandby {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeStandby{addr: l.Addr().String()}
	refuse := func(_ any, stream grpc.ServerStream) error {
		method, _ := grpc.MethodFromServerStream(stream)
		f.mu.Lock()
		f.calls = append(f.calls, method[strings.LastIndex(method, "/")+1:])
		f.mu.Unlock()
		md := metadata.Pairs("baton-standby", "1")
		msg := "this broker is a standby; no leader is known yet"
		if leader != "" {
			md.Set("baton-leader", leader)
			msg = "this broker is a standby; the leader is at " + leader
		}
		stream.SetTrailer(md)
		return status.Error(codes.Unavailable, msg)
	}
	s := grpc.NewServer(grpc.UnknownServiceHandler(refuse))
	go func() { _ = s.Serve(l) }()
	t.Cleanup(s.Stop)
	return f
}

func (f *fakeStandby) called(method string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, c := range f.calls {
		if c == method {
			n++
		}
	}
	return n
}

// addWorker runs a worker of test.add on the brokers of list, named name,
// and waits until b lists it.
func addWorker(t *testing.T, b *broker, list, name string) baton.Task {
	t.Helper()
	w := baton.NewWorker(baton.WorkerConfig{Connection: baton.Connection{Address: list}, Name: name})
	add := w.Register("test.add", func(_ *baton.TaskContext, x, y int) (int, error) { return x + y, nil })
	startWorker(t, b, w, name)
	return add
}

// sum submits add(x, y) through c and waits for its result.
func sum(t *testing.T, ctx context.Context, c *baton.Client, add baton.Task, x, y int) int {
	t.Helper()
	r, err := c.Submit(ctx, add.S(x, y))
	if err != nil {
		t.Fatal(err)
	}
	var got int
	if err := r.Get(ctx, &got); err != nil {
		t.Fatal(err)
	}
	return got
}

func newListClient(t *testing.T, list string) *baton.Client {
	t.Helper()
	c, err := baton.NewClient(baton.Connection{Address: list})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func TestAClosedPortFirstThenTheBroker(t *testing.T) {
	b := startBroker(t, baton.Connection{})
	list := fmt.Sprintf("127.0.0.1:%d, %s", freePort(t), b.addr)
	add := addWorker(t, b, list, "w-listed")
	ctx := testCtx(t, 30*time.Second)
	if got := sum(t, ctx, newListClient(t, list), add, 40, 2); got != 42 {
		t.Fatal(got)
	}

	// Brokers that are simply down: one round, and the call fails at once.
	down := newListClient(t, fmt.Sprintf("127.0.0.1:%d,127.0.0.1:%d", freePort(t), freePort(t)))
	started := time.Now()
	_, err := down.Admin().ListQueues(ctx, &pb.ListQueuesRequest{})
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("want UNAVAILABLE, got %v", err)
	}
	if took := time.Since(started); took > 5*time.Second {
		t.Fatalf("a round of closed ports took %s", took)
	}
}

func TestAStandbyAloneInTheListNamesTheLeader(t *testing.T) {
	b := startBroker(t, baton.Connection{})
	f := startFakeStandby(t, b.addr)
	add := addWorker(t, b, f.addr, "w-follower")
	if f.called("Session") == 0 {
		t.Fatal("the worker did not ask the standby")
	}
	ctx := testCtx(t, 30*time.Second)
	c := newListClient(t, f.addr)
	if got := sum(t, ctx, c, add, 1, 2); got != 3 {
		t.Fatal(got)
	}
	if f.called("SubmitChain") != 1 {
		t.Fatalf("calls at the standby: %v", f.calls)
	}
	// An Admin call too, from a client that has not met the leader yet.
	resp, err := newListClient(t, f.addr).Admin().ListWorkers(ctx, &pb.ListWorkersRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(resp.Workers, func(w *pb.WorkerInfo) bool { return w.WorkerName == "w-follower" }) {
		t.Fatalf("workers: %v", resp.Workers)
	}
	if f.called("ListWorkers") != 1 {
		t.Fatalf("calls at the standby: %v", f.calls)
	}
}

func TestAStandbyThatKnowsNoLeaderThenTheLeader(t *testing.T) {
	b := startBroker(t, baton.Connection{})
	f := startFakeStandby(t, "")
	list := f.addr + "," + b.addr
	add := addWorker(t, b, list, "w-second")
	ctx := testCtx(t, 60*time.Second)
	if got := sum(t, ctx, newListClient(t, list), add, 2, 2); got != 4 {
		t.Fatal(got)
	}
	if f.called("Session") == 0 || f.called("SubmitChain") != 1 {
		t.Fatalf("calls at the standby: %v", f.calls)
	}

	// Standbys alone, with no leader known: asked for 30 s, then the
	// standby's refusal.
	started := time.Now()
	_, err := newListClient(t, f.addr).Admin().ListQueues(ctx, &pb.ListQueuesRequest{})
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "standby") {
		t.Fatalf("want the standby's refusal, got %v", err)
	}
	if took := time.Since(started); took < 29*time.Second {
		t.Fatalf("gave up after %s, want 30 s", took)
	}
}

// A worker given [A, B] holds a run on A; A dies and B takes over its data
// on B's address: the worker reconnects to B with the run, whose outcome B
// accepts (the chain succeeds once, at attempt 1).
func TestAWorkerFollowsItsRunToTheBrokerThatTakesOver(t *testing.T) {
	a := startBroker(t, baton.Connection{})
	bAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	list := a.addr + "," + bAddr
	started := make(chan struct{}, 2)
	release := make(chan struct{})
	w := baton.NewWorker(baton.WorkerConfig{Connection: baton.Connection{Address: list}, Name: "w-mover"})
	hold := w.Register("test.hold", func(ctx *baton.TaskContext) (uint32, error) {
		started <- struct{}{}
		<-release
		return ctx.Attempt, nil
	})
	startWorker(t, a, w, "w-mover")
	ctx := testCtx(t, 60*time.Second)
	c := newListClient(t, list)
	r, err := c.Submit(ctx, hold.S())
	if err != nil {
		t.Fatal(err)
	}
	<-started

	a.kill()
	b := startBrokerOn(t, bAddr, a.data)
	waitUntil(t, 20*time.Second, "the worker on B with its run", func() bool {
		return slices.ContainsFunc(b.workers(t), func(i *pb.WorkerInfo) bool {
			return i.WorkerName == "w-mover" && len(i.InFlight) == 1
		})
	})
	close(release)
	var attempt uint32
	if err := r.Get(ctx, &attempt); err != nil {
		t.Fatal(err)
	}
	if attempt != 1 || len(started) != 0 {
		t.Fatalf("attempt %d, %d more starts: the run was redelivered", attempt, len(started))
	}
}
