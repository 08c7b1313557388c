package keeper

import (
	"context"
	"math/rand/v2"
	"strconv"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	lkerrors "github.com/leasekeeper/leasekeeper/errors"
	"github.com/leasekeeper/leasekeeper/statemachine"
)

// timing is the part of the configuration that derives from the granted TTL.
type timing struct {
	renewTimeout time.Duration
	margin       time.Duration
	threshold    time.Duration
}

// timing returns the timing for the lease held, or for the TTL asked before
// the first grant. Called with mu held.
func (k *Keeper) timing() timing {
	return k.cfg.timingFor(k.ttl)
}

// timingFor returns the timing for a lease granted with ttl; zero means the
// TTL asked.
func (c Config) timingFor(ttl time.Duration) timing {
	if ttl > 0 {
		c.TTL = ttl
	}
	r := c.resolved()
	return timing{renewTimeout: r.RenewTimeout, margin: r.Margin, threshold: r.DegradeThreshold}
}

// result is what one attempt did.
type result struct {
	granted  bool             // a new lease was granted (else the held one renewed)
	id       clientv3.LeaseID // the lease renewed or granted
	ttl      time.Duration    // TTL the server set; zero if the lease RPC failed
	sent     time.Time        // when the successful lease request was sent
	started  time.Time        // when the attempt started
	live     bool             // whether a live lease was held when it started
	deadline time.Time        // the new local deadline when ttl > 0
	err      error            // classified; nil when every key is written
}

// fire runs one attempt. It is the attempt timer's function, so it runs on a
// goroutine of its own that ends with the attempt.
func (k *Keeper) fire() {
	k.mu.Lock()
	if k.closed || k.running {
		k.mu.Unlock()
		return
	}
	k.attemptT = nil
	k.running = true
	k.wg.Add(1)
	defer k.wg.Done()
	now := time.Now()
	k.checkTimeLocked(now)
	id, renew, deadline, tm := k.leaseID, k.leaseID != 0 && !k.gone, k.deadline, k.timing()
	live := k.liveLocked(now)
	if !live && k.retries > 0 {
		// No live lease to protect: instead of waiting out the backoff idle,
		// leave the attempt outstanding for it. A member that answers again
		// (a healed partition, a thawed process) then answers this request
		// at once, and the keeper heals within a round trip.
		tm.renewTimeout = max(tm.renewTimeout, k.cfg.Backoff.delay(k.retries, lkerrors.KindOf(k.lastErr), 0.5))
	}
	k.mu.Unlock()

	var r result
	op := "renew"
	if renew {
		r = k.renew(id, deadline, tm)
	} else {
		op = "grant"
		r = k.regrant(id, tm)
	}
	r.started, r.live = now, live
	if k.ctx.Err() == nil || lkerrors.KindOf(r.err) != lkerrors.Canceled {
		k.observeAttempt(op, time.Since(now), r.err)
	}

	// A new lease replaces the old one only after the server said it does
	// not know the old one, so there is nothing left to revoke.
	k.mu.Lock()
	k.running = false
	k.applyLocked(r)
	k.mu.Unlock()
}

// attemptCtx bounds one RPC by the renew timeout and by limit, if limit is
// set and still ahead.
func (k *Keeper) attemptCtx(tm timing, limit time.Time) (context.Context, context.CancelFunc) {
	end := time.Now().Add(tm.renewTimeout)
	if !limit.IsZero() && limit.Before(end) && time.Now().Before(limit) {
		end = limit
	}
	return context.WithDeadline(k.ctx, end)
}

func (k *Keeper) classify(err error) error {
	return lkerrors.ClassifyConn(err, k.b.connState())
}

// renew renews the held lease, then writes any key not yet written with it.
func (k *Keeper) renew(id clientv3.LeaseID, deadline time.Time, tm timing) result {
	ttl, sent, err := k.keepAlive(id, deadline, tm)
	if err != nil {
		return result{id: id, err: k.classify(err)}
	}
	r := result{id: id, ttl: time.Duration(ttl) * time.Second, sent: sent}
	// The server reset the lease no earlier than when the request was sent,
	// so its expiry is no earlier than sent+ttl.
	r.deadline = sent.Add(r.ttl - k.cfg.timingFor(r.ttl).margin)
	r.err = k.writePending(id, r.deadline, tm)
	return r
}

// regrant grants a new lease and writes every key with it.
func (k *Keeper) regrant(old clientv3.LeaseID, tm timing) result {
	sent := time.Now()
	ctx, cancel := k.attemptCtx(tm, time.Time{})
	id, ttl, err := k.b.grant(ctx, k.cfg.ttlSeconds())
	cancel()
	if err != nil {
		return result{granted: true, err: k.classify(err)}
	}
	r := result{granted: true, id: id, ttl: time.Duration(ttl) * time.Second, sent: sent}
	r.deadline = sent.Add(r.ttl - k.cfg.timingFor(r.ttl).margin)

	k.mu.Lock()
	if k.closed {
		k.mu.Unlock()
		// Close already read the old lease: revoke this one ourselves.
		ctx, cancel := context.WithTimeout(context.Background(), tm.renewTimeout)
		_ = k.b.revoke(ctx, id)
		cancel()
		return result{granted: true, err: lkerrors.Classify(context.Canceled)}
	}
	// Hold the new lease from now on, so that Register writes with it, and
	// mark every key for writing.
	k.leaseID, k.ttl, k.deadline, k.gone = id, r.ttl, r.deadline, false
	for key := range k.keys {
		k.pending[key] = true
	}
	tm = k.timing()
	k.mu.Unlock()
	k.log.Debug("lease granted", zap.Int64("lease", int64(id)), zap.Int64("replaces", int64(old)), zap.Duration("ttl", r.ttl))
	r.err = k.writePending(id, r.deadline, tm)
	return r
}

