package baton

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"iter"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"example.invalid/baton/worker-sdk/go/pb"
)

// MaxBatch is the most chains one SubmitChains call carries.
const MaxBatch = 1000

// watchSlice is the longest Wait trusts one silent WatchChain stream
// before opening it again (an idle connection dropped by a middlebox must
// not make Wait hang).
const watchSlice = 10 * time.Second

// ChainState is a chain's state as the protocol names it, unprefixed.
type ChainState string

// The chain states.
const (
	StateUnknown   ChainState = "UNKNOWN"
	StateRunning   ChainState = "RUNNING"
	StateSucceeded ChainState = "SUCCEEDED"
	StateFailed    ChainState = "FAILED"
	StateCancelled ChainState = "CANCELLED"
)

func chainState(s pb.ChainState) ChainState {
	switch s {
	case pb.ChainState_CHAIN_STATE_RUNNING:
		return StateRunning
	case pb.ChainState_CHAIN_STATE_SUCCEEDED:
		return StateSucceeded
	case pb.ChainState_CHAIN_STATE_FAILED:
		return StateFailed
	case pb.ChainState_CHAIN_STATE_CANCELLED:
		return StateCancelled
	}
	return StateUnknown
}

// Final reports whether the state is an end (succeeded, failed, cancelled).
func (s ChainState) Final() bool {
	return s == StateSucceeded || s == StateFailed || s == StateCancelled
}

// Dedup says why a submission stored no new chain ("" when it stored one).
type Dedup string

// The reasons a submission stored nothing new.
const (
	DedupNone           Dedup = ""
	DedupIdempotencyKey Dedup = "idempotency_key"
	DedupUniqueKey      Dedup = "unique_key"
	DedupChainID        Dedup = "chain_id"
)

func dedup(d pb.Dedup) Dedup {
	switch d {
	case pb.Dedup_DEDUP_IDEMPOTENCY_KEY:
		return DedupIdempotencyKey
	case pb.Dedup_DEDUP_UNIQUE_KEY:
		return DedupUniqueKey
	case pb.Dedup_DEDUP_CHAIN_ID:
		return DedupChainID
	}
	return DedupNone
}

// Client submits chains and follows them. It is safe for concurrent use;
// make one per process and Close it at the end. Given several brokers
// (Connection.Address "h1:7070,h2:7070"), its calls follow the leader.
type Client struct {
	route   *route
	broker  pb.BrokerClient
	timeout time.Duration
}

// NewClient returns a client of the broker c names (or of the leader among
// several). Nothing connects until the first call.
//
// # Errors
//
// An empty address list; a bad token or TLS setting.
func NewClient(c Connection) (*Client, error) {
	r, err := newRoute(c)
	if err != nil {
		return nil, err
	}
	return &Client{route: r, broker: pb.NewBrokerClient(r), timeout: 30 * time.Second}, nil
}

// Close closes the connections.
func (c *Client) Close() error { return c.route.close() }

// Conn is the connection to the current broker, for the generated stubs of
// ./pb (which then talk to that broker only; the stubs of Admin follow the
// leader).
func (c *Client) Conn() *grpc.ClientConn {
	conn, _ := c.route.conn(c.route.current()) // current was dialled already
	return conn
}

// Admin is the Admin service (inspection, limits, queues, drains; role
// admin when the broker uses tokens). Its calls follow the leader.
func (c *Client) Admin() pb.AdminClient { return pb.NewAdminClient(c.route) }

// bounded gives ctx the client's default timeout unless it has a deadline.
func (c *Client) bounded(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, c.timeout)
}

// Result is the handle of a submitted chain.
type Result struct {
	// ID is the chain's id (for a deduplicated submission, the earlier
	// chain's).
	ID string
	// Dedup says why no new chain was stored, if so.
	Dedup  Dedup
	client *Client
}

// Result is a handle of an existing chain.
func (c *Client) Result(chainID string) *Result { return &Result{ID: chainID, client: c} }

// Submit stores s (a Signature or a Chain) durably and returns its handle
// once the broker acknowledged it. The chain id is chosen here (UUIDv7)
// unless the Chain names one, so a call cut off by a lost connection is
// sent again (up to 3 times) without storing anything twice.
//
// # Errors
//
// A bad signature or option; the broker's status (INVALID_ARGUMENT naming
// the field, UNAUTHENTICATED, ...).
func (c *Client) Submit(ctx context.Context, s Submittable) (*Result, error) {
	req, err := s.request(ctx)
	if err != nil {
		return nil, err
	}
	var resp *pb.SubmitChainResponse
	resent, err := c.retry(ctx, func(ctx context.Context) error {
		var err error
		resp, err = c.broker.SubmitChain(ctx, req)
		return err
	})
	if err != nil {
		return nil, err
	}
	return c.result(resp, resent), nil
}

