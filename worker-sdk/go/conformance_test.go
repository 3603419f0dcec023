package baton_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	baton "example.invalid/baton/worker-sdk/go"
)

// The Go conformance worker and client (tests/conformance/go) against the
// real broker: every case passes.
func TestConformanceWorkerAndClient(t *testing.T) {
	b := startBroker(t, baton.Connection{})
	dir := t.TempDir()
	module := filepath.Join("..", "..", "tests", "conformance", "go")
	for _, cmd := range []string{"worker", "client"} {
		build := exec.Command("go", "build", "-o", filepath.Join(dir, cmd), "./"+cmd)
		build.Dir = module
		if out, err := build.CombinedOutput(); err != nil {
			t.Fatalf("go build %s: %v\n%s", cmd, err, out)
		}
	}
	env := append(os.Environ(), "BATON_ADDR="+b.addr)
	worker := exec.Command(filepath.Join(dir, "worker"), "-queues", "general,heavy", "-concurrency", "4", "-name", "conformance-go")
	workerOut := &syncBuffer{}
	worker.Stdout, worker.Stderr, worker.Env = workerOut, workerOut, env
	if err := worker.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = worker.Wait(); close(exited) }()
	t.Cleanup(func() {
		select {
		case <-exited:
		default:
			_ = worker.Process.Kill() // only the process this test started, by pid
			<-exited
		}
		if t.Failed() {
			t.Logf("--- worker ---\n%s", workerOut.String())
		}
	})
	waitUntil(t, 20*time.Second, "the conformance worker", func() bool { return len(b.workers(t)) == 1 })

	client := exec.Command(filepath.Join(dir, "client"))
	client.Env = env
	out, err := client.CombinedOutput()
	t.Logf("%s", out)
	if err != nil || !strings.Contains(string(out), "conformance: 11 passed, 0 failed") {
		t.Fatalf("conformance client: %v", err)
	}
}
