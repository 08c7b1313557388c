package keeper

import (
	"context"
	"math/rand/v2"
	"strconv"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	lkerrors "github.com/leasekeeper/leasekeeper/errors"
	"github.com/leasekeeper/leasekeeper/statemachine"
)

// timing is the part of the configuration that derives from the granted TTL.
type timing struct {
	renewTimeout time.Duration // bounds a renewal attempt
	margin       time.Duration // taken off the server's earliest expiry for D
	threshold    time.Duration // the degrade threshold
	call         time.Duration // bounds a unary call: a grant, a write
}

// timingFor returns the timing for a lease granted with ttl; zero means the
// TTL asked. It resolves the defaults as resolved does, without copying the
// Config: it runs at every renewal.
func (c *Config) timingFor(ttl time.Duration) timing {
	if ttl <= 0 {
		ttl = c.TTL
		if rem := ttl % time.Second; rem != 0 {
			ttl += time.Second - rem
		}
	}
	tm := timing{renewTimeout: c.RenewTimeout, margin: c.Margin, threshold: c.DegradeThreshold}
	if tm.renewTimeout == 0 {
		tm.renewTimeout = ttl / 10
	}
	if tm.margin == 0 {
		tm.margin = ttl / 40
	}
	if tm.threshold == 0 {
		tm.threshold = ttl / 2
	}
	tm.call = tm.renewTimeout
	return tm
}

// attempt is one attempt as it started.
type attempt struct {
	start    time.Time
	id       clientv3.LeaseID // the lease to renew, if renew
	renew    bool             // renew id; else grant a new lease
	deadline time.Time        // D when it started
	tm       timing
	live     bool // a lease alive by D was held when it started
	// Without a live lease the lease RPC stays outstanding for wait, the
	// backoff drawn for it, instead of the keeper waiting idle; timeout is
	// what bounds it.
	wait    time.Duration
	timeout time.Duration
	rtt     time.Duration // the usual round trip of a keepalive, 0 before the first
	hedge   time.Duration // how long a keepalive waits before a fresh one goes another way; 0: never
	held    bool          // the path holds keepalives: every one goes on the stream in use
	learn   bool          // the keeper does not know its path yet: one hedge at most
	// No attempt failed since the last success: a grant's round trip is
	// the path's. Else the failed attempt's keepalive may still wait on a
	// stream that went silent (a frozen member, a link cut without a
	// reset), so the first keepalive of this one leaves that stream for a
	// new one if it does: a keeper that never hedges (held mode) would
	// otherwise wait on the silent stream attempt after attempt.
	clean bool
}

// result is what one attempt did.
type result struct {
	granted  bool             // a new lease was granted (else the held one renewed)
	id       clientv3.LeaseID // the lease renewed or granted
	ttl      time.Duration    // TTL the server set; zero if the lease RPC failed
	sent     time.Time        // when the successful lease request was sent
	deadline time.Time        // the new local deadline when ttl > 0
	err      error            // classified; nil when every key is written
	// short says a renewal succeeded while the keeper was not Healthy,
	// with a D too near to report Healthy on: prove asks the server.
	short bool
}

// fire starts one attempt. It is the attempt alarm's function, so it must
// not block: a renewal goes out and its reply completes the attempt
// (renewAsync); a grant, or a renewal past D with a spare grant beside it,
// runs on a goroutine of its own that ends with the attempt.
func (l *leaseLoop) fire() {
	if !l.k.life.begin() {
		return
	}
	l.mu.Lock()
	if l.running || !l.recoveringLocked() {
		// !recovering: Start gave up while this attempt was due, with
		// recovery off.
		l.mu.Unlock()
		l.k.life.end()
		return
	}
	l.running = true
	now := time.Now()
	l.checkTimeLocked(now)
	a := attempt{start: now, id: l.lease.id, renew: l.lease.id != 0 && !l.lease.gone, deadline: l.lease.deadline,
		tm: l.timingLocked(), live: l.liveLocked(now)}
	a.timeout, a.rtt, a.held, a.clean = a.tm.renewTimeout, l.path.ka.srtt, l.path.held(), l.fails.n == 0
	a.learn = a.live && l.path.learning()
	if a.live && !a.held && !a.learn {
		// Leave room for a second attempt before the degrade threshold,
		// but never cut an attempt shorter than the path takes to answer:
		// it would time out at every renewal.
		a.timeout = min(a.timeout, max(l.usualLocked(), a.deadline.Add(-a.tm.threshold).Sub(now)/2))
	}
	// Hedge by the path's usual bound, not by the wait allowed while
	// learning: a fresh keepalive on another stream is what reaches
	// another member.
	a.hedge = l.path.hedgeAfter(min(a.timeout, l.usualLocked()))
	if a.renew {
		l.path.asking(now)
	}
	if !a.live {
		// No live lease to protect: instead of waiting out the backoff idle,
		// leave the request outstanding for it. A member that answers again
		// (a healed partition, a thawed process) then answers it at once, and
		// the next attempt starts when this one ends: one is always in flight.
		// The path's usual timeout, not the wait allowed while learning:
		// a fresh keepalive goes every BaseDelay while none is answered.
		a.wait = l.k.cfg.Backoff.delay(max(l.fails.n, 1), l.fails.pace, rand.Float64())
		a.tm.renewTimeout = l.usualLocked()
		a.timeout = max(a.tm.renewTimeout, a.wait)
	}
	if !a.clean || !a.live {
		// A failed attempt before, or no live lease: follow the
		// connection, so that its reconnect starts an attempt at once.
		// After a success it was fine, and asking costs every renewal.
		l.watchConnLocked()
	}
	l.mu.Unlock()

	switch {
	case !a.renew:
		l.goAttempt(a, "grant", l.regrant)
	case a.pastDeadline():
		l.goAttempt(a, "renew", l.renewBeside)
	default:
		l.renewAsync(a)
	}
}

