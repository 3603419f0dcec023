package baton

import (
	"errors"
	"fmt"
	"runtime"
	"strings"
	"time"
)

// Error types the SDK itself reports in Failure.error_type (the same names
// as the Rust SDK's), so on_failure bodies and dashboards can match on them.
const (
	ErrorTypeCancelled        = "Cancelled"        // the broker cancelled the run (fatal)
	ErrorTypeNotRegistered    = "NotRegistered"    // no body for the assigned name (fatal)
	ErrorTypeInvalidArguments = "InvalidArguments" // args/kwargs do not fit the body (fatal)
	ErrorTypeEncode           = "EncodeError"      // the result is not JSON-encodable (fatal)
	ErrorTypeThrottleRefused  = "ThrottleRefused"  // the broker refused an in-body throttle (fatal)
	ErrorTypePanic            = "Panic"            // a body panicked with a value that is not an error
)

// RetryLater returns the error a task body returns for "not done yet, run me
// again in after" (NodeConductor's polling): the step keeps its place in its
// chain and spends one unit of its poll budget (MaxPolls); no callback fires
// until that budget runs out.
func RetryLater(after time.Duration, message string) error {
	if after < 0 {
		after = 0
	}
	if message == "" {
		message = fmt.Sprintf("retry in %s", after)
	}
	return &RetryLaterError{After: after, Message: message}
}

// RetryLaterError is what RetryLater returns.
type RetryLaterError struct {
	After   time.Duration
	Message string
}

func (e *RetryLaterError) Error() string { return e.Message }

// Fatal marks err as a failure retrying cannot fix: the chain fails at once
// (on_failure runs) whatever MaxRetries allows. The failure record shows
// err's own type. Fatal records the stack where it is called.
func Fatal(err error) error {
	if err == nil {
		return nil
	}
	return &fatalError{err: err, stack: callers(3)}
}

type fatalError struct {
	err   error
	stack []uintptr
}

func (e *fatalError) Error() string { return e.err.Error() }
func (e *fatalError) Unwrap() error { return e.err }

// Errorf is fmt.Errorf that records the stack where it is called, so the
// failure record of a task that returns it carries a stack trace. (A plain
// Go error has none; the record then shows its chain of wrapped errors.)
func Errorf(format string, args ...any) error {
	return &stackError{err: fmt.Errorf(format, args...), stack: callers(3)}
}

// WithStack records the stack where it is called on err (nil stays nil).
func WithStack(err error) error {
	if err == nil {
		return nil
	}
	return &stackError{err: err, stack: callers(3)}
}

type stackError struct {
	err   error
	stack []uintptr
}

func (e *stackError) Error() string { return e.err.Error() }
func (e *stackError) Unwrap() error { return e.err }

func callers(skip int) []uintptr {
	pcs := make([]uintptr, 64)
	n := runtime.Callers(skip, pcs)
	return pcs[:n]
}

func formatStack(pcs []uintptr) string {
	var b strings.Builder
	frames := runtime.CallersFrames(pcs)
	for {
		f, more := frames.Next()
		fmt.Fprintf(&b, "%s\n\t%s:%d\n", f.Function, f.File, f.Line)
		if !more {
			break
		}
	}
	return b.String()
}

// CancelledError is the cause of a run's context when the broker cancelled
// the run (context.Cause(ctx)); Reason is the broker's ("chain cancelled:
// ...", "time limit exceeded").
type CancelledError struct{ Reason string }

func (e *CancelledError) Error() string { return "cancelled by the broker: " + e.Reason }

// ErrorType lets an error name its own type in failure records (the Go
// type name is used otherwise).
type ErrorType interface{ ErrorType() string }

// ThrottleRefusedError is returned by TaskContext.Throttle when the broker
// refused the request (a bad key, say); a body that returns it fails fatally.
type ThrottleRefusedError struct{ Message string }

func (e *ThrottleRefusedError) Error() string { return "throttle refused by the broker: " + e.Message }

// ErrorType implements ErrorType.
func (e *ThrottleRefusedError) ErrorType() string { return ErrorTypeThrottleRefused }

// ChainFailedError is what waiting for a failed chain returns; Record is
// the failure record (Traceback is the remote worker's, in its language).
type ChainFailedError struct{ Record FailureRecord }

func (e *ChainFailedError) Error() string {
	return fmt.Sprintf("chain %s failed: %s (step %d of %s): %s: %s", e.Record.ChainID, e.Record.TaskName,
		e.Record.StepIndex, e.Record.Phase, e.Record.ErrorType, e.Record.Message)
}

// ChainCancelledError is what waiting for a cancelled chain returns.
type ChainCancelledError struct{ ChainID, Reason string }

func (e *ChainCancelledError) Error() string {
	if e.Reason == "" {
		return "chain " + e.ChainID + " was cancelled"
	}
	return "chain " + e.ChainID + " was cancelled: " + e.Reason
}

// genericWrappers are error types that only add context around another
// error: a failure record names the first error below them instead.
var genericWrappers = map[string]bool{
	"*fmt.wrapError": true, "*fmt.wrapErrors": true, "*baton.stackError": true, "*baton.fatalError": true,
}

// errorTypeOf is the type a failure record shows for err: its ErrorType()
// if it has one, else its Go type (%T), looking through fmt.Errorf("%w")
// and this package's wrappers to the first error with a type of its own
// (fmt.Errorf("open: %w", pathErr) shows "*fs.PathError").
func errorTypeOf(err error) string {
	for e := err; e != nil; {
		var named ErrorType
		if errors.As(e, &named) && e == any(named) {
			return named.ErrorType()
		}
		t := fmt.Sprintf("%T", e)
		if !genericWrappers[t] {
			return t
		}
		next := errors.Unwrap(e)
		if next == nil {
			return t
		}
		e = next
	}
	return "error"
}

// traceback is the failure record's traceback of err: its chain of wrapped
// errors with their types, then the stacks recorded on the way (Fatal,
// Errorf, WithStack, or `%+v` of errors that print their own, such as
// github.com/pkg/errors').
func traceback(err error) string {
	var b strings.Builder
	b.WriteString("error chain:\n")
	var stacks []string
	seen := map[error]bool{}
	var walk func(e error, depth int)
	walk = func(e error, depth int) {
		if e == nil || depth > 32 {
			return
		}
		fmt.Fprintf(&b, "%s%T: %s\n", strings.Repeat("  ", depth+1), e, e.Error())
		switch w := e.(type) {
		case *stackError:
			stacks = append(stacks, formatStack(w.stack))
		case *fatalError:
			stacks = append(stacks, formatStack(w.stack))
		default:
			if plus := fmt.Sprintf("%+v", e); plus != e.Error() && !seen[e] {
				if _, wraps := e.(interface{ Unwrap() error }); !wraps || strings.Contains(plus, ".go:") {
					stacks = append(stacks, plus)
				}
			}
		}
		seen[e] = true
		switch u := e.(type) {
		case interface{ Unwrap() []error }:
			for _, c := range u.Unwrap() {
				walk(c, depth+1)
			}
		case interface{ Unwrap() error }:
			walk(u.Unwrap(), depth+1)
		}
	}
	walk(err, 0)
	if len(stacks) == 0 {
		b.WriteString("(no stack recorded: return baton.Errorf(...) or baton.WithStack(err) to record one)\n")
	}
	for _, s := range stacks {
		b.WriteString("\nstack:\n")
		b.WriteString(s)
		if !strings.HasSuffix(s, "\n") {
			b.WriteString("\n")
		}
	}
	return b.String()
}
