package baton

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"example.invalid/baton/worker-sdk/go/pb"
)

// Signature is one step: a task name, its arguments and options. A mutable
// signature (S, Celery's .s) receives the previous step's result as its
// first argument (the first step of OnFailure receives the FailureRecord);
// an immutable one (Si, Celery's .si) does not. Signatures are values:
// With returns a modified copy.
type Signature struct {
	Name      string
	Args      []any          // encoded as a JSON array
	Kwargs    map[string]any // encoded as a JSON object; read with TaskContext.Kwarg
	Immutable bool
	Options   Options
	// Members makes the step a group (see Group); Executor makes it a
	// nested executor (see Chain.AsStep). A step with either has no
	// arguments or options of its own.
	Members  []Signature
	Executor *Executor
}

// Executor is a chain's steps and callbacks, run as one step of another
// chain (a nested executor) or as one member of a group.
type Executor struct {
	Steps     []Signature
	OnSuccess []Signature
	OnFailure []Signature
}

// Group is Celery's group: one step whose members run side by side, each
// as a chain of its own. The step succeeds once every member succeeded,
// and its result is the JSON array of the members' results in member
// order, which the next step receives (a group followed by a step is
// Celery's chord, see Chord). The first member that fails for good fails
// the step with that member's FailureRecord (the chain's OnFailure
// receives it), and the broker cancels the others. Like S, the group hands
// the previous step's result to the first step of each member (which takes
// it if it is mutable itself); set Immutable on the group to keep it from
// them.
func Group(members ...Signature) Signature {
	return Signature{Name: "group", Members: members}
}

// Chord is Celery's chord: the header's members side by side, then body
// with their results as an array.
func Chord(header []Signature, body Signature) Chain {
	return NewChain(Group(header...), body)
}

// AsStep is c's steps and callbacks as one step of another chain: a nested
// executor, shown under name. The parent's step waits for it, and
// succeeds with its result once it succeeded (after its OnSuccess), or
// fails with its FailureRecord once it failed (after its OnFailure), which
// the parent's OnFailure then receives. Cancelling the parent cancels it.
// The settings of a whole submission (Heavy, Context, keys, Deadline, ID)
// are the parent's: AsStep refuses a chain that sets them.
func (c Chain) AsStep(name string) (Signature, error) {
	if c.Heavy || len(c.Context) > 0 || c.IdempotencyKey != "" || c.UniqueKey != "" || !c.Deadline.IsZero() || c.ID != "" {
		return Signature{}, fmt.Errorf("baton: %s: a nested executor takes its parent's Heavy, Context, keys, Deadline and ID; set them on the parent", name)
	}
	if len(c.Steps) == 0 {
		return Signature{}, fmt.Errorf("baton: %s: a nested executor needs at least one step", name)
	}
	return Signature{Name: name, Executor: &Executor{Steps: c.Steps, OnSuccess: c.OnSuccess, OnFailure: c.OnFailure}}, nil
}

// S is a mutable signature of the task named name (Celery's .s).
func S(name string, args ...any) Signature { return Signature{Name: name, Args: args} }

// Si is an immutable signature of the task named name (Celery's .si).
func Si(name string, args ...any) Signature {
	return Signature{Name: name, Args: args, Immutable: true}
}

// With returns a copy of s with opts applied.
func (s Signature) With(opts ...Option) Signature {
	s.Options = applyOptions(s.Options, opts)
	return s
}

// WithKwargs returns a copy of s with these keyword arguments.
func (s Signature) WithKwargs(kwargs map[string]any) Signature {
	s.Kwargs = kwargs
	return s
}

func (s Signature) pb() (*pb.Signature, error) {
	if len(s.Members) > 0 || s.Executor != nil {
		return s.compositePb()
	}
	if s.Name == "" {
		return nil, fmt.Errorf("baton: signature without a task name")
	}
	args := s.Args
	if args == nil {
		args = []any{}
	}
	a, err := json.Marshal(args)
	if err != nil {
		return nil, fmt.Errorf("baton: args of %s: %w", s.Name, err)
	}
	kw := "{}"
	if len(s.Kwargs) > 0 {
		k, err := json.Marshal(s.Kwargs)
		if err != nil {
			return nil, fmt.Errorf("baton: kwargs of %s: %w", s.Name, err)
		}
		kw = string(k)
	}
	opts, err := s.Options.pb()
	if err != nil {
		return nil, fmt.Errorf("%w (in %s)", err, s.Name)
	}
	return &pb.Signature{Name: s.Name, Args: string(a), Kwargs: kw, Immutable: s.Immutable, Options: opts}, nil
}

// compositePb is a group's or a nested executor's signature: its members
// (or its executor's lists) and no arguments or options.
func (s Signature) compositePb() (*pb.Signature, error) {
	if len(s.Args) > 0 || len(s.Kwargs) > 0 {
		return nil, fmt.Errorf("baton: %s takes no arguments of its own; give them to its members", s.Name)
	}
	out := &pb.Signature{Name: s.Name, Immutable: s.Immutable}
	var err error
	if out.Members, err = sigs(s.Members, "members"); err != nil {
		return nil, fmt.Errorf("%s: %w", s.Name, err)
	}
	if e := s.Executor; e != nil {
		out.Executor = &pb.Executor{}
		if out.Executor.Steps, err = sigs(e.Steps, "steps"); err != nil {
			return nil, fmt.Errorf("%s: %w", s.Name, err)
		}
		if out.Executor.OnSuccess, err = sigs(e.OnSuccess, "on_success"); err != nil {
			return nil, fmt.Errorf("%s: %w", s.Name, err)
		}
		if out.Executor.OnFailure, err = sigs(e.OnFailure, "on_failure"); err != nil {
			return nil, fmt.Errorf("%s: %w", s.Name, err)
		}
	}
	return out, nil
}

