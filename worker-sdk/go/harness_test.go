package baton_test

// Helpers of the tests against the real broker: the broker process, workers
// run in this process (or as a child process, for signal tests), and
// recording what task bodies did.
//
// The broker is $BATON_BIN, else target/debug/baton of this repository.
// When it is missing these tests are skipped, unless $CI or
// $BATON_REQUIRE_BROKER is set, which makes them fail. Each test gets its
// own broker on a free loopback port with a temporary data directory and a
// 2 s lease; tests end only the processes they started, by pid.

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	baton "example.invalid/baton/worker-sdk/go"
	"example.invalid/baton/worker-sdk/go/pb"
)

const leaseMs = 2000

func brokerBinary(t *testing.T) string {
	t.Helper()
	path := os.Getenv("BATON_BIN")
	if path == "" {
		path = filepath.Join("..", "..", "target", "debug", "baton")
	}
	abs, _ := filepath.Abs(path)
	if st, err := os.Stat(abs); err != nil || st.IsDir() {
		msg := fmt.Sprintf("baton broker binary not found at %s (build it with `cargo build -p baton-server`, or set BATON_BIN)", abs)
		if os.Getenv("CI") != "" || os.Getenv("BATON_REQUIRE_BROKER") != "" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return abs
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// broker is one `baton serve` process; restartable on the same port and data.
type broker struct {
	t       *testing.T
	bin     string
	addr    string
	data    string
	logPath string
	args    []string
	conn    baton.Connection // how the harness itself connects (admin)
	cmd     *exec.Cmd
	client  *baton.Client
	exited  chan struct{}
}

func startBroker(t *testing.T, conn baton.Connection, args ...string) *broker {
	t.Helper()
	dir := t.TempDir()
	b := &broker{
		t: t, bin: brokerBinary(t), addr: fmt.Sprintf("127.0.0.1:%d", freePort(t)),
		data: filepath.Join(dir, "data"), logPath: filepath.Join(dir, "broker.log"), args: args,
	}
	conn.Address = b.addr
	b.conn = conn
	b.start()
	t.Cleanup(func() {
		b.stop()
		if t.Failed() {
			t.Logf("--- broker log ---\n%s", b.log())
		}
	})
	return b
}

// startBrokerOn starts a broker on addr with the data directory data (that
// of a broker killed before, to take over from it).
func startBrokerOn(t *testing.T, addr, data string) *broker {
	t.Helper()
	b := &broker{
		t: t, bin: brokerBinary(t), addr: addr, data: data,
		logPath: filepath.Join(t.TempDir(), "broker.log"), conn: baton.Connection{Address: addr},
	}
	b.start()
	t.Cleanup(b.stop)
	return b
}

func (b *broker) start() {
	b.t.Helper()
	logf, err := os.OpenFile(b.logPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		b.t.Fatal(err)
	}
	defer logf.Close()
	args := append([]string{"serve", "--listen", b.addr, "--data", b.data, "--lease-ms", fmt.Sprint(leaseMs)}, b.args...)
	b.cmd = exec.Command(b.bin, args...)
	b.cmd.Stdout, b.cmd.Stderr = logf, logf
	if err := b.cmd.Start(); err != nil {
		b.t.Fatal(err)
	}
	exited := make(chan struct{})
	go func(cmd *exec.Cmd) { _ = cmd.Wait(); close(exited) }(b.cmd)
	b.exited = exited
	if b.client == nil {
		c, err := baton.NewClient(b.conn)
		if err != nil {
			b.t.Fatal(err)
		}
		b.client = c
	}
	waitUntil(b.t, 20*time.Second, "the broker on "+b.addr, func() bool {
		select {
		case <-exited:
			b.t.Fatalf("broker exited:\n%s", b.log())
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		defer cancel()
		_, err := b.client.Admin().ListQueues(ctx, &pb.ListQueuesRequest{})
		return err == nil
	})
}

// kill SIGKILLs the broker (a crash).
func (b *broker) kill() {
	if b.cmd != nil && b.cmd.Process != nil {
		_ = b.cmd.Process.Signal(syscall.SIGKILL)
		<-b.exited
	}
}

func (b *broker) stop() {
	if b.cmd == nil || b.cmd.Process == nil {
		return
	}
	select {
	case <-b.exited:
	default:
		_ = b.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-b.exited:
		case <-time.After(5 * time.Second):
			_ = b.cmd.Process.Signal(syscall.SIGKILL)
			<-b.exited
		}
	}
	if b.client != nil {
		_ = b.client.Close()
		b.client = nil
	}
}

func (b *broker) log() string {
	data, _ := os.ReadFile(b.logPath)
	if len(data) > 8000 {
		data = data[len(data)-8000:]
	}
	return string(data)
}

func (b *broker) workers(t *testing.T) []*pb.WorkerInfo {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := b.client.Admin().ListWorkers(ctx, &pb.ListWorkersRequest{})
	if err != nil {
		return nil
	}
	return resp.Workers
}

func waitUntil(t *testing.T, timeout time.Duration, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// runningWorker is a Worker served by a goroutine of the test.
type runningWorker struct {
	w      *baton.Worker
	cancel context.CancelFunc
	done   chan error
}

// startWorker runs w until the test ends (draining it) and waits until the
// broker lists it.
func startWorker(t *testing.T, b *broker, w *baton.Worker, name string) *runningWorker {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	rw := &runningWorker{w: w, cancel: cancel, done: make(chan error, 1)}
	go func() { rw.done <- w.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-rw.done:
		case <-time.After(10 * time.Second):
			w.Stop()
			<-rw.done
		}
	})
	waitUntil(t, 20*time.Second, "worker "+name+" to register", func() bool {
		select {
		case err := <-rw.done:
			t.Fatalf("worker %s ended: %v", name, err)
		default:
		}
		return slices.ContainsFunc(b.workers(t), func(i *pb.WorkerInfo) bool { return i.WorkerName == name })
	})
	return rw
}

func newWorker(b *broker, name string, queues []string, concurrency int) *baton.Worker {
	conn := b.conn
	return baton.NewWorker(baton.WorkerConfig{Connection: conn, Name: name, Queues: queues, Concurrency: concurrency})
}

// recorder keeps what task bodies did, in order, safe for concurrent use.
type recorder struct {
	mu     sync.Mutex
	events []string
	inside map[string]int // current holders per label
	most   map[string]int // the most holders seen at once per label
}

func newRecorder() *recorder {
	return &recorder{inside: map[string]int{}, most: map[string]int{}}
}

func (r *recorder) add(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, fmt.Sprintf(format, args...))
}

func (r *recorder) all() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.events)
}

func (r *recorder) count(prefix string) int {
	n := 0
	for _, e := range r.all() {
		if strings.HasPrefix(e, prefix) {
			n++
		}
	}
	return n
}

func (r *recorder) index(event string) int { return slices.Index(r.all(), event) }

// enter and leave count concurrent holders of label.
func (r *recorder) enter(label string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.inside[label]++
	r.most[label] = max(r.most[label], r.inside[label])
}

func (r *recorder) leave(label string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.inside[label]--
}

func (r *recorder) maxInside(label string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.most[label]
}

func testCtx(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}