// applyLocked feeds an attempt's result to the state machine and schedules
// the next attempt.
func (k *Keeper) applyLocked(r result) {
	defer k.signalLocked()
	if k.closed {
		return
	}
	now := time.Now()
	if r.ttl > 0 && r.id == k.leaseID {
		k.ttl, k.deadline = r.ttl, r.deadline
	}
	if r.err == nil {
		k.retries, k.lastErr, k.warnedAt = 0, nil, time.Time{}
		ev := statemachine.RenewOK
		if r.granted {
			ev = statemachine.Recovered
		}
		k.stepLocked(ev, nil, now)
		k.stopWatchLocked()
		// Count the renewal interval from when the server reset the lease
		// (the send time), so round trips do not eat into the time left.
		k.scheduleLocked(max(r.sent.Add(k.ttl/3).Sub(now), 0))
		k.rearmCheckLocked(now)
		return
	}

	kind := lkerrors.KindOf(r.err)
	k.lastErr = r.err
	k.retries++
	k.logFailureLocked(r, kind, now)
	switch {
	case kind == lkerrors.LeaseExpired:
		k.leaseLostLocked(r.err, now)
		return
	case permanent(r.err):
		k.stepLocked(statemachine.PermanentFailure, r.err, now)
	default:
		k.stepLocked(statemachine.RenewFailed, r.err, now)
		k.checkTimeLocked(now)
	}
	if k.recoveringLocked() {
		// The backoff counts from the start of the failed attempt: an
		// attempt that waited out its timeout already spent it. The first
		// attempt after the lease stopped being live starts at once: it
		// stays outstanding for the backoff (see fire).
		d := max(k.retryDelayLocked(kind, now)-now.Sub(r.started), 0)
		if r.live && !k.liveLocked(now) {
			d = 0
		}
		k.scheduleLocked(d)
	}
	if kind == lkerrors.ClusterUnreachable {
		k.watchConnLocked()
	}
}

// leaseLostLocked acts on the server's word that the lease is gone (err):
// the keeper is Failed, and the next attempt, at once, grants a new lease.
func (k *Keeper) leaseLostLocked(err error, now time.Time) {
	k.gone, k.retries = true, 0
	k.stepLocked(statemachine.LeaseLost, err, now)
	if k.recoveringLocked() && !k.running {
		k.scheduleLocked(0)
	}
}

// permanent reports whether err says that retrying soon cannot help: the
// keeper is Failed at once and retries at the slowest pace. A Canceled
// status while the keeper is open comes from the connection, so it is not.
func permanent(err error) bool {
	k := lkerrors.KindOf(err)
	return err != nil && (k == lkerrors.PermissionDenied || k == lkerrors.InvalidArgument)
}

// recoveringLocked reports whether attempts go on: always while the lease
// is alive or Start waits, and in Failed unless recovery is disabled.
func (k *Keeper) recoveringLocked() bool {
	return !k.cfg.DisableRecovery || k.starting || k.m.State() != statemachine.Failed
}

// retryDelayLocked is the backoff for the current failure count, shortened
// while the lease is alive so that a last attempt of a full renew timeout
// still fits before the deadline. Inside that last window retries keep a
// floor of a tenth of the renew timeout (or the base delay, if smaller), so
// errors that return at once cannot spin.
func (k *Keeper) retryDelayLocked(kind lkerrors.Kind, now time.Time) time.Duration {
	d := k.cfg.Backoff.delay(k.retries, kind, rand.Float64())
	if k.liveLocked(now) && !permanent(kind.Sentinel()) {
		rt := k.timing().renewTimeout
		floor := min(k.cfg.Backoff.BaseDelay, rt/10)
		d = min(d, max(k.deadline.Sub(now)-rt, floor))
	}
	return d
}

// scheduleRetryLocked brings the next attempt forward to the backoff for
// kind, unless one is due sooner or running.
func (k *Keeper) scheduleRetryLocked(kind lkerrors.Kind) {
	if k.closed || k.running || !k.started {
		return
	}
	d := k.retryDelayLocked(kind, time.Now())
	if k.attemptT == nil || time.Until(k.attemptAt) > d {
		k.scheduleLocked(d)
	}
}

func (k *Keeper) scheduleLocked(d time.Duration) {
	k.stopTimer(&k.attemptT)
	k.attemptAt = time.Now().Add(d)
	k.attemptT = time.AfterFunc(d, k.fire)
}

// failureLogEvery is how often an outage repeats its warning.
const failureLogEvery = 30 * time.Second

// logFailureLocked logs a failed attempt: a warning for the first failure
// after a success and then at most one every failureLogEvery, so an outage
// does not flood the log; every attempt at debug level.
func (k *Keeper) logFailureLocked(r result, kind lkerrors.Kind, now time.Time) {
	fields := []zap.Field{zap.String("lease", strconv.FormatInt(int64(r.id), 16)), zap.Int("failures", k.retries),
		zap.String("kind", kind.String()), zap.Error(r.err)}
	if k.warnedAt.IsZero() || now.Sub(k.warnedAt) >= failureLogEvery {
		k.warnedAt = now
		k.log.Warn("lease keeper renewal failing", fields...)
		return
	}
	k.log.Debug("attempt failed", fields...)
}
