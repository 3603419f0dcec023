package baton

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"example.invalid/baton/worker-sdk/go/pb"
)

// Timings of the worker's connection.
const (
	backoffMin     = 100 * time.Millisecond // first reconnect delay, doubled after each failure...
	backoffMax     = 2 * time.Second        // ...up to this
	welcomeTimeout = 10 * time.Second       // a stream that brings no Welcome by then is dropped
	goodbyeTimeout = 5 * time.Second        // after Goodbye, how long the broker may take to end the stream
)

var (
	// ErrForced is what Run returns after Stop: the worker left without
	// finishing its runs; the broker redelivers them when their leases lapse.
	ErrForced = errors.New("baton: worker stopped without finishing its runs")

	errLeaseLost = &CancelledError{Reason: "lease lost: the broker no longer gives this run to this worker"}
	errRunOver   = errors.New("baton: the run is over or the worker is stopping")
)

// WorkerRefusedError is returned by Run when the broker refused the worker
// itself (bad token, role, queue or task name): reconnecting cannot help.
type WorkerRefusedError struct{ Err error }

func (e *WorkerRefusedError) Error() string {
	return "baton: the broker refused this worker: " + e.Err.Error()
}
func (e *WorkerRefusedError) Unwrap() error { return e.Err }

// WorkerConfig configures a Worker.
type WorkerConfig struct {
	Connection
	// Name is shown in inspection; default "host:pid".
	Name string
	// Queues to take tasks from; default ["general"]. Heavy tasks go to
	// "heavy" unless a queue is named.
	Queues []string
	// Concurrency is how many bodies run at once; default 1.
	Concurrency int
	// Prefetch is how many assignments the broker may send beyond
	// Concurrency (Celery's prefetch): they wait here, in order, and start
	// as runs end. Their leases and time limits run from assignment; keep
	// it for many short tasks. Default 0.
	Prefetch int
	// Logger; default slog.Default().
	Logger *slog.Logger

	flagTLS   *TLS // set by RegisterFlags
	flagTLSOn bool
}

// Worker runs task bodies for the broker over one Worker.Session stream.
// Register every task, then call Run. Do not register after Run started.
type Worker struct {
	cfg   WorkerConfig
	log   *slog.Logger
	tasks map[string]*registered

	clientOnce sync.Once
	client     *Client
	clientErr  error

	reqSeq   atomic.Uint64
	runsCtx  context.Context
	changed  chan struct{} // a nudge to the session loop: look at the state again
	forced   chan struct{}
	stopOnce sync.Once

	mu       sync.Mutex // guards everything below
	led      *ledger
	link     *link // the welcomed stream; nil while disconnected
	linkSeq  linkID
	active   int           // bodies running: at most cfg.Concurrency
	waiting  []*pendingRun // assigned, not started (prefetched), in order
	draining bool
	workerID string
	leaseMs  uint64
}

type registered struct {
	task Task
	h    *handler
}

// pendingRun is an assignment waiting for a free slot (or a Welcome).
type pendingRun struct {
	ref  taskRef
	id   runID
	tc   *TaskContext
	h    *handler
	args []json.RawMessage
}

// NewWorker returns a worker; nothing connects until Run.
func NewWorker(cfg WorkerConfig) *Worker {
	if cfg.Concurrency < 1 {
		cfg.Concurrency = 1
	}
	if cfg.Prefetch < 0 {
		cfg.Prefetch = 0
	}
	if len(cfg.Queues) == 0 {
		cfg.Queues = []string{"general"}
	}
	if cfg.Name == "" {
		host, _ := os.Hostname()
		cfg.Name = fmt.Sprintf("%s:%d", host, os.Getpid())
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.Default()
	}
	return &Worker{
		cfg:     cfg,
		log:     logger.With("worker", cfg.Name),
		tasks:   map[string]*registered{},
		changed: make(chan struct{}, 1),
		forced:  make(chan struct{}),
		led:     newLedger(),
	}
}