// goAttempt runs attempt a on a goroutine of its own, and completes it
// with what run returns. A function of its own, so that the attempt of a
// renewal, the common case, which fire hands on by value, does not move to
// the heap with the closure.
func (l *leaseLoop) goAttempt(a attempt, op string, run func(attempt) result) {
	go func() { l.complete(a, op, run(a)) }()
}

// complete reports attempt a's result r, feeds it to the state machine and
// schedules the next attempt; it ends the work fire began.
func (l *leaseLoop) complete(a attempt, op string, r result) {
	defer l.k.life.end()
	if l.k.disp.observed() && (!l.k.life.closed() || lkerrors.KindOf(r.err) != lkerrors.Canceled) {
		l.k.disp.push(attemptReport{op: op, took: time.Since(a.start), err: r.err})
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.running = false
	l.applyLocked(a, r)
}

// attemptCtx bounds one RPC by timeout and by limit, if limit is set and
// still ahead, and ends at Close.
func (l *leaseLoop) attemptCtx(timeout time.Duration, limit time.Time) (context.Context, context.CancelFunc) {
	return l.k.life.within(timeout, limit)
}

// boundCtx returns parent bounded by timeout from now and by limit, if
// limit is set and still ahead.
func boundCtx(parent context.Context, timeout time.Duration, limit time.Time) (context.Context, context.CancelFunc) {
	return context.WithDeadline(parent, attemptEnd(time.Now(), timeout, limit))
}

func (l *leaseLoop) classify(err error) error {
	return lkerrors.ClassifyConn(err, l.k.hub.b.connState())
}

// pastDeadline reports whether the attempt renews a lease whose local
// deadline D had passed when it started.
func (a attempt) pastDeadline() bool {
	return a.renew && !a.live && !a.deadline.IsZero() && !a.start.Before(a.deadline)
}

// renewAsync renews the held lease, then writes any key not yet written
// with it, and completes the attempt. The keepalive's reply completes it
// on the goroutine that received it (renewDone), unless keys are to be
// written: the writes go on a goroutine of their own.
func (l *leaseLoop) renewAsync(a attempt) { l.keepAlive(a, nil) }

// renewDone takes in what renewal a's keepalives came to, for renewAsync.
func (l *leaseLoop) renewDone(a attempt, ka keepAliveResult) {
	r := l.renewed(a, ka)
	if r.err != nil || (!r.short && !l.k.reg.pending(a.id)) {
		l.complete(a, "renew", r)
		return
	}
	go l.writeThenComplete(a, r)
}

// writeThenComplete proves renewal a's D if it is short, writes the keys
// pending after it, then completes it.
func (l *leaseLoop) writeThenComplete(a attempt, r result) {
	r = l.prove(a, r)
	if r.err == nil {
		r.err = l.k.reg.writePending(leaseView{id: a.id, deadline: r.deadline, tm: a.tm, live: true})
	}
	l.complete(a, "renew", r)
}

// prove asks the server's time to live of the lease that renewal a
// renewed, when its reply proved a D too near to report Healthy on
// (r.short): behind a gRPC proxy the reply comes a proxy period after the
// keepalive went, and D allows for b, the longest recent unary call, which
// one call that waited out a fault makes long; so after an outage no
// keepalive's reply may prove enough until b came down, call by call. The
// answer owes nothing to either (timeLeft), and the attempt counts its D,
// if later: the keeper is Healthy with this attempt, not renewals later.
// If the probe fails the reply's D stands; a lease the server does not
// know any more is lost.
func (l *leaseLoop) prove(a attempt, r result) result {
	if !r.short {
		return r
	}
	ttl, sent, err := l.askTimeToLive(a.id, a.tm)
	if err != nil {
		return r
	}
	if ttl < 0 {
		return result{id: a.id, err: l.classify(rpctypes.ErrLeaseNotFound)}
	}
	l.mu.Lock()
	d := l.provenLocked(a.id, sent, ttl, time.Now())
	l.mu.Unlock()
	if d.After(r.deadline) {
		r.deadline = d
	}
	return r
}

// renewBeside renews a lease whose D has passed: it may be gone on the
// server, which then says so only when it answers the keepalive, after it
// deleted the keys. So a new lease is granted beside the keepalive: if the
// old lease is gone the keys go onto the new one at once, a round trip
// sooner, which shortens the time the service is missing from etcd; if the
// old one is alive the new one is revoked. It blocks until the keys are
// written.
func (l *leaseLoop) renewBeside(a attempt) result {
	sp := l.grantSpare(a)
	ka := l.keepAliveWait(a)
	if ka.err != nil {
		err := l.classify(ka.err)
		if lkerrors.KindOf(err) == lkerrors.LeaseExpired {
			if <-sp.done; sp.err == nil {
				return l.adopt(a, sp.id, sp.ttl, sp.sent)
			}
		} else {
			l.discardSpare(sp)
		}
		return result{id: a.id, err: err}
	}
	l.discardSpare(sp)
	r := l.prove(a, l.renewed(a, ka))
	if r.err == nil {
		r.err = l.k.reg.writePending(leaseView{id: a.id, deadline: r.deadline, tm: a.tm, live: true})
	}
	return r
}

// renewed takes in the outcome of the keepalives of renewal a: on success
// the lease's new deadline counts at once, whatever the writes that follow
// do.
func (l *leaseLoop) renewed(a attempt, ka keepAliveResult) result {
	if ka.err != nil {
		return result{id: a.id, err: l.classify(ka.err)}
	}
	r := result{id: a.id, ttl: time.Duration(ka.ttl) * time.Second, sent: ka.sent}
	l.mu.Lock()
	defer l.mu.Unlock()
	r.deadline = l.deadlineLocked(ka.sent, ka.sent.Add(ka.rtt), r.ttl)
	if l.lease.id == a.id {
		l.path.proved = ka.sent
		base, b := l.baseTimingLocked(), l.k.hub.calls.leg()
		l.path.answered(ka.sent, ka.sent.Add(ka.rtt), ka.first, l.fails.n, l.lease.ttl, base, b)
	}
	now := time.Now()
	if l.lease.id == a.id && !l.lease.gone && r.deadline.After(l.lease.deadline) {
		// The check alarm is left where it is: D only moved later, and
		// an alarm that rings before the state may move moves nothing
		// (checkTimeLocked) and is set again; the attempt's completion
		// sets it anyway. Setting it here too cost every renewal a
		// second move in the hub's heap of alarms.
		l.lease.deadline = r.deadline
	}
	r.short = l.lease.id == a.id && !l.lease.gone && l.tooNearLocked(now)
	return r
}

// lateReply takes in the reply to a keepalive for lease id sent at sent,
// given up before it came at at, with the TTL the server reset the lease
// to: the renewal happened, so D moves as for any other while the lease is
// alive, the path learns how late it answered (and a keeper that took it
// for one that answers at once learns it again: pathState.relearn), and a
// Healthy keeper's failures in a row start again, since the renewals they
// timed out on did not fail. The state moves with the next attempt.
func (l *leaseLoop) lateReply(id clientv3.LeaseID, sent time.Time, ttl int64, at time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := time.Now()
	if l.lease.id == id {
		l.path.relearn()
	}
	if l.k.life.closed() || l.lease.id != id || !l.liveLocked(now) || sent.Before(l.path.proved) {
		// Older than the renewal D rests on (a member that held it
		// through a stall, say): it moves nothing and tells nothing of
		// the path as it is.
		return
	}
	base, b := l.baseTimingLocked(), l.k.hub.calls.leg()
	d := l.deadlineLocked(sent, at, time.Duration(ttl)*time.Second)
	l.path.proved = sent
	l.path.answered(sent, at, false, l.fails.n-1, l.lease.ttl, base, b)
	if ce := l.k.logger().Check(zap.DebugLevel, "late reply"); ce != nil {
		ce.Write(leaseField(id), zap.Duration("answered", at.Sub(sent)),
			zap.Duration("proves", d.Sub(now)), zap.Duration("left", l.lease.deadline.Sub(now)))
	}
	if d.After(l.lease.deadline) {
		l.lease.deadline = d
		l.rearmCheckLocked(now)
	}
	if l.m.State() == statemachine.Healthy {
		l.fails.n = 0
	}
}

// probe asks the server how long lease id has left, on a goroutine of its
// own, unless a probe runs already: it goes all the way to etcd, through a
// gRPC proxy too, so its round trip keeps b, the bound on a leg of the
// path, in step with a leg that became slower since the last unary call,
// and its answer may move D (timeLeft). A lease the server does not know
// any more is lost, as for any other call.
func (l *leaseLoop) probe(id clientv3.LeaseID) {
	if l.probing || !l.k.life.begin() {
		return
	}
	l.probing = true
	tm := l.timingLocked()
	go func() {
		defer l.k.life.end()
		defer func() {
			l.mu.Lock()
			l.probing = false
			l.mu.Unlock()
		}()
		ttl, sent, err := l.askTimeToLive(id, tm)
		if err != nil {
			return
		}
		if ttl < 0 {
			l.writeFailed(id, rpctypes.ErrLeaseNotFound)
			return
		}
		l.timeLeft(id, sent, ttl)
	}()
}

// timeLeft takes in the server's answer to a LeaseTimeToLive sent at sent:
// lease id has ttl whole seconds left. The server answered after sent and
// rounds the time left down, so the lease lives at least until sent+ttl on
// every path, however late the answer came and whatever a proxy did with
// keepalives meanwhile: D moves there, less the margin, if that is later
// than the D the keepalives proved. The state moves with the next attempt.
func (l *leaseLoop) timeLeft(id clientv3.LeaseID, sent time.Time, ttl int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := time.Now()
	if l.k.life.closed() || l.lease.id != id || !l.liveLocked(now) || ttl <= 0 {
		return
	}
	d := l.provenLocked(id, sent, ttl, now)
	if d.After(l.lease.deadline) {
		l.lease.deadline = d
		l.rearmCheckLocked(now)
	}
}

// askTimeToLive asks the server how long lease id has left, bounded as a
// renewal of the path in timing tm (a slower leg is what it is for), and
// returns its answer and when it was sent; its round trip is a sample of
// the unary calls.
func (l *leaseLoop) askTimeToLive(id clientv3.LeaseID, tm timing) (int64, time.Time, error) {
	ctx, cancel := l.attemptCtx(max(tm.call, tm.renewTimeout), time.Time{})
	defer cancel()
	sent := time.Now()
	ttl, err := l.k.hub.b.timeToLive(ctx, id)
	if err != nil {
		return 0, sent, err
	}
	l.k.hub.calls.sample(sent)
	return ttl, sent, nil
}

// provenLocked is the D that the server's answer of ttl whole seconds left
// for lease id, to a LeaseTimeToLive sent at sent, proves: sent+ttl, less
// the margin (timeLeft says why).
func (l *leaseLoop) provenLocked(id clientv3.LeaseID, sent time.Time, ttl int64, now time.Time) time.Time {
	d := sent.Add(time.Duration(ttl)*time.Second - l.baseTimingLocked().margin)
	if ce := l.k.logger().Check(zap.DebugLevel, "time to live"); ce != nil {
		ce.Write(leaseField(id), zap.Int64("ttl", ttl),
			zap.Duration("answered", now.Sub(sent)), zap.Duration("proves", d.Sub(now)), zap.Duration("left", l.lease.deadline.Sub(now)))
	}
	return d
}

// tooNearLocked reports whether the keeper, not Healthy, is too near D at
// now to report Healthy: the time left is below the degrade threshold.
func (l *leaseLoop) tooNearLocked(now time.Time) bool {
	return l.m.State() != statemachine.Healthy && !now.Before(l.lease.deadline.Add(-l.timingLocked().threshold))
}

// regrant grants a new lease and writes every key with it. The old lease
// is not revoked: a new one is granted only after the server said it does
// not know the old one.
func (l *leaseLoop) regrant(a attempt) result {
	sent := time.Now()
	ctx, cancel := l.attemptCtx(a.timeout, time.Time{})
	id, ttl, err := l.k.hub.b.grant(ctx, l.k.cfg.ttlSeconds())
	cancel()
	if err != nil {
		return result{granted: true, err: l.classify(err)}
	}
	// A grant that waited out an outage says how long the outage was,
	// not how long the path's legs take.
	l.k.hub.calls.take(sent, a.clean)
	return l.adopt(a, id, ttl, sent)
}

// adopt makes a lease granted with ttl, its request sent at sent, the
// keeper's, and writes every key with it.
func (l *leaseLoop) adopt(a attempt, id clientv3.LeaseID, ttl int64, sent time.Time) result {
	r := result{granted: true, id: id, ttl: time.Duration(ttl) * time.Second, sent: sent}
	// The server made the lease when it took the grant in, after sent:
	// nothing on any path answers a grant but the server.
	r.deadline = sent.Add(r.ttl - l.k.cfg.timingFor(r.ttl).margin)

	// The registry takes the new lease before anyone can see it held, so
	// that every key is written with it.
	l.k.reg.rebase(id)
	l.mu.Lock()
	if l.k.life.closed() {
		l.mu.Unlock()
		// Close already took the old lease to revoke: revoke this one here.
		ctx, cancel := context.WithTimeout(context.Background(), a.tm.renewTimeout)
		_ = l.k.hub.b.revoke(ctx, id)
		cancel()
		return result{granted: true, err: lkerrors.Classify(context.Canceled)}
	}
	l.lease = lease{id: id, ttl: r.ttl, deadline: r.deadline}
	// The new lease is renewed on the path's schedule from now on: a path
	// that holds keepalives starts a schedule for it at its first one.
	l.path.last, l.path.asked, l.path.thr, l.path.fresh, l.path.second = time.Now(), time.Time{}, 0, true, true
	tm := l.timingLocked()
	l.mu.Unlock()
	l.k.logger().Debug("lease granted", zap.Int64("lease", int64(id)), zap.Int64("replaces", int64(a.id)), zap.Duration("ttl", r.ttl))
	r.err = l.k.reg.writePending(leaseView{id: id, deadline: r.deadline, tm: tm, live: true})
	return r
}

// gridPoints is how many points of the renewal grid one renewal interval
// spans at most.
const gridPoints = 8

// gridTick is the shortest step of the renewal grid: each burst of
// keepalives costs both ends wake-ups and system calls whatever it
// carries, so the keepers of a client gather theirs in fewer bursts than
// etcd's own Lease.KeepAlive, which sends on a 500ms tick: at a TTL of 5s
// a keeper renews every 2.09s, on a grid of two points 1.05s apart.
const gridTick = time.Second

// pointsIn is how many points of the renewal grid a renewal interval
// spans: gridPoints, or fewer where its steps would be shorter than
// gridTick (a short TTL), one at least.
func pointsIn(interval time.Duration) time.Duration {
	return max(1, min(gridPoints, interval/gridTick))
}

// gridSlack is the part of the room before the degrade threshold that the
// interval leaves for what the path adds to the margin and the reply's
// room (b, a learned bound) and for the alarm's lateness: on a LAN these
// are milliseconds, and a keeper on the grid renews every interval.
const gridSlack = 64

// replyRoom is the time the renewal grid leaves for a renewal's reply
// before the degrade threshold, on a path whose replies take up to reply
// (the bound they showed), with the configured timing base: at least half
// the configured renew timeout, so that a keepalive stuck on a silent
// member is hedged on another member after a third of it (hedgeAfter) and
// that one is answered within a sixth, and the keeper stays Healthy; as
// long as the path's replies take where that is longer.
func replyRoom(reply time.Duration, base timing) time.Duration {
	return max(reply, base.renewTimeout/2)
}

// renewalInterval is how long a keeper renewing a lease of ttl with the
// configured timing base waits between its renewals on a path that
// answers at once: as long as the degrade threshold allows, less the
// reply's room (replyRoom) and the grid's slack, so that a keepalive
// answered at once, or hedged past a silent member, comes before the
// keeper would have to report Degraded, and no keepalive goes that the
// threshold does not call for.
//
// With the defaults (threshold TTL/2, margin TTL/40, renew timeout TTL/10)
// that is 0.418 TTL: 2.09s at a TTL of 5s, 4.18s at 10s, 12.55s at 30s.
// etcd's own Lease.KeepAlive renews a third of the TTL after each reply, in
// the first round of its send loop after that, which sleeps 500ms between
// rounds: every 2s at a TTL of 5s, 3.5s at 10s, 10.5s at 30s, at most 0.417
// TTL at any TTL from 4s up (2.5s at 6s). So the keeper sends the cluster no
// more keepalives than KeepAlive does at every TTL from 4s. At 3s KeepAlive
// waits 1.5s, half the TTL: its lease is closer to its expiry than the
// degrade threshold before every renewal, and a keeper renewing as seldom
// would be Degraded before each one. There the keeper renews every 1.25s.
// A longer interval makes the first signal of a fault come sooner, not
// later: the threshold counts from the last renewal.
func renewalInterval(ttl time.Duration, base timing) time.Duration {
	room := ttl - base.margin - base.threshold - replyRoom(0, base)
	return max(room-room/gridSlack, ttl/8)
}

// gridStep is the step of the renewal grid of a renewal interval (the
// configured timing's, renewalInterval): an eighth of it, or a larger
// part of it where an eighth is shorter than gridTick (pointsIn). It derives
// from the configuration alone, never from what a keeper learned of its
// path, so that every keeper of one client with the same TTL and
// configuration shares the grid.
func gridStep(interval time.Duration) time.Duration {
	return interval / pointsIn(interval)
}

// renewalDue is when the renewal after one sent at sent is due, for a lease
// of ttl renewed with timing tm (base is the configured timing) on a path
// whose replies take up to reply: the
// renewal interval later (renewalInterval), on the last point of the
// renewal grid by then, but no later than the latest point that still leaves the
// reply its room (replyRoom) before the degrade threshold, so that a slow
// link that answers as late as it usually does never makes the keeper
// Degraded.
//
// The grid's points are the multiples, on the wall clock, of gridStep,
// shifted by phase (gridPhase, drawn once per process): the same for every
// keeper of the process with the same timing, and apart for keepers of
// different processes, so that a fleet of processes with synchronised
// clocks does not renew in one burst on every grid point. A keeper on the
// grid renews a whole interval, a whole number of steps, after its last
// renewal, so it stays on the grid; one that is not yet (after a grant) joins it at its next renewal.
// Keepers on one grid point renew together: the hub's stream carries
// their keepalives in one write, and etcd reads them in one read and
// answers them in one write, instead of a system call and a wake-up on
// both sides for each, which is most of what a renewal costs. etcd's own
// lessor gathers its keepalives the same way, on a 500 ms tick. Where the
// path leaves less room (a far link, a long b), the renewal goes a step or
// more earlier, on the grid still, but not within an eighth of the TTL of
// the last: a path whose replies take so long that no renewal is
// answered before the threshold gains nothing from renewing sooner still,
// and the threshold in force for the cycle is lowered instead
// (pathState.next).
func renewalDue(sent time.Time, ttl time.Duration, tm, base timing, reply, phase time.Duration) time.Time {
	interval := renewalInterval(ttl, base)
	step := gridStep(interval)
	latest := sent.Add(ttl - tm.margin - tm.threshold - replyRoom(reply, base))
	due := onGrid(sent.Add(interval-step+1), step, phase)
	for due.After(latest) && due.Add(-step).Sub(sent) > ttl/8 {
		due = due.Add(-step)
	}
	return due
}

// onGrid rounds t up to a multiple of step on the wall clock, shifted by
// phase.
func onGrid(t time.Time, step, phase time.Duration) time.Time {
	if rem := gridOffset(t, step, phase); rem != 0 {
		t = t.Add(step - rem)
	}
	return t
}

// gridOffset is how far t is past the last point of the grid of step
// shifted by phase.
func gridOffset(t time.Time, step, phase time.Duration) time.Duration {
	rem := (t.UnixNano() - int64(phase)) % int64(step)
	if rem < 0 {
		rem += int64(step)
	}
	return time.Duration(rem)
}

// applyLocked feeds an attempt's result to the state machine and schedules
// the next attempt.
func (l *leaseLoop) applyLocked(a attempt, r result) {
	defer l.signalLocked()
	if l.k.life.closed() {
		return
	}
	now := time.Now()
	if r.ttl > 0 && r.id == l.lease.id {
		// A reply's TTL sets D, unless a probe's answer (timeLeft) set a
		// later one meanwhile: both are bounds the server's expiry lies
		// beyond. The timing stays the granted TTL's, which a proxy's
		// reply of the time left after an outage is not.
		l.lease.ttl = max(l.lease.ttl, r.ttl)
		if r.deadline.After(l.lease.deadline) || l.lease.gone {
			l.lease.deadline = r.deadline
		}
	}
	if r.err == nil {
		l.traceLocked(r, now)
		l.fails = failures{}
		if l.tooNearLocked(now) {
			// The reply came long after its request was sent (it waited out
			// an outage), or D allows for a leg b that one call slowed by
			// a fault made long: the lease is alive for less than the
			// degrade threshold. Renew again at once rather than report
			// Healthy for an instant and Degraded right after, and ask the
			// server's time to live, whose answer owes nothing to b and
			// whose round trip brings b down. Again in a row, back off:
			// a renewal as near as the last proves no later D. But never
			// past the last start that leaves the path's usual answer time
			// before D: behind a path that holds keepalives each renewal
			// waits for its answer, and a backed-off one let D pass with
			// the path answering.
			l.probe(r.id)
			var wait time.Duration
			if l.again > 0 {
				wait = min(l.k.cfg.Backoff.BaseDelay<<min(l.again-1, 8), l.k.cfg.Backoff.MaxDelay,
					max(l.lease.deadline.Sub(now)-l.usualLocked(), 0))
			}
			l.again = min(l.again+1, 9)
			l.scheduleLocked(wait)
			return
		}
		l.again = 0
		ev := statemachine.RenewOK
		if r.granted {
			ev = statemachine.Recovered
		}
		l.stepLocked(ev, nil, now)
		l.stopConnWatchLocked()
		l.k.watch.kick()
		// Count the renewal interval from when the server reset the lease
		// (the send time), so round trips do not eat into the time left.
		l.scheduleLocked(max(l.nextDueLocked(r.sent, now).Sub(now), 0))
		if base := l.baseTimingLocked(); !r.granted && (l.path.probeDue(base) || l.lease.deadline.Sub(now) < base.threshold+base.renewTimeout) {
			// Also where the D this renewal proved leaves less than a
			// renewal cycle before the degrade threshold: D allows for b,
			// the longest recent unary call, and one call that waited out
			// a stall keeps b high until calls show it shorter, or it was
			// dated by the path's previous answer. The probe is such a
			// call, and its answer sets a D that owes nothing to b.
			l.probe(r.id)
		}
		l.rearmCheckLocked(now)
		return
	}

	kind := lkerrors.KindOf(r.err)
	l.fails.add(r.err, kind)
	l.logFailureLocked(r, kind, now)
	switch {
	case kind == lkerrors.LeaseExpired:
		l.leaseLostLocked(r.err, now)
		return
	case policyOf(kind).permanent:
		l.stepLocked(statemachine.PermanentFailure, r.err, now)
	default:
		l.stepLocked(statemachine.RenewFailed, r.err, now)
		l.checkTimeLocked(now)
	}
	if l.recoveringLocked() {
		l.scheduleLocked(l.nextAfterFailureLocked(a, now))
	}
	l.watchConnLocked()
}

// nextAfterFailureLocked is the wait before the attempt after a failed one,
// counted from now, by the backoff of the failures' pace (failures.add).
// The backoff counts from the start of the failed attempt: an attempt that
// waited out its timeout already spent it.
func (l *leaseLoop) nextAfterFailureLocked(a attempt, now time.Time) time.Duration {
	spent, kind := now.Sub(a.start), l.fails.pace
	switch {
	case !a.live:
		// One attempt in flight at a time: the next starts when this one
		// ended, but no sooner than its backoff after it started, so errors
		// that return at once cannot spin; errors retrying cannot fix soon
		// wait their own, longer backoff.
		wait := a.wait
		if policyOf(kind).slowest {
			wait = max(wait, l.k.cfg.Backoff.delay(l.fails.n, kind, rand.Float64()))
		}
		return max(wait-spent, 0)
	case !l.liveLocked(now) && !policyOf(kind).slowest:
		// D passed during the attempt: from now on attempts stay
		// outstanding; the first starts at once.
		return 0
	}
	return max(l.retryDelayLocked(kind, now)-spent, 0)
}

// leaseLostLocked acts on the server's word that the lease is gone (err):
// the keeper is Failed, and the next attempt, at once, grants a new lease;
// unless the last attempt was refused (a late reply may say the lease is
// gone between two refused attempts), when the next one keeps the slowest
// pace it was given.
func (l *leaseLoop) leaseLostLocked(err error, now time.Time) {
	refused := l.fails.permanent()
	l.lease.gone, l.fails.n = true, 0
	l.stepLocked(statemachine.LeaseLost, err, now)
	if l.recoveringLocked() && !l.running && !refused {
		l.scheduleLocked(0)
	}
}

// permanent reports whether err says that retrying soon cannot help: the
// keeper is Failed at once and retries at the slowest pace.
func permanent(err error) bool {
	return err != nil && policyOf(lkerrors.KindOf(err)).permanent
}

// recoveringLocked reports whether attempts go on: always while the lease
// is alive or Start waits, and in Failed unless recovery is disabled.
func (l *leaseLoop) recoveringLocked() bool {
	return !l.k.cfg.DisableRecovery || l.starting || l.m.State() != statemachine.Failed
}

// retryDelayLocked is the backoff for the current failure count, shortened
// while the lease is alive so that a last attempt of a full renew timeout
// still fits before the deadline. Inside that last window retries keep a
// floor of a tenth of the renew timeout (or the base delay, if smaller), so
// errors that return at once cannot spin.
func (l *leaseLoop) retryDelayLocked(kind lkerrors.Kind, now time.Time) time.Duration {
	d := l.k.cfg.Backoff.delay(l.fails.n, kind, rand.Float64())
	if l.liveLocked(now) && !policyOf(kind).permanent {
		rt := l.timingLocked().renewTimeout
		floor := min(l.k.cfg.Backoff.BaseDelay, rt/10)
		d = min(d, max(l.lease.deadline.Sub(now)-rt, floor))
	}
	return d
}

// scheduleRetryLocked brings the next attempt forward to the backoff for
// kind, unless one is due sooner or running.
func (l *leaseLoop) scheduleRetryLocked(kind lkerrors.Kind) {
	if l.k.life.closed() || l.running || !l.started {
		return
	}
	d := l.retryDelayLocked(kind, time.Now())
	if at, ok := l.k.hub.timers.When(&l.sched.attempt); !ok || time.Until(at) > d {
		l.scheduleLocked(d)
	}
}

// scheduleLocked sets the next attempt due in d.
func (l *leaseLoop) scheduleLocked(d time.Duration) {
	if l.k.life.closed() {
		return
	}
	l.k.hub.timers.Set(&l.sched.attempt, time.Now().Add(d))
}

// failureLogEvery is how often an outage repeats its warning.
const failureLogEvery = 30 * time.Second

// logFailureLocked logs a failed attempt: a warning for the first failure
// after a success and then at most one every failureLogEvery, so an outage
// does not flood the log; every attempt at debug level.
func (l *leaseLoop) logFailureLocked(r result, kind lkerrors.Kind, now time.Time) {
	fields := []zap.Field{leaseField(r.id), zap.Int("failures", l.fails.n),
		zap.String("kind", kind.String()), zap.Error(r.err)}
	if l.fails.warnedAt == 0 || now.Sub(time.Unix(0, l.fails.warnedAt)) >= failureLogEvery {
		l.fails.warnedAt = now.UnixNano()
		l.k.logger().Warn("lease keeper renewal failing", fields...)
		return
	}
	l.k.logger().Debug("attempt failed", fields...)
}

// spare is a lease granted beside the renewal of one that may be gone.
type spare struct {
	done chan struct{} // closed once the grant returned
	id   clientv3.LeaseID
	ttl  int64
	sent time.Time
	err  error
}

// grantSpare grants a lease on a goroutine of its own, bounded like the
// attempt a.
func (l *leaseLoop) grantSpare(a attempt) *spare {
	sp := &spare{done: make(chan struct{})}
	if !l.k.life.begin() {
		sp.err = context.Canceled
		close(sp.done)
		return sp
	}
	go func() {
		defer l.k.life.end()
		defer close(sp.done)
		ctx, cancel := l.attemptCtx(a.timeout, time.Time{})
		defer cancel()
		sp.sent = time.Now()
		sp.id, sp.ttl, sp.err = l.k.hub.b.grant(ctx, l.k.cfg.ttlSeconds())
	}()
	return sp
}

// discardSpare revokes the spare lease once it is granted, if it is, on a
// goroutine of its own: the old lease lives on.
func (l *leaseLoop) discardSpare(sp *spare) {
	if !l.k.life.begin() {
		return
	}
	go func() {
		defer l.k.life.end()
		<-sp.done
		if sp.err != nil {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), l.k.cfg.timingFor(time.Duration(sp.ttl)*time.Second).renewTimeout)
		defer cancel()
		_ = l.k.hub.b.revoke(ctx, sp.id)
	}()
}

// traceLocked logs a successful attempt at debug level: what D it proved
// and what the keeper knows of its path, for a reader who asks why a
// keeper went Degraded.
func (l *leaseLoop) traceLocked(r result, now time.Time) {
	ce := l.k.logger().Check(zap.DebugLevel, "lease renewed")
	if ce == nil {
		return
	}
	ce.Write(leaseField(r.id), zap.Bool("granted", r.granted),
		zap.Duration("answered", now.Sub(r.sent)), zap.Duration("left", l.lease.deadline.Sub(now)),
		zap.Duration("b", l.k.hub.calls.leg()), zap.Bool("held", l.path.held()),
		zap.Duration("period", l.path.period), zap.Duration("most", l.path.most),
		zap.Duration("threshold", l.timingLocked().threshold), zap.String("state", l.m.State().String()))
}

// leaseField is a lease ID as the keeper's log lines give it, in hex.
func leaseField(id clientv3.LeaseID) zap.Field {
	return zap.String("lease", strconv.FormatInt(int64(id), 16))
}
