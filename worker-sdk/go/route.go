package baton

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// Timings of a client's failover.
const (
	failoverWait  = 30 * time.Second       // how long a call goes on while standbys answer
	failoverPause = 100 * time.Millisecond // the pause after a round in which a standby answered
)

// route is a Client's connections to its brokers, one per address tried,
// and the rotation among them (failover.go). It is the
// grpc.ClientConnInterface of the Client's stubs: a unary call that a
// standby refuses, or that cannot reach its broker, is made again at the
// leader the standby named or at the next address. Safe for concurrent use.
type route struct {
	connection Connection
	// single: one address configured; calls to it wait for it to be ready
	// (a broker that restarts), as they did before lists.
	single string

	mu      sync.Mutex
	brokers *brokers
	conns   map[string]*grpc.ClientConn // lazy connections, by address
}

// newRoute checks c and opens lazy connections to its addresses (nothing
// connects until the first call).
func newRoute(c Connection) (*route, error) {
	list, err := c.addresses()
	if err != nil {
		return nil, err
	}
	b, err := newBrokers(list)
	if err != nil {
		return nil, err
	}
	r := &route{connection: c, brokers: b, conns: map[string]*grpc.ClientConn{}}
	if len(list) == 1 {
		r.single = list[0]
	}
	for _, a := range list {
		if _, err := r.conn(a); err != nil {
			_ = r.close()
			return nil, err
		}
	}
	return r, nil
}

// current is the address calls go to now.
func (r *route) current() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.brokers.current
}

// conn is the connection to address, opened on first use.
func (r *route) conn(address string) (*grpc.ClientConn, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if conn, ok := r.conns[address]; ok {
		return conn, nil
	}
	conn, err := r.connection.dial(address)
	if err != nil {
		return nil, err
	}
	r.conns[address] = conn
	return conn, nil
}

func (r *route) close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	var errs []error
	for _, conn := range r.conns {
		errs = append(errs, conn.Close())
	}
	clear(r.conns)
	return errors.Join(errs...)
}

// waitForReady: with one broker a call waits for it to (re)start, within
// its context; with several it does not, it goes to the next.
func (r *route) waitForReady(address string) grpc.CallOption {
	return grpc.WaitForReady(address == r.single)
}

// succeeded: a call at address was answered (not refused).
func (r *route) succeeded(address string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.brokers.current == address {
		r.brokers.succeeded()
	}
}

// failed: a call at address, started at since, failed with err (rf: what
// its trailers said). Whether to make it again (at the new current
// address), after pause; a round with no standby ends the call, and so does
// 30 s of standbys.
func (r *route) failed(address string, err error, rf refusal, since time.Time) (pause time.Duration, again bool) {
	if !elsewhere(err, rf) {
		return 0, false
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.brokers.current != address {
		return 0, true // another call moved on already: follow it
	}
	switch r.brokers.failed(rf) {
	case nextNow:
		return 0, true
	case nextPauseStandby:
		return failoverPause, time.Since(since) < failoverWait
	}
	return 0, false
}

// Invoke makes a unary call at the current broker, following the leader.
func (r *route) Invoke(ctx context.Context, method string, args, reply any, opts ...grpc.CallOption) error {
	since := time.Now()
	for {
		address := r.current()
		var trailer metadata.MD
		conn, err := r.conn(address)
		if err == nil {
			err = conn.Invoke(ctx, method, args, reply,
				append(slices.Clip(opts), r.waitForReady(address), grpc.Trailer(&trailer))...)
			if err == nil {
				r.succeeded(address)
				return nil
			}
		} else {
			err = status.Error(codes.Unavailable, fmt.Sprintf("while dialing %s: %v", address, err))
		}
		pause, again := r.failed(address, err, refusalOf(trailer), since)
		if !again || sleep(ctx, pause) != nil {
			return err
		}
	}
}

// NewStream opens a stream at the current broker (Client.Watch follows the
// leader itself, as it reads the stream's answer).
func (r *route) NewStream(ctx context.Context, desc *grpc.StreamDesc, method string, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	address := r.current()
	conn, err := r.conn(address)
	if err != nil {
		return nil, err
	}
	return conn.NewStream(ctx, desc, method, append(slices.Clip(opts), r.waitForReady(address))...)
}

// sleep waits d, or until ctx ends (its error).
func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