// Register adds the body of the task name with its default options and
// returns the Task (whose S and Si make signatures carrying the defaults).
// The defaults are announced to the broker, so routing (Heavy, Queue),
// declared throttles (Throttle) and retries apply to every chain naming the
// task, whoever submitted it.
//
// fn's first parameter is a *TaskContext (or a context.Context); each
// following parameter takes one JSON argument, decoded with encoding/json
// (a variadic last one takes the rest); it returns (R, error) or error:
//
//	w.Register("demo.slow", func(ctx *baton.TaskContext, uuid int) (any, error) {...}, baton.Throttle(1))
//
// Register panics when fn has another shape, the name is empty, or it was
// registered already (as http.HandleFunc does: a programming error).
func (w *Worker) Register(name string, fn any, opts ...Option) Task {
	if name == "" {
		panic("baton: Register with an empty task name")
	}
	if _, dup := w.tasks[name]; dup {
		panic("baton: task " + name + " registered twice")
	}
	h, err := newHandler(fn)
	if err != nil {
		panic(fmt.Sprintf("baton: Register(%q): %v", name, err))
	}
	t := NewTask(name, opts...)
	if _, err := t.Defaults.pb(); err != nil {
		panic(fmt.Sprintf("baton: Register(%q): %v", name, err))
	}
	w.tasks[name] = &registered{task: t, h: h}
	return t
}

// Client is a client of the worker's broker (same connection settings),
// made on first use.
func (w *Worker) Client() *Client {
	w.clientOnce.Do(func() { w.client, w.clientErr = NewClient(w.cfg.Connection) })
	if w.clientErr != nil {
		panic(w.clientErr) // the same settings already dialled for Run
	}
	return w.client
}

// ID is the id the broker gave the current (or last) stream.
func (w *Worker) ID() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.workerID
}

// Stop makes Run return ErrForced at once, abandoning running bodies (their
// contexts are cancelled); the broker redelivers them when their leases
// lapse. Drain instead by cancelling Run's context.
func (w *Worker) Stop() { w.stopOnce.Do(func() { close(w.forced) }) }

// RunWithSignals is Run, draining on the first SIGTERM or SIGINT and
// stopping at once (ErrForced) on the second.
func (w *Worker) RunWithSignals(ctx context.Context) error {
	ctx, drain := context.WithCancel(ctx)
	defer drain()
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(sigs)
	go func() {
		select {
		case s := <-sigs:
			w.log.Info("draining (signal again to exit now)", "signal", s.String())
			drain()
		case <-ctx.Done():
			return
		}
		select {
		case s := <-sigs:
			w.log.Warn("exiting without finishing the running tasks", "signal", s.String())
			w.Stop()
		case <-w.forced:
		}
	}()
	return w.Run(ctx)
}

