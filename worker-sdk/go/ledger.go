package baton

import (
	"cmp"
	"slices"

	"example.invalid/baton/worker-sdk/go/pb"
)

// The worker's own record of what it holds: runs (still running, or
// finished with an outcome the broker has not acknowledged yet), granted
// in-body throttle slots, slots given back, and throttle requests not
// answered yet. It is what outlives a connection: the next Hello is built
// from it (held, held_slots), and the Welcome is reconciled against it
// (kept runs get their unacknowledged outcomes, releases and pending
// requests re-sent; the others are aborted).
//
// It does no I/O and takes no lock (the Worker holds its mutex around every
// call): its methods return the messages to send, and the caller sends them.
// Every message handed out is remembered with the link (one connection) it
// goes out on, so a reconnect re-sends exactly what the new link has not
// carried yet. The shape is the Rust SDK's ledger.rs.

// taskRef identifies one attempt of one task.
type taskRef struct {
	id      string
	attempt uint32
}

func refOf(r *pb.TaskRef) taskRef { return taskRef{r.GetTaskId(), r.GetAttempt()} }
func (t taskRef) pb() *pb.TaskRef { return &pb.TaskRef{TaskId: t.id, Attempt: t.attempt} }

// linkID numbers connections from 1; 0 means "no link" (disconnected).
type linkID uint64

// runID numbers runs in this process: a task ref is not enough, since a
// broker killed before an assignment was durable may assign the same
// attempt again while the forgotten run's end is still on its way.
type runID uint64

type ledgerRun struct {
	id runID
	// cancel stops the body (cancels its context with a cause); nil once
	// finished.
	cancel func(error)
	// cancelReason is set when the broker sent Cancel; the run is then
	// reported as a Cancelled failure whatever its body returned.
	cancelReason *string
	// outcome is set once finished; it waits for its OutcomeAck.
	outcome *pb.Outcome
	sentOn  linkID
}

func (r *ledgerRun) running() bool { return r.outcome == nil }

type throttleRequest struct {
	msg *pb.ThrottleAcquire
	// reply gets nil once granted, the refusal otherwise (buffered, 1);
	// nil once the requester gave up, in which case a grant is released at
	// once.
	reply  chan error
	sentOn linkID
}

type releasedSlot struct {
	task   taskRef
	sentOn linkID
}

type ledger struct {
	runs     map[taskRef]*ledgerRun
	requests map[uint64]*throttleRequest // pending, by request id; each of a running run
	slots    map[uint64]taskRef          // granted, by request id; each of a running run
	// released are slots given back while their run goes on. A release has
	// no acknowledgment, so one that went out on a link that broke may never
	// have arrived: each new link carries them again (releasing is
	// idempotent).
	released map[uint64]releasedSlot
	lastRun  runID
}

func newLedger() *ledger {
	return &ledger{
		runs:     map[taskRef]*ledgerRun{},
		requests: map[uint64]*throttleRequest{},
		slots:    map[uint64]taskRef{},
		released: map[uint64]releasedSlot{},
	}
}

// len is how many runs the worker holds (running or unacknowledged).
func (l *ledger) len() int { return len(l.runs) }

// start records a new run; false (and nothing recorded) when this attempt
// is held already.
func (l *ledger) start(t taskRef, cancel func(error)) (runID, bool) {
	if _, ok := l.runs[t]; ok {
		return 0, false
	}
	l.lastRun++
	l.runs[t] = &ledgerRun{id: l.lastRun, cancel: cancel}
	return l.lastRun, true
}

// isCurrent reports whether run id of t is held here and still running.
func (l *ledger) isCurrent(t taskRef, id runID) bool {
	r, ok := l.runs[t]
	return ok && r.id == id && r.running()
}

// cancel stops a running run on the broker's request; false when it is not
// running here.
func (l *ledger) cancel(t taskRef, reason string) bool {
	r, ok := l.runs[t]
	if !ok || !r.running() {
		return false
	}
	r.cancelReason = &reason
	r.cancel(&CancelledError{Reason: reason})
	return true
}

// finish records the end of run id of t and returns the outcome to report
// on link (or on the next link, when link is 0). nil when the run is no
// longer this worker's (lost, aborted). A cancelled run reports Cancelled.
// Its throttle slots and requests are dropped: the broker frees them when
// the run ends.
func (l *ledger) finish(t taskRef, id runID, out *pb.Outcome, link linkID) *pb.Outcome {
	r, ok := l.runs[t]
	if !ok || r.id != id || !r.running() {
		return nil
	}
	if r.cancelReason != nil {
		out = cancelledOutcome(*r.cancelReason)
	}
	out.Task = t.pb()
	r.outcome, r.sentOn = out, link
	r.cancel(nil) // frees the context's resources
	r.cancel = nil
	l.dropThrottlesOf(t)
	return out
}

// acknowledged forgets a finished run whose outcome the broker acknowledged.
func (l *ledger) acknowledged(t taskRef) bool {
	r, ok := l.runs[t]
	if !ok || r.running() {
		return false
	}
	delete(l.runs, t)
	return true
}

// request records an in-body throttle request of a running run and returns
// it, to be sent on link (or on the next). false when the run is not
// running.
func (l *ledger) request(msg *pb.ThrottleAcquire, reply chan error, link linkID) bool {
	r, ok := l.runs[refOf(msg.Task)]
	if !ok || !r.running() {
		return false
	}
	l.requests[msg.RequestId] = &throttleRequest{msg: msg, reply: reply, sentOn: link}
	return true
}

