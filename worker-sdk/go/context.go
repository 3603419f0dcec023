package baton

import (
	"context"
	"encoding/json"
	"fmt"
)

// TaskContext is what a task body gets first: a context.Context that is
// cancelled when the broker cancels the run (chain cancelled, time limit,
// lease lost; context.Cause says why), plus the run's identity, the chain's
// context map (ChainContext), keyword arguments, and in-body throttles.
type TaskContext struct {
	context.Context

	Name         string            // task name
	TaskID       string            // stable across attempts
	Attempt      uint32            // run number, from 1 (retries, polls and redeliveries count)
	ChainID      string            // the chain the step belongs to
	Phase        string            // "main", "on_success" or "on_failure"
	StepIndex    uint32            // index within its phase
	Queue        string            // the queue it was routed to
	ChainContext map[string]string // the chain's context map (Chain.Context)
	Polls        uint32            // RetryLater outcomes reported so far by this step
	Retries      uint32            // retryable failures retried so far
	TimeoutMs    uint64            // time limit of this run; 0 = none
	Kwargs       map[string]json.RawMessage

	worker *Worker
	ref    taskRef
}

// Kwarg decodes keyword argument name into v; false when it is absent.
func (c *TaskContext) Kwarg(name string, v any) (bool, error) {
	raw, ok := c.Kwargs[name]
	if !ok {
		return false, nil
	}
	if err := json.Unmarshal(raw, v); err != nil {
		return true, Fatal(&argsError{fmt.Sprintf("%s: keyword argument %q: %v", c.Name, name, err)})
	}
	return true, nil
}

// Cancelled reports whether the broker cancelled this run.
func (c *TaskContext) Cancelled() bool { return c.Err() != nil }

// Client is a client of the worker's broker (same address, token and TLS),
// for bodies that submit chains.
func (c *TaskContext) Client() *Client { return c.worker.Client() }

// Throttle runs fn while holding an in-body throttle slot (the seed's
// `with throttle(concurrency=1, key=k):`): it asks the broker for a slot of
// the identity (this task's name, l.Key), or l.Key alone when l.Shared,
// waits for the grant (waiters are served in FIFO order), runs fn and
// releases the slot, also when fn panics. If the worker dies meanwhile, the
// broker frees the slot when the run's lease lapses.
//
// # Errors
//
// fn's error; a *ThrottleRefusedError when the broker refused the request;
// the context's cause (a *CancelledError) when the run was cancelled while
// waiting.
func (c *TaskContext) Throttle(l Limit, fn func() error) error {
	release, err := c.Acquire(l)
	if err != nil {
		return err
	}
	defer release()
	return fn()
}

// Acquire takes an in-body throttle slot and returns the function that
// releases it (safe to call more than once); see Throttle.
func (c *TaskContext) Acquire(l Limit) (release func(), err error) {
	if c.worker == nil {
		return nil, fmt.Errorf("baton: in-body throttles need a run of a Worker")
	}
	return c.worker.acquire(c, l)
}