// Run serves until ctx is done and the worker drained: when ctx ends it
// takes nothing new, finishes the running (and prefetched) tasks, waits for
// their outcomes to be acknowledged, says Goodbye and returns nil. A lost
// connection is retried with backoff (0.1 s doubling to 2 s), at the leader
// when Connection.Address lists several brokers; the next Hello
// lists the runs and slots still held, which the broker keeps when their
// leases are current.
//
// # Errors
//
// *WorkerRefusedError when the broker refused the worker; ErrForced after
// Stop; a connection setting error.
func (w *Worker) Run(ctx context.Context) error {
	if len(w.tasks) == 0 {
		return errors.New("baton: no task registered")
	}
	// Checked now, so a bad setting fails at once rather than in a loop.
	if err := w.cfg.Connection.check(); err != nil {
		return err
	}
	list, err := w.cfg.Connection.addresses()
	if err != nil {
		return err
	}
	brokers, err := newBrokers(list)
	if err != nil {
		return err
	}
	runsCtx, abort := context.WithCancel(context.WithoutCancel(ctx))
	defer abort()
	w.runsCtx = runsCtx
	w.log.Info("worker starting", "queues", w.cfg.Queues, "concurrency", w.cfg.Concurrency,
		"prefetch", w.cfg.Prefetch, "tasks", len(w.tasks), "brokers", list)
	delay := backoffMin
	quiet := false // the first pause of an outage is logged as a warning, later ones are not
	for {
		// A connection of its own for each attempt: gRPC's reconnect backoff
		// of an old one must not add to the worker's own.
		address := brokers.current
		conn, err := w.cfg.Connection.dial(address)
		if err != nil {
			return err
		}
		welcomed, done, rf, err := w.session(ctx, conn, func() {
			brokers.succeeded()
			delay = backoffMin
			quiet = false
		})
		_ = conn.Close()
		if errors.Is(err, ErrForced) {
			w.mu.Lock()
			n := w.led.abortAll()
			w.mu.Unlock()
			w.log.Warn("worker stopped", "abandoned", n)
			return ErrForced
		}
		if done {
			w.log.Info("worker drained and stopped")
			return nil
		}
		switch status.Code(err) {
		case codes.InvalidArgument, codes.Unimplemented, codes.Unauthenticated, codes.PermissionDenied:
			return &WorkerRefusedError{Err: err}
		}
		if welcomed {
			w.log.Warn("connection to the broker lost; reconnecting", "broker", address, "cause", err)
		} else {
			w.log.Debug("could not connect to the broker", "broker", address, "cause", err)
		}
		// The next broker at once while a round of the addresses goes on;
		// after a round, the backoff (its first step only, not grown, when
		// a standby answered: the leader is being elected).
		pause := delay
		switch brokers.failed(rf) {
		case nextNow:
			continue
		case nextPauseStandby:
			pause = backoffMin
		case nextPause:
			delay = min(delay*2, backoffMax)
		}
		if !quiet && !welcomed {
			w.log.Warn("no broker took the worker; retrying", "brokers", list, "cause", err, "in", pause)
		}
		quiet = true
		timer := time.NewTimer(pause)
		select {
		case <-timer.C:
		case <-w.forced:
			timer.Stop()
			continue // the next session returns ErrForced at once
		case <-ctx.Done():
			w.beginDrain()
			if w.finished() {
				timer.Stop()
				w.log.Info("worker drained and stopped")
				return nil
			}
			<-timer.C
		}
	}
}

// link is one welcomed stream; Send is serialized (grpc-go allows one
// sender at a time).
type link struct {
	id     linkID
	mu     sync.Mutex
	stream grpc.BidiStreamingClient[pb.WorkerMessage, pb.BrokerMessage]
}

// send sends msgs in order; a failure means the stream is broken, which
// its reader sees too (then the worker reconnects and re-sends).
func (l *link) send(msgs ...*pb.WorkerMessage) {
	if l == nil {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, m := range msgs {
		if l.stream.Send(m) != nil {
			return
		}
	}
}

func (l *link) closeSend() {
	l.mu.Lock()
	defer l.mu.Unlock()
	_ = l.stream.CloseSend()
}

func (l *link) linkID() linkID {
	if l == nil {
		return 0
	}
	return l.id
}

func (w *Worker) notify() {
	select {
	case w.changed <- struct{}{}:
	default:
	}
}

func (w *Worker) finished() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.draining && w.led.len() == 0 && len(w.waiting) == 0
}

func (w *Worker) beginDrain() {
	w.mu.Lock()
	already := w.draining
	w.draining = true
	l := w.link
	w.mu.Unlock()
	if !already {
		w.log.Info("draining: taking no new tasks")
		l.send(&pb.WorkerMessage{Msg: &pb.WorkerMessage_Drain{Drain: &pb.Drain{}}})
	}
	w.notify()
}

func (w *Worker) hello() *pb.Hello {
	held, slots := w.led.held()
	defs := make([]*pb.TaskDefinition, 0, len(w.tasks))
	for name, r := range w.tasks {
		opts, _ := r.task.Defaults.pb() // checked by Register
		defs = append(defs, &pb.TaskDefinition{Name: name, Defaults: opts})
	}
	return &pb.Hello{
		WorkerName:  w.cfg.Name,
		Queues:      w.cfg.Queues,
		Tasks:       defs,
		Concurrency: uint32(w.cfg.Concurrency),
		Held:        held,
		HeldSlots:   slots,
		Prefetch:    uint32(w.cfg.Prefetch),
	}
}