// Task names a task together with its default options, so signatures made
// from it carry them (the worker that registers it announces them to the
// broker as well, so submitters that know only the name get them too).
type Task struct {
	Name     string
	Defaults Options
}

// NewTask is a Task by name with default options, for submitters that do
// not register the body (Worker.Register returns the same).
func NewTask(name string, opts ...Option) Task {
	return Task{Name: name, Defaults: applyOptions(Options{}, opts)}
}

// S is a mutable signature of t with its defaults.
func (t Task) S(args ...any) Signature {
	return Signature{Name: t.Name, Args: args, Options: t.Defaults}
}

// Si is an immutable signature of t with its defaults.
func (t Task) Si(args ...any) Signature {
	return Signature{Name: t.Name, Args: args, Immutable: true, Options: t.Defaults}
}

// Chain is an executor: steps run one after another, then OnSuccess after
// the last step succeeded, or OnFailure once when a step failed for good.
// Neither runs for a cancelled chain.
type Chain struct {
	Steps     []Signature
	OnSuccess []Signature
	OnFailure []Signature
	// Heavy routes every step and callback to the heavy queue (unless a
	// signature names its queue).
	Heavy bool
	// Context is an opaque map every step and callback sees
	// (TaskContext.Context).
	Context map[string]string
	// IdempotencyKey: a repeated submission returns the first chain's id
	// and stores nothing.
	IdempotencyKey string
	// UniqueKey: skipped while a chain with this key is queued or running
	// (Result.Dedup says so, and Result.ID is that chain).
	UniqueKey string
	// Deadline: when it passes before the steps end, the chain fails with
	// DeadlineExceeded and OnFailure runs.
	Deadline time.Time
	// ID is the chain id to use; empty means a fresh UUIDv7 made by the
	// client (so that a resend after a lost answer stores nothing twice).
	ID string
}

// NewChain is a chain of these steps (Celery's chain(a, b)).
func NewChain(steps ...Signature) Chain { return Chain{Steps: steps} }

// Submittable is what Client.Submit takes: a Signature (a one-step chain)
// or a Chain.
type Submittable interface {
	request(ctx context.Context) (*pb.SubmitChainRequest, error)
}

func (s Signature) request(ctx context.Context) (*pb.SubmitChainRequest, error) {
	return NewChain(s).request(ctx)
}

func sigs(list []Signature, field string) ([]*pb.Signature, error) {
	out := make([]*pb.Signature, 0, len(list))
	for i, s := range list {
		p, err := s.pb()
		if err != nil {
			return nil, fmt.Errorf("%s[%d]: %w", field, i, err)
		}
		out = append(out, p)
	}
	return out, nil
}

func (c Chain) request(ctx context.Context) (*pb.SubmitChainRequest, error) {
	if len(c.Steps) == 0 {
		return nil, fmt.Errorf("baton: a chain needs at least one step")
	}
	chainContext, err := withTrace(ctx, c.Context)
	if err != nil {
		return nil, err
	}
	req := &pb.SubmitChainRequest{
		Heavy:          c.Heavy,
		Context:        chainContext,
		IdempotencyKey: c.IdempotencyKey,
		UniqueKey:      c.UniqueKey,
		ChainId:        c.ID,
	}
	if req.Steps, err = sigs(c.Steps, "steps"); err != nil {
		return nil, err
	}
	if req.OnSuccess, err = sigs(c.OnSuccess, "on_success"); err != nil {
		return nil, err
	}
	if req.OnFailure, err = sigs(c.OnFailure, "on_failure"); err != nil {
		return nil, err
	}
	if !c.Deadline.IsZero() {
		req.DeadlineUnixMs = uint64(max(c.Deadline.UnixMilli(), 1))
	}
	if req.ChainId == "" {
		req.ChainId = newUUIDv7()
	}
	return req, nil
}

// FailureRecord is what a mutable first OnFailure step receives as its
// first argument (declare the parameter as FailureRecord), and what
// ChainFailedError carries.
type FailureRecord struct {
	ChainID   string `json:"chain_id"`
	Phase     string `json:"phase"` // "main", "on_success" or "on_failure"
	StepIndex uint32 `json:"step_index"`
	TaskName  string `json:"task_name"`
	TaskID    string `json:"task_id"`
	Attempt   uint32 `json:"attempt"`
	ErrorType string `json:"error_type"`
	Message   string `json:"message"`
	Traceback string `json:"traceback"`
}

var phases = map[pb.Phase]string{
	pb.Phase_PHASE_MAIN:       "main",
	pb.Phase_PHASE_ON_SUCCESS: "on_success",
	pb.Phase_PHASE_ON_FAILURE: "on_failure",
}

func failureRecord(r *pb.FailureRecord) FailureRecord {
	if r == nil {
		return FailureRecord{}
	}
	return FailureRecord{
		ChainID: r.ChainId, Phase: phases[r.Phase], StepIndex: r.StepIndex, TaskName: r.TaskName,
		TaskID: r.TaskId, Attempt: r.Attempt, ErrorType: r.ErrorType, Message: r.Message, Traceback: r.Traceback,
	}
}
