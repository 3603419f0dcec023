package baton

import (
	"fmt"
	"regexp"
	"strconv"
	"time"
	"unicode/utf8"

	"example.invalid/baton/worker-sdk/go/pb"
)

// Scope says how long a declared throttle slot is held.
type Scope int

const (
	// ScopeTask (the default): the slot belongs to one run of the task.
	ScopeTask Scope = iota
	// ScopeChain: the slot is taken when the step is first dispatched and
	// held by its chain until the chain ends.
	ScopeChain
)

// Limit is a throttle: at most Concurrency holders at once per identity,
// and with a Rate at most that many starts per period, across every worker
// and broker restart. The identity is (task name, Key) unless Shared is
// set, in which case Key alone names an identity shared by every task name
// that uses it.
type Limit struct {
	// Concurrency is the most simultaneous holders; 0 means 1, or no limit
	// when Rate is set.
	Concurrency uint32
	// Key is the throttle key; empty means "*", the whole task name.
	Key string
	// Shared makes Key alone the identity, across task names.
	Shared bool
	// Scope applies to declared throttles only (in-body slots belong to
	// their run).
	Scope Scope
	// Rate, if set, limits the identity's starts (or in-body grants).
	Rate *Rate
}

// Rate is a rate limit: at most Count starts per Per, evenly spaced, of
// which Burst (0 or 1: none) may come at once after a quiet spell. In any
// window of Per there are at most Count + Burst - 1 starts.
type Rate struct {
	Count uint32
	Per   time.Duration
	Burst uint32
}

var rateText = regexp.MustCompile(`^\s*(\d+)\s*/\s*(\d*)\s*([a-z]+)\s*$`)

var rateUnits = map[string]time.Duration{
	"ms": time.Millisecond, "s": time.Second, "sec": time.Second, "m": time.Minute,
	"min": time.Minute, "h": time.Hour, "d": 24 * time.Hour,
}

// ParseRate reads a rate as Celery writes it: "10/s", "100/m", "5/h",
// "1000/d", or with a numbered period, "3/10s".
func ParseRate(text string) (Rate, error) {
	m := rateText.FindStringSubmatch(text)
	if m == nil {
		return Rate{}, fmt.Errorf("rate %q: expected COUNT/PERIOD, such as 10/s or 100/m", text)
	}
	count, err := strconv.ParseUint(m[1], 10, 32)
	if err != nil || count == 0 {
		return Rate{}, fmt.Errorf("rate %q: the count must be a whole number from 1", text)
	}
	unit, ok := rateUnits[m[3]]
	if !ok {
		return Rate{}, fmt.Errorf("rate %q: the period %q is not a unit (ms, s, m, h, d)", text, m[3])
	}
	number := uint64(1)
	if m[2] != "" {
		if number, err = strconv.ParseUint(m[2], 10, 32); err != nil {
			return Rate{}, fmt.Errorf("rate %q: the period is too long", text)
		}
	}
	per := time.Duration(number) * unit
	if per < time.Millisecond || per > 24*time.Hour {
		return Rate{}, fmt.Errorf("rate %q: the period must be between 1 ms and a day", text)
	}
	return Rate{Count: uint32(count), Per: per}, nil
}

// check refuses what the broker would refuse. Needed for in-body throttles:
// the broker answers a malformed ThrottleAcquire with a WorkerError that
// names no request (request_id 0), so the waiting body could not be told.
func (l Limit) check() error {
	switch {
	case l.Shared && l.Key == "":
		return &ThrottleRefusedError{Message: "a shared throttle needs a key"}
	case utf8.RuneCountInString(l.Key) > 200:
		return &ThrottleRefusedError{Message: "the throttle key is longer than 200 characters"}
	case l.Concurrency > 1_000_000:
		return &ThrottleRefusedError{Message: "the throttle concurrency is larger than 1000000"}
	case l.Scope != ScopeTask && l.Scope != ScopeChain:
		return &ThrottleRefusedError{Message: fmt.Sprintf("unknown throttle scope %d", l.Scope)}
	case l.Rate != nil && l.Rate.Count == 0:
		return &ThrottleRefusedError{Message: "the rate's count is 0: a rate allows at least 1 start"}
	case l.Rate != nil && (l.Rate.Per < time.Millisecond || l.Rate.Per > 24*time.Hour):
		return &ThrottleRefusedError{Message: "the rate's period must be between 1 ms and a day"}
	case l.Rate != nil && l.Rate.Burst > l.Rate.Count:
		return &ThrottleRefusedError{Message: "the rate's burst is more than its count"}
	}
	return nil
}

func (l Limit) pb() *pb.Throttle {
	t := &pb.Throttle{Concurrency: l.Concurrency, Key: l.Key, Shared: l.Shared}
	if l.Scope == ScopeChain {
		t.Scope = pb.ThrottleScope_THROTTLE_SCOPE_CHAIN
	}
	if l.Rate != nil {
		t.Rate = &pb.Rate{Count: l.Rate.Count, PeriodMs: uint64(l.Rate.Per / time.Millisecond), Burst: l.Rate.Burst}
	}
	return t
}