// session runs one stream: whether it was welcomed (onWelcome was called
// then), whether the worker is done (drained and said goodbye), and why it
// ended otherwise, with what a refusal's trailers said.
func (w *Worker) session(ctx context.Context, conn *grpc.ClientConn, onWelcome func()) (welcomed, done bool, rf refusal, err error) {
	select {
	case <-w.forced:
		return false, false, rf, ErrForced
	default:
	}
	streamCtx, cancel := context.WithCancel(w.runsCtx)
	defer cancel()
	stream, err := pb.NewWorkerClient(conn).Session(streamCtx)
	if err != nil {
		return false, false, rf, err
	}
	l := &link{stream: stream}
	w.mu.Lock()
	hello := w.hello()
	draining := w.draining
	w.mu.Unlock()
	l.send(&pb.WorkerMessage{Msg: &pb.WorkerMessage_Hello{Hello: hello}})
	if draining {
		l.send(&pb.WorkerMessage{Msg: &pb.WorkerMessage_Drain{Drain: &pb.Drain{}}})
	}
	timer := time.AfterFunc(welcomeTimeout, cancel)
	first, err := stream.Recv()
	timer.Stop()
	if err != nil {
		return false, false, refusalOf(stream.Trailer()), err
	}
	welcome := first.GetWelcome()
	if welcome == nil {
		return false, false, rf, errors.New("the broker sent no Welcome")
	}
	onWelcome()

	w.mu.Lock()
	w.linkSeq++
	l.id = w.linkSeq
	lost, resend := w.led.reconcile(welcome.Kept, l.id)
	w.link = l
	w.workerID = welcome.WorkerId
	w.leaseMs = welcome.LeaseMs
	start := w.launchable()
	w.mu.Unlock()
	for _, t := range lost {
		w.log.Warn("run lost while disconnected; stopped", "task_id", t.id, "attempt", t.attempt)
	}
	l.send(resend...)
	w.launch(start)
	w.log.Info("connected", "worker_id", welcome.WorkerId, "lease_ms", welcome.LeaseMs,
		"kept", len(welcome.Kept), "lost", len(welcome.Lost))
	defer w.disconnect(l)

	interval := time.Duration(welcome.HeartbeatIntervalMs) * time.Millisecond
	if interval <= 0 {
		interval = time.Second
	}
	go w.heartbeats(streamCtx, l, interval)
	readerDone := make(chan error, 1)
	go func() { readerDone <- w.read(l) }()

	drainReq := ctx.Done()
	var byeTimeout <-chan time.Time
	for {
		if byeTimeout == nil && w.finished() {
			l.send(&pb.WorkerMessage{Msg: &pb.WorkerMessage_Goodbye{Goodbye: &pb.Goodbye{}}})
			l.closeSend()
			byeTimeout = time.After(goodbyeTimeout)
		}
		select {
		case err := <-readerDone:
			if byeTimeout != nil {
				return true, true, rf, nil
			}
			if err == nil {
				err = errors.New("the broker ended the stream")
			}
			return true, false, refusalOf(l.stream.Trailer()), err
		case <-drainReq:
			drainReq = nil
			w.beginDrain()
		case <-w.changed:
		case <-byeTimeout:
			return true, true, rf, nil
		case <-w.forced:
			return true, false, rf, ErrForced
		}
	}
}

func (w *Worker) disconnect(l *link) {
	w.mu.Lock()
	if w.link == l {
		w.link = nil
	}
	w.mu.Unlock()
}

func (w *Worker) heartbeats(ctx context.Context, l *link, every time.Duration) {
	beat := &pb.WorkerMessage{Msg: &pb.WorkerMessage_Heartbeat{Heartbeat: &pb.Heartbeat{}}} // empty: all of this stream's
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			l.send(beat)
		}
	}
}

// read handles the broker's messages until the stream ends (nil on a plain
// end).
func (w *Worker) read(l *link) error {
	for {
		msg, err := l.stream.Recv()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		w.dispatch(l, msg)
	}
}

