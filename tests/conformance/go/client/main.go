// Command client is the Go conformance client: it submits the conformance
// tasks by name (so the worker may be written in any language) and checks
// what comes back, as tests/conformance/typescript/client.ts does. It needs
// a worker on the "general" and "heavy" queues with concurrency >= 3.
//
//	BATON_ADDR=127.0.0.1:7070 go run ./client [case ...]
//
// It prints one line per case ("ok <case>" or "FAIL <case>: <why>") and
// exits 0 only when every case passed.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"reflect"
	"slices"
	"sort"
	"time"

	baton "example.invalid/baton/worker-sdk/go"
	"example.invalid/baton/worker-sdk/go/pb"
)

const timeout = 30 * time.Second

type checker struct {
	ctx    context.Context
	client *baton.Client
}

func (c *checker) submit(s baton.Submittable) *baton.Result {
	r, err := c.client.Submit(c.ctx, s)
	if err != nil {
		panic(err)
	}
	return r
}

func (c *checker) get(r *baton.Result, out any) {
	if err := r.Get(c.ctx, out); err != nil {
		panic(err)
	}
}

func (c *checker) failure(r *baton.Result) baton.FailureRecord {
	_, err := r.Wait(c.ctx)
	var failed *baton.ChainFailedError
	if !errors.As(err, &failed) {
		panic(fmt.Sprintf("the chain should have failed, got %v", err))
	}
	return failed.Record
}

func (c *checker) info(r *baton.Result) *pb.Chain {
	ch, err := r.Info(c.ctx)
	if err != nil {
		panic(err)
	}
	return ch
}

func check(ok bool, format string, args ...any) {
	if !ok {
		panic(fmt.Sprintf(format, args...))
	}
}