// SubmitMany stores many chains with one durable commit per MaxBatch
// chains (SubmitChains) and returns their handles in order. Each batch is
// stored whole or not at all; when a batch after the first is refused, the
// handles of the stored ones are returned with the error.
//
// # Errors
//
// As Submit; INVALID_ARGUMENT names chains[i] counted from the start of the
// refused batch.
func (c *Client) SubmitMany(ctx context.Context, items ...Submittable) ([]*Result, error) {
	reqs := make([]*pb.SubmitChainRequest, 0, len(items))
	for i, s := range items {
		req, err := s.request(ctx)
		if err != nil {
			return nil, fmt.Errorf("item %d: %w", i, err)
		}
		reqs = append(reqs, req)
	}
	out := make([]*Result, 0, len(reqs))
	for start := 0; start < len(reqs); start += MaxBatch {
		batch := reqs[start:min(start+MaxBatch, len(reqs))]
		var resp *pb.SubmitChainsResponse
		resent, err := c.retry(ctx, func(ctx context.Context) error {
			var err error
			resp, err = c.broker.SubmitChains(ctx, &pb.SubmitChainsRequest{Chains: batch})
			return err
		})
		if err != nil {
			return out, err
		}
		for _, r := range resp.Chains {
			out = append(out, c.result(r, resent))
		}
	}
	return out, nil
}

func (c *Client) result(r *pb.SubmitChainResponse, resent bool) *Result {
	d := dedup(r.Dedup)
	if d == DedupChainID && resent {
		d = DedupNone // our own resend after a lost answer stored it: the chain is this one
	}
	return &Result{ID: r.ChainId, Dedup: d, client: c}
}

// retry runs call (bounded by the client's timeout) again when the
// connection was lost under it (UNAVAILABLE), up to 3 more times; resent
// says whether it did.
func (c *Client) retry(ctx context.Context, call func(context.Context) error) (resent bool, err error) {
	ctx, cancel := c.bounded(ctx)
	defer cancel()
	for attempt := 0; attempt < 4; attempt++ {
		if err = call(ctx); status.Code(err) != codes.Unavailable {
			return attempt > 0, err
		}
		select {
		case <-ctx.Done():
			return attempt > 0, err
		case <-time.After(time.Duration(100<<attempt) * time.Millisecond):
		}
	}
	return true, err
}

// GetChain is the chain's current state, with each step's.
func (c *Client) GetChain(ctx context.Context, chainID string) (*pb.Chain, error) {
	ctx, cancel := c.bounded(ctx)
	defer cancel()
	return c.broker.GetChain(ctx, &pb.GetChainRequest{ChainId: chainID})
}

// Cancel cancels the chain: unstarted steps never start, running ones are
// told to stop (their context is cancelled), and neither callback runs.
// Returns the chain's state after the call.
func (c *Client) Cancel(ctx context.Context, chainID, reason string) (ChainState, error) {
	ctx, cancel := c.bounded(ctx)
	defer cancel()
	resp, err := c.broker.CancelChain(ctx, &pb.CancelChainRequest{ChainId: chainID, Reason: reason})
	if err != nil {
		return StateUnknown, err
	}
	return chainState(resp.State), nil
}

// Watch yields the chain's events (first a "snapshot") until it ends; the
// sequence stops after the chain's last event, at the first error, or when
// the caller stops ranging. Until the first event, a stream that a standby
// refuses or that cannot reach its broker is opened again at the next one,
// as a unary call is made again.
func (c *Client) Watch(ctx context.Context, chainID string) iter.Seq2[*pb.ChainEvent, error] {
	return func(yield func(*pb.ChainEvent, error) bool) {
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		since := time.Now()
		for {
			address := c.route.current()
			failure := c.watchAt(ctx, address, chainID, yield)
			if failure == nil {
				return
			}
			pause, again := c.route.failed(address, failure.err, failure.refusal, since)
			if !again || sleep(ctx, pause) != nil {
				yield(nil, failure.err)
				return
			}
		}
	}
}

// unanswered is how a stream failed before its first event: its error and
// what its trailers said.
type unanswered struct {
	err     error
	refusal refusal
}