// dispatch handles one broker message; every kind of BrokerMessage is
// listed (TestEveryBrokerMessageIsHandled checks it against the proto).
func (w *Worker) dispatch(l *link, msg *pb.BrokerMessage) {
	switch m := msg.Msg.(type) {
	case *pb.BrokerMessage_Assignment:
		w.assign(m.Assignment)
	case *pb.BrokerMessage_Cancel:
		w.cancelRun(m.Cancel)
	case *pb.BrokerMessage_OutcomeAck:
		w.mu.Lock()
		w.led.acknowledged(refOf(m.OutcomeAck.Task))
		w.mu.Unlock()
		if !m.OutcomeAck.Accepted {
			w.log.Warn("outcome rejected by the broker", "task_id", m.OutcomeAck.Task.GetTaskId(),
				"attempt", m.OutcomeAck.Task.GetAttempt(), "reason", m.OutcomeAck.Reason)
		}
		w.notify()
	case *pb.BrokerMessage_ThrottleGranted:
		w.mu.Lock()
		rel := w.led.granted(m.ThrottleGranted.RequestId, l.id)
		w.mu.Unlock()
		if rel != nil {
			l.send(&pb.WorkerMessage{Msg: &pb.WorkerMessage_ThrottleRelease{ThrottleRelease: rel}})
		}
	case *pb.BrokerMessage_Error:
		w.mu.Lock()
		known := m.Error.RequestId != 0 && w.led.refused(m.Error.RequestId, m.Error.Message)
		w.mu.Unlock()
		if !known {
			w.log.Warn("the broker refused a request", "message", m.Error.Message)
		}
	case *pb.BrokerMessage_Batch:
		for _, inner := range m.Batch.Messages {
			w.dispatch(l, inner)
		}
	case *pb.BrokerMessage_Welcome:
		w.log.Warn("unexpected second Welcome ignored")
	default:
		w.log.Warn("unknown message from the broker ignored", "type", fmt.Sprintf("%T", msg.Msg))
	}
}

func (w *Worker) assign(a *pb.Assignment) {
	ref := refOf(a.Task)
	runCtx, cancel := context.WithCancelCause(w.runsCtx)
	tc := &TaskContext{
		Context: runCtx, Name: a.Name, TaskID: ref.id, Attempt: ref.attempt, ChainID: a.ChainId,
		Phase: phases[a.Phase], StepIndex: a.StepIndex, Queue: a.Queue, ChainContext: a.Context,
		Polls: a.Polls, Retries: a.Retries, TimeoutMs: a.TimeoutMs, worker: w, ref: ref,
	}
	reg := w.tasks[a.Name]
	var immediate *pb.Outcome
	var args []json.RawMessage
	switch {
	case reg == nil:
		immediate = failure(ErrorTypeNotRegistered, fmt.Sprintf("task %q is not registered in this worker", a.Name), "", false)
	default:
		if err := decodeArgs(a, &args, &tc.Kwargs); err != nil {
			immediate = failure(ErrorTypeInvalidArguments, fmt.Sprintf("bad arguments for %s: %v", a.Name, err), "", false)
		}
	}
	w.mu.Lock()
	id, ok := w.led.start(ref, cancel)
	if !ok {
		w.mu.Unlock()
		cancel(nil)
		w.log.Warn("attempt assigned twice; ignored", "task", a.Name, "task_id", ref.id, "attempt", ref.attempt)
		return
	}
	if immediate != nil {
		out := w.led.finish(ref, id, immediate, w.link.linkID())
		l := w.link
		w.mu.Unlock()
		w.sendOutcome(l, out)
		return
	}
	w.waiting = append(w.waiting, &pendingRun{ref: ref, id: id, tc: tc, h: reg.h, args: args})
	start := w.launchable()
	w.mu.Unlock()
	w.launch(start)
}

func decodeArgs(a *pb.Assignment, args *[]json.RawMessage, kwargs *map[string]json.RawMessage) error {
	if a.Args != "" {
		if err := json.Unmarshal([]byte(a.Args), args); err != nil {
			return fmt.Errorf("args must be a JSON array: %w", err)
		}
	}
	if a.Kwargs != "" {
		if err := json.Unmarshal([]byte(a.Kwargs), kwargs); err != nil {
			return fmt.Errorf("kwargs must be a JSON object: %w", err)
		}
	}
	return nil
}

func (w *Worker) sendOutcome(l *link, out *pb.Outcome) {
	if out != nil {
		l.send(&pb.WorkerMessage{Msg: &pb.WorkerMessage_Outcome{Outcome: out}})
	}
	w.notify()
}

