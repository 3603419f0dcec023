package baton_test

import (
	"bytes"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	baton "example.invalid/baton/worker-sdk/go"
	"example.invalid/baton/worker-sdk/go/pb"
)

// syncBuffer is a bytes.Buffer safe to read while a process writes it.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.String()
}

// startChildWorker runs this test binary as a worker process (see TestMain).
// The returned channel is closed when the process exited; cmd.ProcessState
// then holds its status.
func startChildWorker(t *testing.T, b *broker, name string) (*exec.Cmd, *syncBuffer, chan struct{}) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	out := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.Env = append(os.Environ(), "BATON_GO_TEST_WORKER="+name, "BATON_ADDR="+b.addr)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		select {
		case <-exited:
		default:
			_ = cmd.Process.Kill() // only the process this test started, by pid
			<-exited
		}
		if t.Failed() {
			t.Logf("--- worker %s ---\n%s", name, out.String())
		}
	})
	waitUntil(t, 20*time.Second, "worker "+name+" to register", func() bool {
		for _, w := range b.workers(t) {
			if w.WorkerName == name {
				return true
			}
		}
		return false
	})
	return cmd, out, exited
}

// SIGTERM drains: the running task finishes and is reported, nothing new
// is taken, and the process exits 0.
func TestSigtermDrainsThenExits(t *testing.T) {
	b := startBroker(t, baton.Connection{})
	cmd, out, exited := startChildWorker(t, b, "w-child")
	ctx := testCtx(t, 60*time.Second)

	running, err := b.client.Submit(ctx, baton.Si("test.sleep", 1500))
	if err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 10*time.Second, "the task to start", func() bool { return strings.Contains(out.String(), "start "+running.ID) })
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 5*time.Second, "the broker to see the drain", func() bool {
		for _, w := range b.workers(t) {
			if w.WorkerName == "w-child" && w.Draining {
				return true
			}
		}
		return false
	})
	later, err := b.client.Submit(ctx, baton.Si("test.sleep", 10))
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-exited:
		if code := cmd.ProcessState.ExitCode(); code != 0 {
			t.Fatalf("worker exited with %d", code)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the worker did not exit after draining")
	}
	if !strings.Contains(out.String(), "end "+running.ID) {
		t.Fatalf("the running task did not finish:\n%s", out.String())
	}
	if got, err := running.Wait(ctx); err != nil || string(got) != `"slept"` {
		t.Fatalf("running task: %s %v", got, err)
	}
	if strings.Contains(out.String(), "start "+later.ID) {
		t.Fatal("a draining worker took new work")
	}
	if st, _ := later.Status(ctx); st != baton.StateRunning {
		t.Fatalf("later: %s", st)
	}
	// It said Goodbye: the broker lists it no more.
	waitUntil(t, 5*time.Second, "the worker to leave", func() bool { return len(b.workers(t)) == 0 })
}

// A second SIGTERM exits at once (status 1); the broker redelivers the run
// when its lease lapses.
func TestSecondSigtermExitsAtOnce(t *testing.T) {
	b := startBroker(t, baton.Connection{})
	cmd, out, exited := startChildWorker(t, b, "w-child2")
	ctx := testCtx(t, 60*time.Second)
	res, err := b.client.Submit(ctx, baton.Si("test.sleep", 30000))
	if err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 10*time.Second, "the task to start", func() bool { return strings.Contains(out.String(), "start "+res.ID) })
	_ = cmd.Process.Signal(syscall.SIGTERM)
	time.Sleep(200 * time.Millisecond)
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-exited:
		if code := cmd.ProcessState.ExitCode(); code != 1 {
			t.Fatalf("exit status %d", code)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the worker did not exit")
	}
	info, err := res.Info(ctx)
	if err != nil || info.State != pb.ChainState_CHAIN_STATE_RUNNING {
		t.Fatalf("%v %v", info, err)
	}
}
