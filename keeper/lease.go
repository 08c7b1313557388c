package keeper

import (
	"context"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	lkerrors "github.com/leasekeeper/leasekeeper/errors"
	"github.com/leasekeeper/leasekeeper/keeper/internal/alarm"
	"github.com/leasekeeper/leasekeeper/statemachine"
)

// leaseLoop keeps the lease: attempts that timers start grant and renew it
// (attempt.go), it keeps the local deadline D and moves the state machine
// when the clock passes the degrade threshold and D (clock.go), and it
// follows the client's connection while it is down (conn.go). Transitions
// go to the dispatcher. It calls the registry to write the keys, never while
// holding mu; the registry may read it under its own lock. mu guards every
// field below it.
type leaseLoop struct {
	k *Keeper // whose parts it calls: the registry, the dispatcher, its life

	mu       sync.Mutex
	m        statemachine.Machine
	lease    lease
	started  bool
	starting bool  // Start waits: attempts go on even without recovery
	running  bool  // an attempt runs
	probing  bool  // a probe of the server's time to live runs (probe)
	again    uint8 // renewals in a row that left D too near to report Healthy
	sched    schedule
	fails    failures
	path     pathState     // what the keeper learned of its path (path.go)
	conn     *connWatch    // the connection watch running, if any
	progress chan struct{} // closed after the next attempt or transition, for Start; nil while nobody waits
}

// lease is the lease held: its ID, the TTL the server granted, and the
// local deadline D. gone says the server said it does not know it: the next
// attempt grants a new one.
type lease struct {
	id       clientv3.LeaseID
	ttl      time.Duration
	deadline time.Time
	gone     bool
}

// schedule is when the loop acts next: the alarm of the next attempt, and
// the alarm that moves the state at the degrade threshold and at D. Both
// are in the hub's timers (keeper/internal/alarm).
type schedule struct {
	attempt alarm.Alarm // rings fire
	check   alarm.Alarm // rings onCheck
}

// failures are the failed attempts since the last success: how many, the
// last one's classified error, and when one was last logged as a warning.
type failures struct {
	n        int
	last     error
	kind     lkerrors.Kind // last's, classified once when it came; Unknown with no last
	pace     lkerrors.Kind // the kind whose backoff the next attempt keeps (add)
	warnedAt int64         // when a failure was last logged as a warning, in Unix nanoseconds; 0 if never
}

// add takes in a failure err of kind. The next attempt keeps the backoff
// of kind, unless err carries no word from the server (retryPolicy.silent:
// a timeout, no member reached) and the failures before it were at the slowest pace (a
// refusal, a full disk): nothing says the refusal is over, so the keeper
// keeps trying once per backoff cap. An attempt sent while the server
// refused the keeper and cut short by D with no answer went again at once,
// two attempts a few milliseconds apart.
func (f *failures) add(err error, kind lkerrors.Kind) {
	if f.last == nil || !policyOf(kind).silent || !policyOf(f.pace).slowest {
		f.pace = kind
	}
	f.last, f.kind = err, kind
	f.n++
}

// permanent reports whether the last failure says that retrying soon
// cannot help.
func (f *failures) permanent() bool {
	return f.last != nil && policyOf(f.kind).permanent
}

// leaseView is the lease as the registry writes with it: the lease (0 when
// none is held, or the server said it is gone), its local deadline, the
// timing that bounds a write, and whether it is alive by D.
type leaseView struct {
	id       clientv3.LeaseID
	deadline time.Time
	tm       timing
	live     bool
}

func (l *leaseLoop) init(k *Keeper) error {
	m, err := statemachine.New(k.cfg.DegradeAfter)
	if err != nil {
		return err
	}
	l.k, l.m = k, *m
	l.sched.attempt.On((*attemptAlarm)(l))
	l.sched.check.On((*checkAlarm)(l))
	return nil
}

// attemptAlarm and checkAlarm are the loop as what its two alarms ring:
// as interface values they take no allocation, where the method values
// l.fire and l.onCheck would take one each.
type (
	attemptAlarm leaseLoop
	checkAlarm   leaseLoop
)

func (a *attemptAlarm) Ring() { (*leaseLoop)(a).fire() }
func (c *checkAlarm) Ring()   { (*leaseLoop)(c).onCheck() }

// view returns the lease as it stands at now; after Close, none.
func (l *leaseLoop) view(now time.Time) leaseView {
	l.mu.Lock()
	defer l.mu.Unlock()
	v := leaseView{deadline: l.lease.deadline, tm: l.timingLocked()}
	if !l.lease.gone && !l.k.life.closed() {
		v.id, v.live = l.lease.id, l.liveLocked(now)
	}
	return v
}

