// Command seed is NodeConductor's tasks-and-executors example
// (tasks-and-executors.rst) on Baton, in Go.
//
//	go run ./examples/seed worker -concurrency 4                  # the general queue
//	go run ./examples/seed worker -queues heavy -concurrency 1    # the heavy queue
//	go run ./examples/seed demo                                   # submit, wait, print
//
// The broker is $BATON_ADDR, else 127.0.0.1:7070.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"os"
	"strings"
	"time"

	baton "example.invalid/baton/worker-sdk/go"
)

func keyByUUID(uuid int) string { return fmt.Sprintf("vm:%d", uuid) }

// register adds the seed's task bodies to a worker.
func register(w *baton.Worker) {
	w.Register("nodeconductor.demo", func(ctx *baton.TaskContext, uuid int) (string, error) {
		// This whole task will be partially throttled by its "slow/dangerous" part.
		res, err := ctx.Client().Submit(ctx, baton.NewChain(
			baton.Si("demo.slow", uuid),
			baton.Si("demo.fast", uuid),
		))
		if err != nil {
			return "", err
		}
		return res.ID, nil
	})

	w.Register("demo.slow", func(ctx *baton.TaskContext, uuid int) (any, error) {
		// Run only one task at a time.
		// It will be throttled based on task name and key pair.
		err := ctx.Throttle(baton.Limit{Concurrency: 1, Key: keyByUUID(uuid)}, func() error {
			fmt.Printf("** Start %d\n", uuid)
			select {
			case <-time.After(2 * time.Second):
			case <-ctx.Done(): // the chain was cancelled
				return ctx.Err()
			}
			fmt.Printf("** End %d\n", uuid)
			return nil
		})
		return nil, err
	})

	w.Register("demo.fast", func(ctx *baton.TaskContext, uuid int) (any, error) {
		fmt.Printf("** Fast %d\n", uuid)
		return nil, nil
	})

	// Allow only one instance of "dangerous" task at a time (the seed's
	// @throttle; the default concurrency is 1).
	w.Register("demo.dangerous", func(ctx *baton.TaskContext, uuid int) (any, error) {
		fmt.Printf("** Dangerous %d\n", uuid)
		return nil, nil
	}, baton.Throttle(1))

	// Place task into a separate queue for heavy tasks.
	w.Register("demo.heavy", func(ctx *baton.TaskContext, uuid int) (any, error) {
		fmt.Printf("** Heavy %d\n", uuid)
		return nil, nil
	}, baton.Heavy())

	// An executor's tasks: state changes and the backend call.
	w.Register("vm.begin_creating", func(ctx *baton.TaskContext, uuid int) error {
		fmt.Printf("** Creating %d\n", uuid)
		return nil
	})
	w.Register("vm.create", func(ctx *baton.TaskContext, uuid int) error {
		if uuid < 0 {
			return baton.Fatal(fmt.Errorf("backend refused vm %d", uuid))
		}
		return nil
	}, baton.MaxRetries(3))
	w.Register("vm.set_ok", func(ctx *baton.TaskContext, uuid int) error {
		fmt.Printf("** OK %d\n", uuid)
		return nil
	})
	w.Register("vm.set_erred", func(ctx *baton.TaskContext, failure baton.FailureRecord, uuid int) error {
		fmt.Printf("** Erred %d: %s: %s\n", uuid, failure.TaskName, failure.Message)
		return nil
	})
}

// createVM is an executor: a chain with its on_success and on_failure
// callbacks; the broker runs exactly one of them.
func createVM(uuid int) baton.Chain {
	return baton.Chain{
		Steps:     []baton.Signature{baton.Si("vm.begin_creating", uuid), baton.Si("vm.create", uuid)},
		OnSuccess: []baton.Signature{baton.Si("vm.set_ok", uuid)},
		OnFailure: []baton.Signature{baton.S("vm.set_erred", uuid)}, // .S: gets the failure record first
	}
}

func demo(ctx context.Context) error {
	client, err := baton.NewClient(baton.Connection{})
	if err != nil {
		return err
	}
	defer client.Close()

	// Two similar chains: their slow parts run one after another.
	var demos []*baton.Result
	for range 2 {
		r, err := client.Submit(ctx, baton.Si("nodeconductor.demo", 10))
		if err != nil {
			return err
		}
		demos = append(demos, r)
	}
	for _, r := range demos {
		var chainID string
		if err := r.Get(ctx, &chainID); err != nil { // demo returns its chain's id
			return err
		}
		if _, err := client.Wait(ctx, chainID); err != nil { // wait for slow -> fast
			return err
		}
	}

	var rest []baton.Submittable
	for i := range 3 {
		rest = append(rest, baton.Si("demo.dangerous", i))
	}
	rest = append(rest, baton.Si("demo.heavy", 1))
	results, err := client.SubmitMany(ctx, rest...)
	if err != nil {
		return err
	}
	for _, r := range results {
		if _, err := r.Wait(ctx); err != nil {
			return err
		}
	}

	// The executor: one VM is created, the other is refused by the backend.
	ok, err := client.Submit(ctx, createVM(1))
	if err != nil {
		return err
	}
	if _, err := ok.Wait(ctx); err != nil {
		return err
	}
	refused, err := client.Submit(ctx, createVM(-1))
	if err != nil {
		return err
	}
	var failed *baton.ChainFailedError
	if _, err := refused.Wait(ctx); !errors.As(err, &failed) {
		return fmt.Errorf("vm -1: want a failure, got %v", err)
	}
	fmt.Printf("vm -1 failed as expected: %s: %s\n", failed.Record.ErrorType, failed.Record.Message)
	fmt.Println("all done")
	return nil
}

func main() {
	if len(os.Args) < 2 {
		log.Fatal("usage: seed worker [-queues a,b] [-concurrency n] | seed demo")
	}
	switch os.Args[1] {
	case "worker":
		flags := flag.NewFlagSet("worker", flag.ExitOnError)
		queues := flags.String("queues", "general", "queues to take tasks from, comma-separated")
		concurrency := flags.Int("concurrency", 4, "tasks run at once")
		_ = flags.Parse(os.Args[2:])
		w := baton.NewWorker(baton.WorkerConfig{Queues: strings.Split(*queues, ","), Concurrency: *concurrency})
		register(w)
		// SIGTERM or ctrl-c drains (finish the running tasks), twice exits now.
		if err := w.RunWithSignals(context.Background()); err != nil {
			log.Fatal(err)
		}
	case "demo":
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := demo(ctx); err != nil {
			log.Fatal(err)
		}
	default:
		log.Fatalf("unknown command %q", os.Args[1])
	}
}
