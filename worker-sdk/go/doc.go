// Package baton is the Go client and worker SDK of Baton, the task broker.
//
// It speaks gRPC to the broker (the contract is proto/baton/v1/baton.proto;
// the generated package is ./pb, made from it by `go generate`) and decides
// nothing itself: routing, throttles, retries, polling budgets, leases and
// callbacks are the broker's, so Go, Python and Rust workers share one queue
// and one set of guarantees.
//
// Layout:
//
//   - options.go, canvas.go: signatures (S, Si), chains and their options,
//     converted to the protocol in one place;
//   - client.go, ids.go: the Client (submit, get, wait, watch, cancel) and
//     the Result handle;
//   - transport.go: connections (token as `authorization: Bearer`, TLS,
//     mutual TLS);
//   - failover.go: several brokers, one leader: which address to try next,
//     as plain data; route.go: the Client's connections, whose calls
//     follow the leader with it (the Worker's reconnect loop uses it too);
//   - worker.go: the Worker's one Worker.Session stream, with ledger.go its
//     pure record of what it holds (runs, outcomes not acknowledged yet,
//     throttle slots and requests), which outlives a connection;
//   - context.go, handler.go, outcome.go, errors.go: what a task body sees
//     (TaskContext, an in-body Throttle) and how its ending becomes an
//     Outcome (value, error, Fatal, RetryLater, panic).
package baton