var cases = []struct {
	name string
	run  func(c *checker)
}{
	{"noop", func(c *checker) {
		raw, err := c.submit(baton.Si("noop")).Wait(c.ctx)
		check(err == nil && string(raw) == "null", "noop returned %s %v", raw, err)
	}},
	{"echo", func(c *checker) {
		value := map[string]any{"a": []any{1.0, "x", nil}, "b": map[string]any{"c": true}}
		var got any
		c.get(c.submit(baton.Si("echo", value)), &got)
		check(reflect.DeepEqual(got, value), "echo returned %v", got)
	}},
	{"add", func(c *checker) {
		var got float64
		c.get(c.submit(baton.Si("add", 2, 3)), &got)
		check(got == 5, "add(2, 3) is 5, not %v", got)
		c.get(c.submit(baton.NewChain(baton.Si("add", 1, 2), baton.S("add", 10))), &got)
		check(got == 13, "add(1, 2) | add.S(10) is 13, not %v", got)
	}},
	{"fail_once", func(c *checker) {
		r := c.submit(baton.Si("fail_once", "k"))
		var got int
		c.get(r, &got)
		check(got == 2, "fail_once succeeds on attempt 2, not %d", got)
		s := c.info(r).Steps[0]
		check(s.Retries == 1 && s.Attempts == 2, "retries %d, attempts %d", s.Retries, s.Attempts)
	}},
	{"fail_always", func(c *checker) {
		r := c.submit(baton.Chain{Steps: []baton.Signature{baton.Si("fail_always", "it broke")}, OnFailure: []baton.Signature{baton.S("echo")}})
		rec := c.failure(r)
		check(rec.ErrorType == "ConformanceError", "error_type %s", rec.ErrorType)
		check(rec.Message == "it broke", "message %s", rec.Message)
		check(rec.Traceback != "", "a traceback")
		check(rec.Attempt == 1, "attempt %d", rec.Attempt)
		var of *pb.Step
		for i := 0; i < 100; i++ { // on_failure runs after the chain's failure is known
			if of = c.info(r).OnFailure[0]; of.State == pb.StepState_STEP_STATE_SUCCEEDED {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		check(of.State == pb.StepState_STEP_STATE_SUCCEEDED, "on_failure %s", of.State)
		var got baton.FailureRecord
		check(json.Unmarshal([]byte(of.Result), &got) == nil && got.ErrorType == "ConformanceError" && got.ChainID == r.ID,
			"on_failure got %s", of.Result)
	}},
	{"retry_later_n", func(c *checker) {
		r := c.submit(baton.Si("retry_later_n", 3))
		var got int
		c.get(r, &got)
		check(got == 3, "returns n, not %d", got)
		s := c.info(r).Steps[0]
		check(s.Polls == 3 && s.Retries == 0, "polls %d, retries %d", s.Polls, s.Retries)
	}},
	{"sleep", func(c *checker) {
		var got int
		c.get(c.submit(baton.Si("sleep", 100)), &got)
		check(got == 100, "sleep returns ms, not %d", got)
	}},
	{"throttled_in_body", func(c *checker) {
		start := time.Now()
		results, err := c.client.SubmitMany(c.ctx, baton.Si("throttled_in_body", "conf", 300), baton.Si("throttled_in_body", "conf", 300), baton.Si("throttled_in_body", "conf", 300))
		check(err == nil, "%v", err)
		for _, r := range results {
			var key string
			c.get(r, &key)
			check(key == "conf", "returns its key, not %q", key)
		}
		check(time.Since(start) >= 850*time.Millisecond, "three holders of concurrency 1 took only %s", time.Since(start))
	}},
	{"throttled_declared", func(c *checker) {
		results, err := c.client.SubmitMany(c.ctx, baton.Si("throttled_declared", 300), baton.Si("throttled_declared", 300), baton.Si("throttled_declared", 300))
		check(err == nil, "%v", err)
		var runs [][2]uint64
		for _, r := range results {
			c.get(r, nil)
			s := c.info(r).Steps[0]
			runs = append(runs, [2]uint64{s.StartedUnixMs, s.FinishedUnixMs})
		}
		sort.Slice(runs, func(i, j int) bool { return runs[i][0] < runs[j][0] })
		for i := 1; i < len(runs); i++ {
			check(runs[i][0] >= runs[i-1][1], "runs overlap: %v", runs)
		}
	}},
	{"heavy", func(c *checker) {
		var q string
		c.get(c.submit(baton.Si("heavy")), &q)
		check(q == "heavy", "heavy runs from %q", q)
	}},
	{"cancellable", func(c *checker) {
		r := c.submit(baton.Si("cancellable", 30000))
		for i := 0; c.info(r).Steps[0].State != pb.StepState_STEP_STATE_RUNNING; i++ {
			check(i < 200, "cancellable never started")
			time.Sleep(50 * time.Millisecond)
		}
		st, err := r.Cancel(c.ctx, "conformance")
		check(err == nil && st == baton.StateCancelled, "cancel answered %s %v", st, err)
		_, err = r.Wait(c.ctx)
		var cancelled *baton.ChainCancelledError
		check(errors.As(err, &cancelled), "a cancelled chain's Wait returned %v", err)
		limited := c.submit(baton.Si("cancellable", 30000).With(baton.TimeLimit(200*time.Millisecond), baton.MaxRetries(0)))
		rec := c.failure(limited)
		check(rec.ErrorType == "TimeLimitExceeded", "error_type %s", rec.ErrorType)
	}},
}

func run(c *checker, name string, f func(*checker)) (err error) {
	defer func() {
		if v := recover(); v != nil {
			err = fmt.Errorf("%v", v)
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	f(&checker{ctx: ctx, client: c.client})
	return nil
}

func main() {
	client, err := baton.NewClient(baton.Connection{})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	defer client.Close()
	only := os.Args[1:]
	passed, failed := 0, 0
	for _, tc := range cases {
		if len(only) > 0 && !slices.Contains(only, tc.name) {
			continue
		}
		if err := run(&checker{client: client}, tc.name, tc.run); err != nil {
			failed++
			fmt.Printf("FAIL %s: %v\n", tc.name, err)
		} else {
			passed++
			fmt.Printf("ok %s\n", tc.name)
		}
	}
	fmt.Printf("conformance: %d passed, %d failed\n", passed, failed)
	if failed > 0 {
		os.Exit(1)
	}
}