// launchable takes from the waiting line the runs that may start now: only
// while welcomed (a prefetched run must not start before the next Welcome
// says it is still ours), and within the concurrency. Under w.mu.
func (w *Worker) launchable() []*pendingRun {
	var start []*pendingRun
	for w.link != nil && w.active < w.cfg.Concurrency && len(w.waiting) > 0 {
		p := w.waiting[0]
		w.waiting = w.waiting[1:]
		if !w.led.isCurrent(p.ref, p.id) {
			continue // lost or cancelled meanwhile
		}
		w.active++
		start = append(start, p)
	}
	return start
}

func (w *Worker) launch(runs []*pendingRun) {
	for _, p := range runs {
		go w.execute(p)
	}
}

func (w *Worker) execute(p *pendingRun) {
	started := time.Now()
	endSpan := startTaskSpan(p.tc)
	out := runBody(p.h, p.tc, p.args)
	endSpan(out)
	w.mu.Lock()
	w.active--
	reported := w.led.finish(p.ref, p.id, out, w.link.linkID())
	l := w.link
	start := w.launchable()
	w.mu.Unlock()
	if reported != nil {
		w.log.Debug("run ended", "task", p.tc.Name, "task_id", p.ref.id, "attempt", p.ref.attempt,
			"outcome", describe(reported), "took", time.Since(started))
	} else {
		w.log.Info("run ended after it was lost; not reported", "task", p.tc.Name, "task_id", p.ref.id)
	}
	w.sendOutcome(l, reported)
	w.launch(start)
}

func describe(o *pb.Outcome) string {
	switch r := o.Result.(type) {
	case *pb.Outcome_Failure:
		return "failed: " + r.Failure.ErrorType + ": " + r.Failure.Message
	case *pb.Outcome_RetryLater:
		return fmt.Sprintf("retry in %d ms", r.RetryLater.DelayMs)
	}
	return "succeeded"
}

func (w *Worker) cancelRun(c *pb.Cancel) {
	ref := refOf(c.Task)
	reason := c.Reason
	if reason == "" {
		reason = "cancelled"
	}
	w.mu.Lock()
	if !w.led.cancel(ref, reason) {
		w.mu.Unlock()
		return
	}
	// A prefetched run that has not started never starts.
	var out *pb.Outcome
	for i, p := range w.waiting {
		if p.ref == ref {
			w.waiting = append(w.waiting[:i:i], w.waiting[i+1:]...)
			out = w.led.finish(ref, p.id, cancelledOutcome(reason), w.link.linkID())
			break
		}
	}
	l := w.link
	w.mu.Unlock()
	w.log.Info("run cancelled by the broker", "task_id", ref.id, "attempt", ref.attempt, "reason", reason)
	if out != nil {
		w.sendOutcome(l, out)
	}
}

// acquire asks for an in-body throttle slot for tc's run and waits for it.
func (w *Worker) acquire(tc *TaskContext, lim Limit) (func(), error) {
	if err := lim.check(); err != nil {
		return nil, err
	}
	id := w.reqSeq.Add(1)
	msg := &pb.ThrottleAcquire{RequestId: id, Task: tc.ref.pb(), Throttle: lim.pb()}
	reply := make(chan error, 1)
	w.mu.Lock()
	l := w.link
	ok := w.led.request(msg, reply, l.linkID())
	w.mu.Unlock()
	if !ok {
		if err := context.Cause(tc); err != nil {
			return nil, err
		}
		return nil, errRunOver
	}
	l.send(&pb.WorkerMessage{Msg: &pb.WorkerMessage_ThrottleAcquire{ThrottleAcquire: msg}})
	giveBack := func() {
		w.mu.Lock()
		l := w.link
		rel := w.led.release(id, l.linkID())
		w.mu.Unlock()
		if rel != nil {
			l.send(&pb.WorkerMessage{Msg: &pb.WorkerMessage_ThrottleRelease{ThrottleRelease: rel}})
		}
	}
	select {
	case err := <-reply:
		if err != nil {
			return nil, err
		}
		return sync.OnceFunc(giveBack), nil
	case <-tc.Done():
		giveBack()
		return nil, context.Cause(tc)
	}
}
