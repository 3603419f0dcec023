package baton

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"strings"
	"testing"
	"time"
)

func rawArgs(t *testing.T, args ...any) []json.RawMessage {
	t.Helper()
	var out []json.RawMessage
	for _, a := range args {
		b, err := json.Marshal(a)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, b)
	}
	return out
}

func TestHandlerShapes(t *testing.T) {
	tc := &TaskContext{Context: context.Background(), Name: "t"}
	h, err := newHandler(func(ctx *TaskContext, a int, b string, rest ...float64) (string, error) {
		return fmt.Sprint(a, b, rest), nil
	})
	if err != nil {
		t.Fatal(err)
	}
	got, err := h.call(tc, "t", rawArgs(t, 1, "x", 2.5, 3))
	if err != nil || got != "1x[2.5 3]" {
		t.Fatalf("%v %v", got, err)
	}
	if _, err := h.call(tc, "t", rawArgs(t, 1)); err == nil || errorTypeOf(err) != ErrorTypeInvalidArguments {
		t.Fatalf("too few: %v", err)
	}
	h2, _ := newHandler(func(ctx context.Context, r FailureRecord) error { return nil })
	if _, err := h2.call(tc, "t", rawArgs(t, map[string]any{"error_type": "X"}, 2)); err == nil {
		t.Fatal("too many arguments accepted")
	}
	for _, bad := range []any{42, func() error { return nil }, func(ctx *TaskContext) int { return 0 }, func(ctx *TaskContext) (int, int) { return 0, 0 }} {
		if _, err := newHandler(bad); err == nil {
			t.Fatalf("%T accepted", bad)
		}
	}
}

type namedErr struct{}

func (namedErr) Error() string     { return "named" }
func (namedErr) ErrorType() string { return "QuotaExceeded" }

func TestOutcomeMapping(t *testing.T) {
	pathErr := &fs.PathError{Op: "open", Path: "/x", Err: fs.ErrNotExist}
	cases := []struct {
		err       error
		typ       string
		retryable bool
	}{
		{errors.New("x"), "*errors.errorString", true},
		{fmt.Errorf("reading config: %w", pathErr), "*fs.PathError", true},
		{Fatal(fmt.Errorf("bad: %w", pathErr)), "*fs.PathError", false},
		{Errorf("wrapped: %w", namedErr{}), "QuotaExceeded", true},
		{&CancelledError{Reason: "r"}, "*baton.CancelledError", false},
		{&ThrottleRefusedError{Message: "m"}, ErrorTypeThrottleRefused, false},
	}
	for _, c := range cases {
		f := fromError(c.err).GetFailure()
		if f.ErrorType != c.typ || f.Retryable != c.retryable || f.Message != c.err.Error() {
			t.Errorf("%v: %+v", c.err, f)
		}
	}
	later := fromError(fmt.Errorf("poll: %w", RetryLater(1500*time.Millisecond, "not yet"))).GetRetryLater()
	if later.DelayMs != 1500 || later.Message != "not yet" {
		t.Fatalf("%v", later)
	}
	tb := fromError(Errorf("boom")).GetFailure().Traceback
	if !strings.Contains(tb, "TestOutcomeMapping") || !strings.Contains(tb, "unit_test.go") {
		t.Fatalf("no stack: %s", tb)
	}
	if tb := fromError(errors.New("plain")).GetFailure().Traceback; !strings.Contains(tb, "no stack recorded") {
		t.Fatalf("%s", tb)
	}
}

