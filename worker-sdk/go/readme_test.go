package baton_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	baton "example.invalid/baton/worker-sdk/go"
)

// The README's seed example is examples/seed/main.go word for word, and it
// does what the README says against the real broker: two workers (general,
// heavy) and the demo.
func TestReadmeSeedDemo(t *testing.T) {
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	code, err := os.ReadFile(filepath.Join("examples", "seed", "main.go"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(readme), "```go\n"+string(code)+"```\n") {
		t.Fatal("README.md does not show examples/seed/main.go as it is")
	}

	b := startBroker(t, baton.Connection{})
	bin := filepath.Join(t.TempDir(), "seed")
	if out, err := exec.Command("go", "build", "-o", bin, "./examples/seed").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	env := append(os.Environ(), "BATON_ADDR="+b.addr)
	worker := func(args ...string) (*exec.Cmd, *syncBuffer, chan struct{}) {
		cmd := exec.Command(bin, append([]string{"worker"}, args...)...)
		out := &syncBuffer{}
		cmd.Stdout, cmd.Stderr, cmd.Env = out, out, env
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan struct{})
		go func() { _ = cmd.Wait(); close(exited) }()
		t.Cleanup(func() {
			select {
			case <-exited:
			default:
				_ = cmd.Process.Kill() // only what this test started, by pid
				<-exited
			}
			if t.Failed() {
				t.Logf("--- worker %v ---\n%s", args, out.String())
			}
		})
		return cmd, out, exited
	}
	general, generalOut, generalExited := worker("-concurrency", "4")
	_, heavyOut, _ := worker("-queues", "heavy", "-concurrency", "1")
	waitUntil(t, 20*time.Second, "two workers", func() bool { return len(b.workers(t)) == 2 })

	demo := exec.Command(bin, "demo")
	demo.Env = env
	out, err := demo.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "all done") ||
		!strings.Contains(string(out), "vm -1 failed as expected: *errors.errorString: backend refused vm -1") {
		t.Fatalf("demo: %v\n%s", err, out)
	}

	lines := func(s string) []string {
		var keep []string
		for _, l := range strings.Split(s, "\n") {
			if strings.HasPrefix(l, "** ") {
				keep = append(keep, l)
			}
		}
		return keep
	}
	waitUntil(t, 10*time.Second, "set_erred", func() bool { return strings.Contains(generalOut.String(), "** Erred -1") })
	got := lines(generalOut.String())
	joined := strings.Join(got, "\n")
	// Slow parts never overlap; each fast follows an end.
	if !strings.HasPrefix(joined, "** Start 10\n** End 10\n") || strings.Count(joined, "** Start 10") != 2 ||
		strings.Count(joined, "** Fast 10") != 2 || strings.Index(joined, "** Fast 10") < strings.Index(joined, "** End 10") {
		t.Fatalf("general worker printed:\n%s", joined)
	}
	second := strings.Index(joined, "** Start 10\n** End 10\n") + len("** Start 10\n** End 10\n")
	if !strings.Contains(joined[second:], "** End 10") {
		t.Fatalf("the second slow did not end:\n%s", joined)
	}
	for _, want := range []string{"** Dangerous 0", "** Dangerous 1", "** Dangerous 2", "** Creating 1", "** OK 1", "** Creating -1", "** Erred -1: vm.create: backend refused vm -1"} {
		if !strings.Contains(joined, want) {
			t.Fatalf("no %q in:\n%s", want, joined)
		}
	}
	if strings.Contains(joined, "Heavy") || !strings.Contains(heavyOut.String(), "** Heavy 1") {
		t.Fatalf("heavy ran on the wrong worker:\n%s\n--- heavy ---\n%s", joined, heavyOut.String())
	}
	// SIGTERM drains the worker, which exits 0.
	_ = general.Process.Signal(syscall.SIGTERM)
	select {
	case <-generalExited:
		if code := general.ProcessState.ExitCode(); code != 0 {
			t.Fatalf("worker exit %d", code)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the worker did not drain")
	}
}
