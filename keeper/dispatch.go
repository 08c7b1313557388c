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
	"go.uber.org/zap/zapcore"

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
	k *Keeper // its log, Callbacks and Observers

	mu      sync.Mutex
	queue   []report
	gid     uint64        // the delivering goroutine's ID once it runs
	drained chan struct{} // closedChan while no goroutine runs; else closed when it ends
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
	// heard reports whether delivering it would do anything: log a line,
	// call a callback or an observer.
	heard(d *dispatcher) bool
}

func (d *dispatcher) init(k *Keeper) {
	d.k, d.drained = k, closedChan
}

// push queues r and starts the delivering goroutine unless it runs. It
// never blocks, so it may be called with any lock of the keeper held. A
// report nobody would hear is dropped: a keeper without callbacks,
// observers or a logger starts no goroutine for its transitions.
func (d *dispatcher) push(r report) {
	if !r.heard(d) {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.queue = append(d.queue, r)
	if d.drained != closedChan {
		return // the goroutine runs
	}
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
			d.gid = 0
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

func (tr transition) heard(d *dispatcher) bool {
	cb := d.k.cfg.Callbacks
	return len(d.k.cfg.Observers) > 0 || cb.OnTransition != nil || cb.OnStopWrites != nil || cb.OnResumeWrites != nil ||
		cb.OnLost != nil || d.k.logger().Core().Enabled(tr.level())
}

// level is the level of the transition's log line.
func (tr transition) level() zapcore.Level {
	if tr.t.To == statemachine.Degraded || tr.t.To == statemachine.Failed {
		return zapcore.WarnLevel
	}
	return zapcore.InfoLevel
}

func (tr transition) deliver(d *dispatcher) {
	tr.log(d.k.logger())
	t := tr.t
	for _, o := range d.k.cfg.Observers {
		d.protect("ObserveTransition", func() { o.ObserveTransition(t) })
	}
	cb := d.k.cfg.Callbacks
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
	log.Log(tr.level(), "lease keeper "+t.To.String(), fields...)
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
			d.k.logger().Error("callback panicked", zap.String("callback", name), zap.Any("panic", p))
		}
	}()
	f()
}

func (ev KeyEvent) heard(d *dispatcher) bool {
	return d.k.cfg.Callbacks.OnKeyEvent != nil || d.k.logger().Core().Enabled(ev.level())
}

// level is the level of the event's log line: a change another writer
// made is a warning.
func (ev KeyEvent) level() zapcore.Level {
	if ev.Ours {
		return zapcore.InfoLevel
	}
	return zapcore.WarnLevel
}

func (ev KeyEvent) deliver(d *dispatcher) {
	fields := []zap.Field{zap.String("key", ev.Key), zap.Stringer("change", ev.Change), zap.Stringer("policy", ev.Policy),
		zap.Bool("ours", ev.Ours), zap.String("holder", strconv.FormatInt(int64(ev.Holder), 16)), zap.Int64("revision", ev.Revision)}
	if ev.Err != nil {
		fields = append(fields, zap.Error(ev.Err))
	}
	d.k.logger().Log(ev.level(), "registered key "+ev.Change.String(), fields...)
	if f := d.k.cfg.Callbacks.OnKeyEvent; f != nil {
		d.protect("OnKeyEvent", func() { f(ev) })
	}
}

// observed reports whether any observer listens for attempts.
func (d *dispatcher) observed() bool { return len(d.k.cfg.Observers) > 0 }

// attemptReport is one finished attempt, for the observers.
type attemptReport struct {
	op   string
	took time.Duration
	err  error
}

func (a attemptReport) heard(d *dispatcher) bool { return d.observed() }

func (a attemptReport) deliver(d *dispatcher) {
	for _, o := range d.k.cfg.Observers {
		d.protect("ObserveAttempt", func() { o.ObserveAttempt(a.op, a.took, a.err) })
	}
}