func TestSignaturesAndChainsToProtocol(t *testing.T) {
	task := NewTask("demo.slow", Throttle(1), Heavy(), MaxRetries(2))
	sig := task.Si(10).With(Countdown(1500*time.Millisecond), Queue("special"), TimeLimit(time.Minute))
	req, err := Chain{
		Steps: []Signature{sig, S("demo.fast")}, OnFailure: []Signature{S("demo.erred", "vm").WithKwargs(map[string]any{"force": true})},
		Context: map[string]string{"user": "alice"}, UniqueKey: "u", Deadline: time.UnixMilli(5000),
	}.request(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	s0 := req.Steps[0]
	if s0.Name != "demo.slow" || s0.Args != "[10]" || !s0.Immutable || s0.Options.Queue != "special" || !s0.Options.Heavy ||
		s0.Options.Throttle.GetConcurrency() != 1 || s0.Options.GetMaxRetries() != 2 || s0.Options.CountdownMs != 1500 || s0.Options.GetTimeoutMs() != 60000 {
		t.Fatalf("%v", s0)
	}
	if req.Steps[1].Args != "[]" || req.Steps[1].Immutable || req.Steps[1].Options.MaxRetries != nil {
		t.Fatalf("%v", req.Steps[1])
	}
	if req.OnFailure[0].Kwargs != `{"force":true}` || req.DeadlineUnixMs != 5000 || len(req.ChainId) != 36 || req.ChainId[14] != '7' {
		t.Fatalf("%v", req)
	}
	if _, err := (Chain{}).request(context.Background()); err == nil {
		t.Fatal("an empty chain was accepted")
	}
	if _, err := S("x").With(Countdown(-time.Second)).request(context.Background()); err == nil {
		t.Fatal("a negative countdown was accepted")
	}
}

func TestWorkerFlags(t *testing.T) {
	var c WorkerConfig
	fs := flag.NewFlagSet("w", flag.ContinueOnError)
	c.RegisterFlags(fs)
	if err := fs.Parse([]string{"-broker", "b:1", "-queues", "general, heavy", "-concurrency", "3", "-prefetch", "2", "-name", "n", "-tls-ca", "ca.pem", "-tls-cert", "c.pem", "-tls-key", "k.pem"}); err != nil {
		t.Fatal(err)
	}
	c.ApplyFlags()
	if c.Address != "b:1" || len(c.Queues) != 2 || c.Queues[1] != "heavy" || c.Concurrency != 3 || c.Prefetch != 2 || c.Name != "n" ||
		c.TLS == nil || c.TLS.CA != "ca.pem" || c.TLS.Cert != "c.pem" || c.TLS.Key != "k.pem" {
		t.Fatalf("%+v %+v", c, c.TLS)
	}
	var plain WorkerConfig
	fs = flag.NewFlagSet("w", flag.ContinueOnError)
	plain.RegisterFlags(fs)
	_ = fs.Parse(nil)
	plain.ApplyFlags()
	if plain.TLS != nil || plain.Concurrency != 1 {
		t.Fatalf("%+v", plain)
	}
}

func TestRatesAsCeleryWritesThem(t *testing.T) {
	for text, want := range map[string]Rate{
		"10/s":      {Count: 10, Per: time.Second},
		"100/m":     {Count: 100, Per: time.Minute},
		" 3 / 10s ": {Count: 3, Per: 10 * time.Second},
		"1/250ms":   {Count: 1, Per: 250 * time.Millisecond},
		"1000/d":    {Count: 1000, Per: 24 * time.Hour},
	} {
		got, err := ParseRate(text)
		if err != nil || got != want {
			t.Errorf("ParseRate(%q) = %+v, %v; want %+v", text, got, err, want)
		}
	}
	for text, says := range map[string]string{
		"10":    "expected COUNT/PERIOD",
		"0/s":   "from 1",
		"10/x":  "is not a unit",
		"10/2d": "between 1 ms and a day",
	} {
		if _, err := ParseRate(text); err == nil || !strings.Contains(err.Error(), says) {
			t.Errorf("ParseRate(%q): %v, want %q", text, err, says)
		}
	}
	l := Limit{Key: "api", Shared: true, Rate: &Rate{Count: 5, Per: time.Second, Burst: 2}}
	if err := l.check(); err != nil {
		t.Fatal(err)
	}
	p := l.pb()
	if p.Concurrency != 0 || p.Rate.GetCount() != 5 || p.Rate.GetPeriodMs() != 1000 || p.Rate.GetBurst() != 2 {
		t.Errorf("pb: %v", p)
	}
	bad := Limit{Rate: &Rate{Count: 2, Per: time.Second, Burst: 3}}
	if err := bad.check(); err == nil || !strings.Contains(err.Error(), "burst") {
		t.Errorf("a burst over the count: %v", err)
	}
}
