package baton

import (
	"context"
	"fmt"
	"maps"
	"regexp"
	"strings"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"example.invalid/baton/worker-sdk/go/pb"
)

// W3C Trace Context as Baton carries it: a chain's traceparent and
// tracestate are two reserved keys of its context map, so every step and
// callback of the chain (retries and a requeued copy too) sees them, and
// the broker refuses a malformed traceparent.
//
// OpenTelemetry's API is a no-op until the program installs a tracer
// provider: Submit takes the span of its context.Context (unless the chain
// sets a traceparent), and each run's body runs in a span that is a child
// of the chain's.
const (
	TraceparentKey = "traceparent"
	TracestateKey  = "tracestate"
)

var traceparentShape = regexp.MustCompile(`^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$`)

// CheckTraceparent checks a traceparent as the broker does and returns its
// trace id.
func CheckTraceparent(value string) (string, error) {
	m := traceparentShape.FindStringSubmatch(value)
	field := fmt.Sprintf("context[%q] %q", TraceparentKey, value)
	if m == nil {
		return "", fmt.Errorf("baton: %s is not a W3C traceparent: it must be version-traceid-parentid-flags in lowercase hex, like 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", field)
	}
	if m[1] == "ff" || (m[1] == "00" && m[5] != "") {
		return "", fmt.Errorf("baton: %s has a bad version for its length", field)
	}
	if strings.Trim(m[2], "0") == "" || strings.Trim(m[3], "0") == "" {
		return "", fmt.Errorf("baton: %s has an all-zero id, which is invalid", field)
	}
	return m[2], nil
}

// withTrace is the chain's context map with its trace: an explicit
// traceparent is checked; without one, the span of ctx is added when it
// has a valid one. The caller's map is not changed.
func withTrace(ctx context.Context, context map[string]string) (map[string]string, error) {
	if tp, ok := context[TraceparentKey]; ok {
		if _, err := CheckTraceparent(tp); err != nil {
			return nil, err
		}
		return context, nil
	}
	sc := trace.SpanContextFromContext(ctx)
	if !sc.IsValid() {
		return context, nil
	}
	out := make(map[string]string, len(context)+2)
	maps.Copy(out, context)
	out[TraceparentKey] = fmt.Sprintf("00-%s-%s-%02x", sc.TraceID(), sc.SpanID(), byte(sc.TraceFlags()))
	if ts := sc.TraceState().String(); ts != "" {
		out[TracestateKey] = ts
	}
	return out, nil
}

// Traceparent is the chain's W3C traceparent (the submitter's span), or ""
// when it has none: the same for every step and callback.
func (tc *TaskContext) Traceparent() string { return tc.ChainContext[TraceparentKey] }

// Tracestate is the W3C tracestate that goes with Traceparent.
func (tc *TaskContext) Tracestate() string { return tc.ChainContext[TracestateKey] }

// TraceID is the trace id (32 hex digits) of Traceparent, or "".
func (tc *TaskContext) TraceID() string {
	id, err := CheckTraceparent(tc.Traceparent())
	if err != nil {
		return ""
	}
	return id
}

// startTaskSpan starts the run's span as a child of the chain's trace and
// makes it the body's context; the returned function ends it with the
// outcome.
func startTaskSpan(tc *TaskContext) func(*pb.Outcome) {
	parent := tc.Context
	if m := traceparentShape.FindStringSubmatch(tc.Traceparent()); m != nil && tc.TraceID() != "" {
		tid, _ := trace.TraceIDFromHex(m[2])
		sid, _ := trace.SpanIDFromHex(m[3])
		var flags byte
		_, _ = fmt.Sscanf(m[4], "%02x", &flags)
		state, _ := trace.ParseTraceState(tc.Tracestate())
		sc := trace.NewSpanContext(trace.SpanContextConfig{
			TraceID: tid, SpanID: sid, TraceFlags: trace.TraceFlags(flags), TraceState: state, Remote: true,
		})
		parent = trace.ContextWithRemoteSpanContext(parent, sc)
	}
	ctx, span := otel.Tracer("baton-worker").Start(parent, tc.Name,
		trace.WithSpanKind(trace.SpanKindConsumer),
		trace.WithAttributes(
			attribute.String("baton.chain_id", tc.ChainID),
			attribute.String("baton.task_id", tc.TaskID),
			attribute.Int64("baton.attempt", int64(tc.Attempt)),
		))
	tc.Context = ctx
	return func(out *pb.Outcome) {
		if f := out.GetFailure(); f != nil {
			span.SetStatus(codes.Error, f.ErrorType+": "+f.Message)
		} else if out.GetSuccess() != nil {
			span.SetStatus(codes.Ok, "")
		}
		span.End()
	}
}