// liveLocked reports whether the loop holds a lease that is alive by the
// local deadline at now.
func (l *leaseLoop) liveLocked(now time.Time) bool {
	return l.lease.id != 0 && !l.lease.gone && now.Before(l.lease.deadline)
}

// baseTimingLocked returns the configured timing for the lease held, or
// for the TTL asked before the first grant.
func (l *leaseLoop) baseTimingLocked() timing {
	return l.k.cfg.timingFor(l.lease.ttl)
}

// timingLocked returns the timing in force: the configured one, as the path
// the keeper learned changes it (path.go). The margin holds b, the bound on
// the path's legs; an attempt is bounded by the latency the path shows; a
// unary call by the round trips unary calls showed; the degrade threshold
// is the cycle's.
func (l *leaseLoop) timingLocked() timing {
	tm := l.baseTimingLocked()
	b := l.k.hub.calls.leg()
	call := l.k.hub.calls.timeout()
	tm.renewTimeout = l.path.waitBound(tm, b, call)
	if l.path.learning() {
		tm.renewTimeout = max(tm.renewTimeout, learnWait(l.lease.ttl))
	}
	tm.call = max(tm.call, call)
	tm.margin += b
	if l.path.thr > 0 {
		tm.threshold = l.path.thr
	}
	return tm
}

// usualLocked is how long the path usually takes to answer a keepalive,
// at least the configured renew timeout, without the wait allowed while
// the keeper learns its path (path.go).
func (l *leaseLoop) usualLocked() time.Duration {
	return l.path.waitBound(l.baseTimingLocked(), l.k.hub.calls.leg(), l.k.hub.calls.timeout())
}

// deadlineLocked returns D for a keepalive sent at sent whose reply says the
// server reset the lease to ttl.
//
// Why D is never later than the server's expiry, on every path: straight
// to a member, the server resets the lease when it takes the keepalive in,
// after sent, so the lease lives at least until sent+ttl. Through etcd's
// gRPC proxy, the reply comes from the proxy's own keepalive upstream,
// which may have been on its way before the keeper's reached the proxy:
// the proxy answers every keepalive that reached it before the upstream
// reply did. That reply left the server at most one leg's time d before it
// reached the proxy, and the keeper's keepalive reached the proxy before
// that, so after sent: the server reset the lease after sent-d, and the
// lease lives at least until sent+ttl-d. A unary call (a grant, a write, a
// time to live) goes all the way to the server on every path, the
// proxy's leg included, so its round trip bounds d: b is taken
// off with the margin, which absorbs the clocks' drift. b is the longest
// recent round trip (callTiming.leg). A reply with a TTL
// of 0 or less says the lease is gone, and sets no D (renewals.go).
//
// A leg bounded by b holds only while the path carries bytes: a reply the
// proxy's own keepalive got back after a stall of its link to etcd was
// made by the server before the stall, however late the keeper's keepalive
// was sent, since the proxy answers every keepalive waiting. So a reply
// that came later than the path answers is dated by the path's previous
// answer instead, if that is earlier: the proxy sends its keepalive
// upstream only after its previous one was answered (etcd's lessor sends
// the next a third of the TTL after an answer), and that answer reached
// the keeper at most b after it reached the proxy. Late counts from the
// keepalive's own send time while D has not passed; after D, when the
// keeper keeps a keepalive waiting throughout and a fresh one may go just
// before the stall ends, from the oldest waiting (the first attempt since
// the last answer). On a path known to hold keepalives, a reply is late
// too when it comes after the latest answer the path's schedule allows
// (pathState.overdue): a short stall that began while the proxy's own
// keepalive was on its way and ended before D delays the answer past the
// schedule, however recently the keeper's keepalive was sent.
func (l *leaseLoop) deadlineLocked(sent, at time.Time, ttl time.Duration) time.Time {
	b := l.k.hub.calls.leg()
	oldest := sent
	if a := l.path.asked; !a.IsZero() && a.Before(sent) && !at.Before(l.lease.deadline) {
		oldest = a
	}
	late := at.Sub(oldest) > l.usualLocked() || l.path.overdue(at, l.baseTimingLocked())
	if late && !l.path.last.IsZero() && l.path.last.Before(sent) {
		sent = l.path.last
	}
	return sent.Add(ttl - l.k.cfg.timingFor(ttl).margin - b)
}

