package keeper

import (
	"bytes"
	"context"
	"runtime"
	"strconv"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	lkerrors "github.com/leasekeeper/leasekeeper/errors"
	"github.com/leasekeeper/leasekeeper/statemachine"
)

// dispatcher delivers what the keeper reports (transitions, key events,
// attempts) to the callbacks and observers: in order, one at a time, from
// a goroutine that holds no lock of the keeper and runs only while there is
// something to deliver, so an idle keeper has none. Every call into the
// user's code goes through it, so that code may call any method of the
// keeper. mu guards the queue and the goroutine's state; it is the
// innermost lock of the keeper.
type dispatcher struct {
	log *zap.Logger
	cb  Callbacks
	obs []Observer

	mu      sync.Mutex
	queue   []report
	running bool
	gid     uint64        // the delivering goroutine's ID once it runs
	drained chan struct{} // closed when the queue is empty and no goroutine runs; closedChan while idle
}

// closedChan is the drained channel of every idle dispatcher, so that an
// idle keeper keeps no channel of its own.
var closedChan = func() chan struct{} {
	c := make(chan struct{})
	close(c)
	return c
}()

// report is one thing to deliver.
type report interface {
	deliver(d *dispatcher)
}

func newDispatcher(log *zap.Logger, cb Callbacks, obs []Observer) *dispatcher {
	return &dispatcher{log: log, cb: cb, obs: obs, drained: closedChan}
}

// push queues r and starts the delivering goroutine unless it runs. It
// never blocks, so it may be called with any lock of the keeper held.
func (d *dispatcher) push(r report) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.queue = append(d.queue, r)
	if d.running {
		return
	}
	d.running = true
	d.drained = make(chan struct{})
	go d.run()
}

func (d *dispatcher) run() {
	id := goid()
	for {
		d.mu.Lock()
		d.gid = id
		if len(d.queue) == 0 {
			d.queue = nil // an idle keeper keeps no queue
			d.running, d.gid = false, 0
			close(d.drained)
			d.drained = closedChan
			d.mu.Unlock()
			return
		}
		r := d.queue[0]
		d.queue[0] = nil
		d.queue = d.queue[1:]
		d.mu.Unlock()
		r.deliver(d)
	}
}

// inCallback reports whether the caller runs on the delivering goroutine,
// that is, inside a callback or an observer.
func (d *dispatcher) inCallback() bool {
	d.mu.Lock()
	id := d.gid
	d.mu.Unlock()
	return id != 0 && id == goid()
}

// wait waits until everything queued so far has been delivered, or ctx
// ends. Called from a callback it returns at once: the callback it is
// called from is part of what it would wait for.
func (d *dispatcher) wait(ctx context.Context) {
	if d.inCallback() {
		return
	}
	d.mu.Lock()
	drained := d.drained
	d.mu.Unlock()
	select {
	case <-drained:
	case <-ctx.Done():
	}
}

// goid returns the ID of the calling goroutine, read from the first line of
// its stack ("goroutine 42 [running]:"). Go offers no other way for Close
// to tell that it was called from a callback, which it must not wait for;
// it costs a microsecond, once per Close.
func goid() uint64 {
	var buf [64]byte
	b := bytes.TrimPrefix(buf[:runtime.Stack(buf[:], false)], []byte("goroutine "))
	if i := bytes.IndexByte(b, ' '); i > 0 {
		b = b[:i]
	}
	id, _ := strconv.ParseUint(string(b), 10, 64)
	return id
}

// transition is a transition with the lease held and its local deadline
// when it happened, for the log line.
type transition struct {
	t        statemachine.Transition
	lease    clientv3.LeaseID
	deadline time.Time
}

func (tr transition) deliver(d *dispatcher) {
	tr.log(d.log)
	t := tr.t
	for _, o := range d.obs {
		d.protect("ObserveTransition", func() { o.ObserveTransition(t) })
	}
	cb := d.cb
	d.call("OnTransition", cb.OnTransition, t)
	switch from, to := writable(t.From), writable(t.To); {
	case from && !to:
		d.call("OnStopWrites", cb.OnStopWrites, t)
	case !from && to:
		d.call("OnResumeWrites", cb.OnResumeWrites, t)
	}
	if t.To == statemachine.Failed {
		d.call("OnLost", cb.OnLost, t)
	}
}

// log writes one structured line: from, to, the cause's kind, the lease
// and the time left before its local deadline.
func (tr transition) log(log *zap.Logger) {
	t := tr.t
	left := time.Duration(0)
	if !tr.deadline.IsZero() {
		left = max(tr.deadline.Sub(t.At), 0)
	}
	fields := []zap.Field{zap.Stringer("from", t.From), zap.Stringer("to", t.To),
		zap.String("lease", strconv.FormatInt(int64(tr.lease), 16)), zap.Duration("time_left", left)}
	if t.Cause != nil {
		fields = append(fields, zap.String("kind", lkerrors.KindOf(t.Cause).String()), zap.Error(t.Cause))
	}
	switch t.To {
	case statemachine.Degraded, statemachine.Failed:
		log.Warn("lease keeper "+t.To.String(), fields...)
	default:
		log.Info("lease keeper "+t.To.String(), fields...)
	}
}

func (d *dispatcher) call(name string, f func(statemachine.Transition), t statemachine.Transition) {
	if f != nil {
		d.protect(name, func() { f(t) })
	}
}

// protect runs f, a callback or an observer method named name; a panic is
// logged and does not reach the keeper.
func (d *dispatcher) protect(name string, f func()) {
	defer func() {
		if p := recover(); p != nil {
			d.log.Error("callback panicked", zap.String("callback", name), zap.Any("panic", p))
		}
	}()
	f()
}

func (ev KeyEvent) deliver(d *dispatcher) {
	fields := []zap.Field{zap.String("key", ev.Key), zap.Stringer("change", ev.Change), zap.Stringer("policy", ev.Policy),
		zap.Bool("ours", ev.Ours), zap.String("holder", strconv.FormatInt(int64(ev.Holder), 16)), zap.Int64("revision", ev.Revision)}
	if ev.Err != nil {
		fields = append(fields, zap.Error(ev.Err))
	}
	if ev.Ours {
		d.log.Info("registered key "+ev.Change.String(), fields...)
	} else {
		d.log.Warn("registered key "+ev.Change.String(), fields...)
	}
	if f := d.cb.OnKeyEvent; f != nil {
		d.protect("OnKeyEvent", func() { f(ev) })
	}
}

// observed reports whether any observer listens for attempts.
func (d *dispatcher) observed() bool { return len(d.obs) > 0 }

// attemptReport is one finished attempt, for the observers.
type attemptReport struct {
	op   string
	took time.Duration
	err  error
}

func (a attemptReport) deliver(d *dispatcher) {
	for _, o := range d.obs {
		d.protect("ObserveAttempt", func() { o.ObserveAttempt(a.op, a.took, a.err) })
	}
}
