package baton

import (
	"encoding/json"
	"errors"
	"fmt"
	"runtime/debug"

	"example.invalid/baton/worker-sdk/go/pb"
)

// How a body's ending becomes an Outcome: the one place that maps Go to the
// protocol.
//
//   - a returned value: Success (JSON); one encoding/json cannot encode is
//     a fatal EncodeError (running again would return it again);
//   - RetryLater(d, msg): RetryLater;
//   - Fatal(err): a failure that is never retried;
//   - any other error: a retryable failure (the broker retries it while
//     MaxRetries allows);
//   - a panic: a retryable failure with the goroutine's stack; its type is
//     the panic value's type if it is an error, else "Panic".
//
// A failure carries the error's type (errorTypeOf), message and traceback.

func failure(errorType, message, tb string, retryable bool) *pb.Outcome {
	return &pb.Outcome{Result: &pb.Outcome_Failure{Failure: &pb.Failure{
		ErrorType: errorType, Message: message, Traceback: tb, Retryable: retryable,
	}}}
}

func cancelledOutcome(reason string) *pb.Outcome {
	if reason == "" {
		reason = "cancelled by the broker"
	}
	return failure(ErrorTypeCancelled, reason, "", false)
}

func fromResult(value any, name string) *pb.Outcome {
	text, err := json.Marshal(value)
	if err != nil {
		return failure(ErrorTypeEncode, fmt.Sprintf("result of %s: %v", name, err), "", false)
	}
	return &pb.Outcome{Result: &pb.Outcome_Success{Success: &pb.Success{Result: string(text)}}}
}

func fromError(err error) *pb.Outcome {
	var later *RetryLaterError
	if errors.As(err, &later) {
		return &pb.Outcome{Result: &pb.Outcome_RetryLater{RetryLater: &pb.RetryLater{
			DelayMs: uint64(later.After.Milliseconds()), Message: later.Message,
		}}}
	}
	var fatal *fatalError
	retryable := !errors.As(err, &fatal)
	var cancelled *CancelledError
	var refused *ThrottleRefusedError
	if errors.As(err, &cancelled) || errors.As(err, &refused) {
		retryable = false
	}
	return failure(errorTypeOf(err), err.Error(), traceback(err), retryable)
}

// panicError is a recovered panic with the stack where it happened.
type panicError struct {
	value any
	stack string
}

func (p *panicError) Error() string { return fmt.Sprint(p.value) }

func fromPanic(p *panicError) *pb.Outcome {
	typ := ErrorTypePanic
	if err, ok := p.value.(error); ok {
		typ = errorTypeOf(err)
	}
	return failure(typ, "panic: "+p.Error(), "panic: "+p.Error()+"\n\n"+p.stack, true)
}

// runBody runs h with the run's context and maps its ending to an Outcome.
func runBody(h *handler, tc *TaskContext, args []json.RawMessage) (out *pb.Outcome) {
	defer func() {
		if v := recover(); v != nil {
			out = fromPanic(&panicError{value: v, stack: string(debug.Stack())})
		}
	}()
	value, err := h.call(tc, tc.Name, args)
	if err != nil {
		return fromError(err)
	}
	return fromResult(value, tc.Name)
}