// watchAt follows one WatchChain stream at address; non-nil when it failed
// before its first event (nothing was yielded), so that another broker may
// be asked.
func (c *Client) watchAt(ctx context.Context, address, chainID string, yield func(*pb.ChainEvent, error) bool) *unanswered {
	conn, err := c.route.conn(address)
	if err != nil {
		return &unanswered{err: err}
	}
	stream, err := pb.NewBrokerClient(conn).WatchChain(ctx, &pb.WatchChainRequest{ChainId: chainID}, c.route.waitForReady(address))
	if err != nil {
		return &unanswered{err: err}
	}
	for answered := false; ; answered = true {
		ev, err := stream.Recv()
		if err == io.EOF {
			return nil
		}
		if err != nil && !answered {
			return &unanswered{err: err, refusal: refusalOf(stream.Trailer())}
		}
		if !answered {
			c.route.succeeded(address)
		}
		if !yield(ev, err) || err != nil {
			return nil
		}
	}
}

// Wait follows the chain (WatchChain; no polling) until it ends and returns
// its result: the last main step's JSON result.
//
// # Errors
//
// *ChainFailedError (with the failure record) or *ChainCancelledError when
// the chain ended so; ctx's error when it ends first; the broker's status.
func (c *Client) Wait(ctx context.Context, chainID string) (json.RawMessage, error) {
	for {
		chain, err := c.watchSlice(ctx, chainID)
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if err != nil {
			switch status.Code(err) {
			case codes.Unavailable, codes.DeadlineExceeded, codes.ResourceExhausted, codes.Canceled:
				time.Sleep(100 * time.Millisecond)
				continue
			}
			return nil, err
		}
		if chain == nil { // a silent slice or a plain end: read the state
			if chain, err = c.GetChain(ctx, chainID); err != nil {
				if status.Code(err) == codes.Unavailable {
					continue
				}
				return nil, err
			}
		}
		if chainState(chain.State).Final() {
			return finalResult(chain)
		}
	}
}

// watchSlice watches for at most watchSlice; the chain once it ended, or
// nil when the slice ran out or the stream ended before a final event.
func (c *Client) watchSlice(ctx context.Context, chainID string) (*pb.Chain, error) {
	sliceCtx, cancel := context.WithTimeout(ctx, watchSlice)
	defer cancel()
	for ev, err := range c.Watch(sliceCtx, chainID) {
		if err != nil {
			if sliceCtx.Err() != nil && ctx.Err() == nil {
				return nil, nil
			}
			return nil, err
		}
		if ev.Chain != nil && chainState(ev.Chain.State).Final() {
			return ev.Chain, nil
		}
	}
	return nil, nil
}

func finalResult(chain *pb.Chain) (json.RawMessage, error) {
	switch chainState(chain.State) {
	case StateSucceeded:
		if chain.Result == "" {
			return json.RawMessage("null"), nil
		}
		return json.RawMessage(chain.Result), nil
	case StateFailed:
		rec := failureRecord(chain.Failure)
		if rec.ChainID == "" {
			rec.ChainID = chain.ChainId
		}
		return nil, &ChainFailedError{Record: rec}
	case StateCancelled:
		return nil, &ChainCancelledError{ChainID: chain.ChainId, Reason: chain.CancelReason}
	}
	return nil, errors.New("baton: chain has not ended")
}

// Wait waits for the chain's end; see Client.Wait.
func (r *Result) Wait(ctx context.Context) (json.RawMessage, error) { return r.client.Wait(ctx, r.ID) }

// Get waits for the chain's end and decodes its result into out (a
// pointer; nil discards it); see Client.Wait for the errors.
func (r *Result) Get(ctx context.Context, out any) error {
	raw, err := r.client.Wait(ctx, r.ID)
	if err != nil || out == nil {
		return err
	}
	return json.Unmarshal(raw, out)
}

// Info is the chain's current state with its steps (GetChain).
func (r *Result) Info(ctx context.Context) (*pb.Chain, error) { return r.client.GetChain(ctx, r.ID) }

// Status is the chain's current state.
func (r *Result) Status(ctx context.Context) (ChainState, error) {
	ch, err := r.client.GetChain(ctx, r.ID)
	if err != nil {
		return StateUnknown, err
	}
	return chainState(ch.State), nil
}

// Cancel cancels the chain; see Client.Cancel.
func (r *Result) Cancel(ctx context.Context, reason string) (ChainState, error) {
	return r.client.Cancel(ctx, r.ID, reason)
}

// Watch yields the chain's events; see Client.Watch.
func (r *Result) Watch(ctx context.Context) iter.Seq2[*pb.ChainEvent, error] {
	return r.client.Watch(ctx, r.ID)
}