// nextDueLocked returns when the renewal after the one whose keepalive was
// sent at sent and answered at at is due, and sets the cycle's degrade
// threshold (path.go).
func (l *leaseLoop) nextDueLocked(sent, at time.Time) time.Time {
	base, b := l.baseTimingLocked(), l.k.hub.calls.leg()
	tm := l.timingLocked()
	tm.threshold = base.threshold
	return l.path.next(sent, at, l.lease.ttl, tm, base, b, l.lease.deadline, gridPhase)
}

// start schedules the first attempt and waits until the keeper is Healthy,
// ctx ends, or an attempt fails with an error retrying cannot fix.
func (l *leaseLoop) start(ctx context.Context) error {
	l.mu.Lock()
	switch {
	case l.k.life.closed():
		l.mu.Unlock()
		return ErrClosed
	case l.m.State() == statemachine.Draining:
		l.mu.Unlock()
		return ErrDraining
	case l.started:
		l.mu.Unlock()
		return ErrAlreadyStarted
	}
	l.started, l.starting = true, true
	l.scheduleLocked(0)
	l.mu.Unlock()

	for {
		l.mu.Lock()
		st, lastErr := l.m.State(), l.fails.last
		if st == statemachine.Healthy || st == statemachine.Closed || st == statemachine.Draining || l.fails.permanent() {
			l.starting = false
			l.mu.Unlock()
			switch st {
			case statemachine.Healthy:
				return nil
			case statemachine.Closed:
				return ErrClosed
			case statemachine.Draining:
				return ErrDraining
			}
			return lastErr
		}
		if l.progress == nil {
			l.progress = make(chan struct{})
		}
		progress := l.progress
		l.mu.Unlock()
		select {
		case <-progress:
		case <-ctx.Done():
			l.mu.Lock()
			defer l.mu.Unlock()
			l.starting, l.progress = false, nil // Start was its only reader
			if lastErr = l.fails.last; lastErr == nil {
				lastErr = lkerrors.ClassifyConn(ctx.Err(), l.k.hub.b.connState())
			}
			if l.k.cfg.DisableRecovery && l.m.State() != statemachine.Healthy {
				l.k.hub.timers.Stop(&l.sched.attempt)
			}
			return lastErr
		}
	}
}

// close stops every timer and the connection watch, reports the transition
// to Closed, and returns the lease to revoke: 0 when none is held.
func (l *leaseLoop) close() clientv3.LeaseID {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.k.hub.timers.Stop(&l.sched.attempt)
	l.k.hub.timers.Stop(&l.sched.check)
	l.stopConnWatchLocked()
	l.stepLocked(statemachine.Close, nil, time.Now())
	if l.lease.gone {
		return 0
	}
	return l.lease.id
}

// state returns the state now, changing nothing (see stateAtLocked).
func (l *leaseLoop) state() statemachine.State {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.stateAtLocked(time.Now())
}

// leaseID returns the lease held, or 0 when none is (before the first
// grant, after the server said the lease is gone, after Close).
func (l *leaseLoop) leaseID() clientv3.LeaseID {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.lease.gone || l.k.life.closed() {
		return 0
	}
	return l.lease.id
}

// deadline returns D, or the zero time when no lease is held.
func (l *leaseLoop) deadline() time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.lease.id == 0 || l.lease.gone || l.k.life.closed() {
		return time.Time{}
	}
	return l.lease.deadline
}

// err returns the last failed attempt's classified error since the last
// success, or nil.
func (l *leaseLoop) err() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.fails.last
}

// writeFailed acts on a write of the registry's that failed outside an
// attempt (Register, a restore, a retry): a lease the server no longer
// knows is lost (its keys went with it, and a new lease writes them all);
// anything but a taken key brings the next attempt forward.
func (l *leaseLoop) writeFailed(id clientv3.LeaseID, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	switch kind := lkerrors.KindOf(err); {
	case kind == lkerrors.LeaseExpired && id == l.lease.id && !l.lease.gone && !l.k.life.closed():
		l.leaseLostLocked(err, time.Now())
	case kind != lkerrors.KeyTaken:
		l.scheduleRetryLocked(kind)
	}
}

// stepLocked applies an event and queues the transition, if any, for the
// callbacks.
func (l *leaseLoop) stepLocked(e statemachine.Event, cause error, now time.Time) {
	t, changed := l.m.Step(e, cause, now)
	if !changed {
		return
	}
	l.signalLocked()
	l.k.disp.push(transition{t: t, lease: l.lease.id, deadline: l.lease.deadline})
}

// signalLocked wakes everyone waiting for progress (Start).
func (l *leaseLoop) signalLocked() {
	if l.progress != nil {
		close(l.progress)
		l.progress = nil
	}
}

func stopTimer(t **time.Timer) {
	if *t != nil {
		(*t).Stop()
		*t = nil
	}
}
