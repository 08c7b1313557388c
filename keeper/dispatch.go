package keeper

import (
	"strconv"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	lkerrors "github.com/leasekeeper/leasekeeper/errors"
	"github.com/leasekeeper/leasekeeper/statemachine"
)

// enqueueLocked queues t for the callbacks and starts the dispatcher unless
// it runs. The dispatcher exits when the queue is empty, so an idle keeper
// has no goroutine.
func (k *Keeper) enqueueLocked(t statemachine.Transition) {
	k.queueLocked(queued{t: t, lease: k.leaseID, deadline: k.deadline})
}

// keyEventLocked queues ev for the callbacks, in order with transitions.
func (k *Keeper) keyEventLocked(ev KeyEvent) {
	k.queueLocked(queued{ev: &ev})
}

func (k *Keeper) queueLocked(q queued) {
	k.queue = append(k.queue, q)
	if k.dispatching {
		return
	}
	k.dispatching = true
	k.drained = make(chan struct{})
	go k.dispatch()
}

// dispatch delivers queued transitions in order, one at a time, without
// holding mu while a callback runs.
func (k *Keeper) dispatch() {
	for {
		k.mu.Lock()
		if len(k.queue) == 0 {
			k.dispatching = false
			close(k.drained)
			k.mu.Unlock()
			return
		}
		q := k.queue[0]
		k.queue[0] = queued{}
		k.queue = k.queue[1:]
		k.mu.Unlock()
		if q.ev != nil {
			k.deliverKeyEvent(*q.ev)
			continue
		}
		k.logTransition(q)
		k.deliver(q.t)
	}
}

func (k *Keeper) deliver(t statemachine.Transition) {
	k.observeTransition(t)
	cb := k.cfg.Callbacks
	k.call("OnTransition", cb.OnTransition, t)
	if t.From == statemachine.Healthy {
		k.call("OnStopWrites", cb.OnStopWrites, t)
	}
	if t.To == statemachine.Healthy {
		k.call("OnResumeWrites", cb.OnResumeWrites, t)
	}
	if t.To == statemachine.Failed {
		k.call("OnLost", cb.OnLost, t)
	}
}

// call runs one callback; a panic is logged and does not reach the keeper.
func (k *Keeper) call(name string, f func(statemachine.Transition), t statemachine.Transition) {
	if f == nil {
		return
	}
	defer func() {
		if p := recover(); p != nil {
			k.log.Error("callback panicked", zap.String("callback", name), zap.Any("panic", p),
				zap.Stringer("from", t.From), zap.Stringer("to", t.To))
		}
	}()
	f(t)
}

// recoverObserver recovers a panicking observer; deferred by its callers.
func (k *Keeper) recoverObserver(method string) {
	if p := recover(); p != nil {
		k.log.Error("observer panicked", zap.String("method", method), zap.Any("panic", p))
	}
}

// queued is a transition waiting for the callbacks, with the lease held and
// its local deadline when it happened, for the log line; or a key event.
type queued struct {
	t        statemachine.Transition
	lease    clientv3.LeaseID
	deadline time.Time
	ev       *KeyEvent
}

// deliverKeyEvent logs ev and hands it to OnKeyEvent.
func (k *Keeper) deliverKeyEvent(ev KeyEvent) {
	fields := []zap.Field{zap.String("key", ev.Key), zap.Stringer("change", ev.Change), zap.Stringer("policy", ev.Policy),
		zap.Bool("ours", ev.Ours), zap.String("holder", strconv.FormatInt(int64(ev.Holder), 16)), zap.Int64("revision", ev.Revision)}
	if ev.Err != nil {
		fields = append(fields, zap.Error(ev.Err))
	}
	if ev.Ours {
		k.log.Info("registered key "+ev.Change.String(), fields...)
	} else {
		k.log.Warn("registered key "+ev.Change.String(), fields...)
	}
	f := k.cfg.Callbacks.OnKeyEvent
	if f == nil {
		return
	}
	defer func() {
		if p := recover(); p != nil {
			k.log.Error("callback panicked", zap.String("callback", "OnKeyEvent"), zap.Any("panic", p), zap.String("key", ev.Key))
		}
	}()
	f(ev)
}

// logTransition writes one structured line: from, to, the cause's kind,
// the lease and the time left before its local deadline.
func (k *Keeper) logTransition(q queued) {
	t := q.t
	left := time.Duration(0)
	if !q.deadline.IsZero() {
		left = max(q.deadline.Sub(t.At), 0)
	}
	fields := []zap.Field{zap.Stringer("from", t.From), zap.Stringer("to", t.To),
		zap.String("lease", strconv.FormatInt(int64(q.lease), 16)), zap.Duration("time_left", left)}
	if t.Cause != nil {
		fields = append(fields, zap.String("kind", lkerrors.KindOf(t.Cause).String()), zap.Error(t.Cause))
	}
	switch t.To {
	case statemachine.Degraded, statemachine.Failed:
		k.log.Warn("lease keeper "+t.To.String(), fields...)
	default:
		k.log.Info("lease keeper "+t.To.String(), fields...)
	}
}
