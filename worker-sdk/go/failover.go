package baton

// Several brokers, one leader: which address a client or worker tries next
// (docs/deployment.md, "How clients find the leader"; the Rust SDK's
// baton::failover).
//
// Brokers sharing one PostgreSQL database elect a leader; the others are
// standbys, which refuse every call with UNAVAILABLE, the trailers
// `baton-standby: 1` and, when they know it, `baton-leader: HOST:PORT`.
// brokers is the rule, as plain data (no sockets, no clock), so that it is
// tested alone and the client and the worker share it:
//
//  1. Try the addresses in order, starting with the last one that worked.
//  2. On a connection failure or UNAVAILABLE: if the answer carries
//     baton-leader and that address was not tried in this round, try it
//     next, at once (even if it is not in the list); else the next address
//     of the list not tried in this round, at once.
//  3. When every address of the list was tried, the round ends: pause with
//     the backoff, then start a new round. A round in which a standby
//     answered pauses only the backoff's first step and does not grow it.
//  4. A success ends the round and resets the backoff.

import (
	"errors"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// The trailers of a standby's refusal.
const (
	leaderKey  = "baton-leader"  // the leader's address, when the standby knows it
	standbyKey = "baton-standby" // marks a standby's refusal
)

// errNoAddress is the configuration error of an empty address list.
var errNoAddress = errors.New("baton: no broker address (an empty address list)")

// splitAddrs is the addresses of a comma-separated list ("h1:7070,h2:7070"),
// trimmed, empty items dropped.
func splitAddrs(list string) []string {
	var out []string
	for _, a := range strings.Split(list, ",") {
		if a = strings.TrimSpace(a); a != "" {
			out = append(out, a)
		}
	}
	return out
}

// refusal is what a failure said about where the leader is; the zero value
// is a connection failure's (no standby's marks).
type refusal struct {
	standby bool   // the answer came from a standby (baton-standby)
	leader  string // the leader's address (baton-leader); "" when not named
}

// refusalOf reads a standby's marks from a call's trailers.
func refusalOf(trailer metadata.MD) refusal {
	r := refusal{standby: len(trailer.Get(standbyKey)) > 0}
	for _, v := range trailer.Get(leaderKey) {
		if v = strings.TrimSpace(v); v != "" {
			r.leader = v
			break
		}
	}
	return r
}

// next is what to do after a failure: try current at once, or pause first
// because the round ended (pauseStandby: a standby answered in it, so the
// pause is the backoff's first step only).
type next int

const (
	nextNow next = iota
	nextPause
	nextPauseStandby
)

// brokers is the rotation over a list of broker addresses (see above).
type brokers struct {
	list    []string            // as configured, in order; never empty
	current string              // the address to try now: one of list, or a leader a standby named
	tried   map[string]struct{} // tried in this round
	standby bool                // a standby answered in this round
}

// newBrokers is a rotation over list (as given, in order), starting at its
// first address; errNoAddress when list is empty.
func newBrokers(list []string) (*brokers, error) {
	if len(list) == 0 {
		return nil, errNoAddress
	}
	return &brokers{list: list, current: list[0], tried: map[string]struct{}{}}, nil
}

// succeeded: the current address worked; it stays current, the round ends.
func (b *brokers) succeeded() {
	clear(b.tried)
	b.standby = false
}

// failed: the current address failed to connect, or refused (r: what its
// answer said). Moves to the address to try next.
func (b *brokers) failed(r refusal) next {
	b.tried[b.current] = struct{}{}
	b.standby = b.standby || r.standby
	if _, seen := b.tried[r.leader]; r.leader != "" && !seen {
		b.current = r.leader
		return nextNow
	}
	for _, a := range b.list {
		if _, seen := b.tried[a]; !seen {
			b.current = a
			return nextNow
		}
	}
	n := nextPause
	if b.standby {
		n = nextPauseStandby
	}
	b.standby = false
	clear(b.tried)
	b.current = b.list[0]
	return n
}

// elsewhere reports whether a call that failed with err is worth making at
// another broker: a standby refused it (it did nothing), or its broker could
// not be reached (grpc-go's words for a failed dial or name resolution). A
// connection that broke mid-call is not: the call may have been carried out.
func elsewhere(err error, r refusal) bool {
	if status.Code(err) != codes.Unavailable {
		return false
	}
	if r.standby {
		return true
	}
	msg := status.Convert(err).Message()
	for _, unreached := range []string{"while dialing", "name resolver", "produced zero addresses", "handshake failed"} {
		if strings.Contains(msg, unreached) {
			return true
		}
	}
	return false
}
