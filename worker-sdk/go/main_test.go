package baton_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"testing"
	"time"

	baton "example.invalid/baton/worker-sdk/go"
)

// TestMain doubles as a worker process for the signal tests: with
// $BATON_GO_TEST_WORKER set, the test binary runs a worker (at $BATON_ADDR)
// until a signal drains it, and exits 0 when drained, 1 when forced.
func TestMain(m *testing.M) {
	if name := os.Getenv("BATON_GO_TEST_WORKER"); name != "" {
		os.Exit(childWorker(name))
	}
	os.Exit(m.Run())
}

func childWorker(name string) int {
	w := baton.NewWorker(baton.WorkerConfig{Name: name, Concurrency: 2})
	w.Register("test.sleep", func(ctx *baton.TaskContext, ms int) (string, error) {
		fmt.Printf("start %s\n", ctx.ChainID)
		select {
		case <-time.After(time.Duration(ms) * time.Millisecond):
		case <-ctx.Done():
			return "", ctx.Err()
		}
		fmt.Printf("end %s\n", ctx.ChainID)
		return "slept", nil
	})
	err := w.RunWithSignals(context.Background())
	fmt.Printf("worker returned: %v\n", err)
	switch {
	case err == nil:
		return 0
	case errors.Is(err, baton.ErrForced):
		return 1
	}
	return 2
}

var _ = testing.Short