// Options are the execution options of a signature, or the defaults of a
// task (Worker.Register, NewTask). A nil pointer or a zero value means
// "unset": the task's registered default, then the broker's.
type Options struct {
	Queue           string         // explicit queue; routing: Queue, else "heavy" if Heavy, else "general"
	Heavy           bool           // route to the heavy queue (the seed's is_heavy_task)
	Throttle        *Limit         // declared throttle (the seed's @throttle)
	MaxRetries      *uint32        // retries of retryable failures; broker default 0
	RetryBackoff    *time.Duration // first retry delay, doubled each retry; broker default 1 s
	RetryBackoffMax *time.Duration // longest retry delay; broker default 60 s
	MaxPolls        *uint32        // budget of RetryLater outcomes; broker default 100
	TimeLimit       *time.Duration // time limit of one run; then the broker cancels it
	Countdown       time.Duration  // delay once the step's turn comes
	ETA             time.Time      // not before this time
	Priority        int32          // higher runs first within a queue
	Description     string         // free text shown in inspection
}

// Option sets one execution option; see the functions returning Option.
type Option func(*Options)

// Queue routes to an explicit queue (1..=64 of [A-Za-z0-9_.:-]).
func Queue(name string) Option { return func(o *Options) { o.Queue = name } }

// Heavy routes to the "heavy" queue (unless a Queue is named).
func Heavy() Option { return func(o *Options) { o.Heavy = true } }

// Throttle declares a throttle of the task name with this concurrency (the
// seed's @throttle is Throttle(1)): the broker dispatches a run only when
// it can take a slot, so waiting work occupies no worker.
func Throttle(concurrency uint32) Option {
	return ThrottleLimit(Limit{Concurrency: concurrency})
}

// ThrottleLimit declares a throttle with a key, a shared identity or chain
// scope.
func ThrottleLimit(l Limit) Option { return func(o *Options) { o.Throttle = &l } }

// MaxRetries sets how many retryable failures are retried.
func MaxRetries(n uint32) Option { return func(o *Options) { o.MaxRetries = &n } }

// RetryBackoff sets the first retry delay and its upper bound (0 leaves
// the bound unset).
func RetryBackoff(first, most time.Duration) Option {
	return func(o *Options) {
		o.RetryBackoff = &first
		if most > 0 {
			o.RetryBackoffMax = &most
		}
	}
}

// MaxPolls sets how many RetryLater outcomes a step may report before it
// fails with PollBudgetExhausted.
func MaxPolls(n uint32) Option { return func(o *Options) { o.MaxPolls = &n } }

// TimeLimit sets the time limit of one run: when it passes, the broker
// cancels the run (the body's context is cancelled) and counts a retryable
// TimeLimitExceeded failure.
func TimeLimit(d time.Duration) Option { return func(o *Options) { o.TimeLimit = &d } }

// Countdown delays the step by d once its turn comes in its chain.
func Countdown(d time.Duration) Option { return func(o *Options) { o.Countdown = d } }

// ETA keeps the step from starting before t.
func ETA(t time.Time) Option { return func(o *Options) { o.ETA = t } }

// Priority: higher runs first among ready tasks of one queue.
func Priority(p int32) Option { return func(o *Options) { o.Priority = p } }

// Description is free text shown in inspection.
func Description(s string) Option { return func(o *Options) { o.Description = s } }

func applyOptions(o Options, opts []Option) Options {
	for _, opt := range opts {
		opt(&o)
	}
	return o
}

func ms(d time.Duration, what string) (uint64, error) {
	if d < 0 {
		return 0, fmt.Errorf("baton: %s must not be negative (got %s)", what, d)
	}
	return uint64(d.Milliseconds()), nil
}

func msPtr(d *time.Duration, what string) (*uint64, error) {
	if d == nil {
		return nil, nil
	}
	v, err := ms(*d, what)
	return &v, err
}

// pb converts the options to the protocol's; every duration in whole
// milliseconds.
func (o Options) pb() (*pb.Options, error) {
	out := &pb.Options{
		Queue:       o.Queue,
		Heavy:       o.Heavy,
		MaxRetries:  o.MaxRetries,
		MaxPolls:    o.MaxPolls,
		Priority:    o.Priority,
		Description: o.Description,
	}
	if o.Throttle != nil {
		out.Throttle = o.Throttle.pb()
	}
	var err error
	if out.RetryBackoffMs, err = msPtr(o.RetryBackoff, "RetryBackoff"); err != nil {
		return nil, err
	}
	if out.RetryBackoffMaxMs, err = msPtr(o.RetryBackoffMax, "RetryBackoffMax"); err != nil {
		return nil, err
	}
	if out.TimeoutMs, err = msPtr(o.TimeLimit, "TimeLimit"); err != nil {
		return nil, err
	}
	if out.CountdownMs, err = ms(o.Countdown, "Countdown"); err != nil {
		return nil, err
	}
	if !o.ETA.IsZero() && o.ETA.UnixMilli() > 0 {
		out.EtaUnixMs = uint64(o.ETA.UnixMilli())
	}
	return out, nil
}