// granted: the broker granted a request on link. Returns a release to send
// at once when the requester gave up meanwhile.
func (l *ledger) granted(requestID uint64, link linkID) *pb.ThrottleRelease {
	req, ok := l.requests[requestID]
	if !ok {
		return nil
	}
	delete(l.requests, requestID)
	t := refOf(req.msg.Task)
	if req.reply == nil {
		return l.giveBack(requestID, t, link)
	}
	req.reply <- nil
	l.slots[requestID] = t
	return nil
}

// refused: the broker refused a request (WorkerError); false when no such
// request was pending.
func (l *ledger) refused(requestID uint64, message string) bool {
	req, ok := l.requests[requestID]
	if !ok {
		return false
	}
	delete(l.requests, requestID)
	if req.reply != nil {
		req.reply <- &ThrottleRefusedError{Message: message}
	}
	return true
}

// release: the requester let go of request requestID. Returns the release
// to send on link (or on the next) when the slot was granted; a request
// still pending is marked abandoned instead (a later grant is given back).
func (l *ledger) release(requestID uint64, link linkID) *pb.ThrottleRelease {
	if t, ok := l.slots[requestID]; ok {
		delete(l.slots, requestID)
		return l.giveBack(requestID, t, link)
	}
	if req, ok := l.requests[requestID]; ok {
		req.reply = nil
		// A withdrawal: the broker drops a request released before its grant.
		return &pb.ThrottleRelease{RequestId: requestID, Task: req.msg.Task}
	}
	return nil
}

func (l *ledger) giveBack(requestID uint64, t taskRef, link linkID) *pb.ThrottleRelease {
	l.released[requestID] = releasedSlot{task: t, sentOn: link}
	return &pb.ThrottleRelease{RequestId: requestID, Task: t.pb()}
}

// held is Hello's held (every run, sorted) and held_slots.
func (l *ledger) held() ([]*pb.TaskRef, []*pb.HeldSlot) {
	refs := make([]taskRef, 0, len(l.runs))
	for t := range l.runs {
		refs = append(refs, t)
	}
	slices.SortFunc(refs, compareRefs)
	held := make([]*pb.TaskRef, 0, len(refs))
	for _, t := range refs {
		held = append(held, t.pb())
	}
	ids := make([]uint64, 0, len(l.slots))
	for id := range l.slots {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	slots := make([]*pb.HeldSlot, 0, len(ids))
	for _, id := range ids {
		slots = append(slots, &pb.HeldSlot{Task: l.slots[id].pb(), RequestId: id})
	}
	return held, slots
}

func compareRefs(a, b taskRef) int {
	return cmp.Or(cmp.Compare(a.id, b.id), cmp.Compare(a.attempt, b.attempt))
}

// reconcile applies a Welcome received on link: runs in kept stay; every
// other run is aborted and forgotten. Returns the lost runs and what link
// must carry: the unacknowledged outcomes, the slot releases and the
// pending requests of kept runs that it has not carried yet, in that order
// (slots are given back before new ones are asked for).
func (l *ledger) reconcile(kept []*pb.TaskRef, link linkID) (lost []taskRef, resend []*pb.WorkerMessage) {
	keep := map[taskRef]bool{}
	for _, k := range kept {
		keep[refOf(k)] = true
	}
	for t := range l.runs {
		if !keep[t] {
			lost = append(lost, t)
		}
	}
	slices.SortFunc(lost, compareRefs)
	for _, t := range lost {
		l.forget(t)
	}
	var finished []taskRef
	for t, r := range l.runs {
		if !r.running() && r.sentOn != link {
			finished = append(finished, t)
		}
	}
	slices.SortFunc(finished, compareRefs)
	for _, t := range finished {
		r := l.runs[t]
		r.sentOn = link
		resend = append(resend, &pb.WorkerMessage{Msg: &pb.WorkerMessage_Outcome{Outcome: r.outcome}})
	}
	for _, id := range sortedKeys(l.released) {
		rel := l.released[id]
		if rel.sentOn != link {
			rel.sentOn = link
			l.released[id] = rel
			resend = append(resend, &pb.WorkerMessage{Msg: &pb.WorkerMessage_ThrottleRelease{
				ThrottleRelease: &pb.ThrottleRelease{RequestId: id, Task: rel.task.pb()}}})
		}
	}
	for _, id := range sortedKeys(l.requests) {
		req := l.requests[id]
		if req.reply != nil && req.sentOn != link {
			req.sentOn = link
			resend = append(resend, &pb.WorkerMessage{Msg: &pb.WorkerMessage_ThrottleAcquire{ThrottleAcquire: req.msg}})
		}
	}
	return lost, resend
}

func sortedKeys[V any](m map[uint64]V) []uint64 {
	keys := make([]uint64, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// abortAll aborts and forgets every run; returns how many there were.
func (l *ledger) abortAll() int {
	n := len(l.runs)
	for t := range l.runs {
		l.forget(t)
	}
	return n
}

// forget removes a run, stopping its body if it still runs, with its slots
// and requests; whatever it still reports is ignored.
func (l *ledger) forget(t taskRef) {
	if r, ok := l.runs[t]; ok {
		delete(l.runs, t)
		if r.running() {
			r.cancel(errLeaseLost)
		}
	}
	l.dropThrottlesOf(t)
}

func (l *ledger) dropThrottlesOf(t taskRef) {
	for id, req := range l.requests {
		if refOf(req.msg.Task) == t {
			delete(l.requests, id)
			if req.reply != nil {
				req.reply <- errRunOver
			}
		}
	}
	for id, holder := range l.slots {
		if holder == t {
			delete(l.slots, id)
		}
	}
	for id, rel := range l.released {
		if rel.task == t {
			delete(l.released, id)
		}
	}
}
