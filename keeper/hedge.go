package keeper

import (
	"context"
	"math/rand/v2"
	"slices"
	"time"

	lkerrors "github.com/leasekeeper/leasekeeper/errors"
)

// keepAlive renews lease a.id and returns the TTL and the send time of the
// request that succeeded. The first success wins, as does the server's
// word that the lease is gone; every request ends at the attempt's
// deadline, and keepAlive returns only once all did.
//
// While no keepalive was answered, a fresh one goes out on a new stream,
// which the client's balancer sends to the next member: with a live lease
// every third of the renew timeout, so that a silent member costs a third
// of it instead of all of it and the keeper stays Healthy; without one,
// every Backoff.BaseDelay (jittered) for as long as the attempt stays
// outstanding, the older ones canceled once stuck. A member that lost its
// leader, or still forwards to one that went silent, holds a keepalive
// until it looks for a leader again, which etcd does once per election
// timeout (a second by default); a fresh request reaches the new leader at
// once. So the keeper hears that etcd answers again within a
// fraction of a second, whatever member its requests wait on. An error that
// comes back while nothing else is in flight ends the attempt: it goes
// back to the backoff, so that errors that return at once cannot spin.
func (l *leaseLoop) keepAlive(a attempt) (ttl int64, sent time.Time, rtt time.Duration, err error) {
	type request struct {
		sent time.Time
		stop context.CancelFunc // nil once answered or canceled
	}
	type reply struct {
		ttl int64
		err error
		at  time.Time
		req *request
	}
	ctx, cancel := l.attemptCtx(a.timeout, a.deadline)
	defer cancel()
	// With a live lease: a fresh keepalive every third of the renew
	// timeout, none canceled. Without: one every BaseDelay, each canceled
	// once stuck, when it waited for the renew timeout or twice the usual
	// round trip, whichever is longer: until then a slow link may still
	// answer it, and canceling it for a fresh one would only start the wait
	// over.
	every, stuck := a.tm.renewTimeout/3, a.timeout
	if !a.live {
		every, stuck = l.cfg.Backoff.BaseDelay, max(a.tm.renewTimeout, 2*a.rtt)
	}
	replies := make(chan reply, int(a.timeout/(every/2))+2)
	var reqs []*request // in flight, oldest first
	send := func() {
		sctx, stop := context.WithCancel(ctx)
		req := &request{sent: time.Now(), stop: stop}
		reqs = append(reqs, req)
		go func() {
			ttl, err := l.b.keepAliveOnce(sctx, a.id)
			replies <- reply{ttl, err, time.Now(), req}
		}()
	}
	send()
	inflight := 1 // requests whose reply has not come, canceled or not
	next := time.NewTimer(jittered(every, a.live))
	defer next.Stop()

	var first reply
	first.err = context.DeadlineExceeded
	for {
		select {
		case <-next.C:
			next.Reset(jittered(every, a.live))
			for len(reqs) > 0 && time.Since(reqs[0].sent) >= stuck {
				reqs[0].stop()
				reqs[0].stop, reqs = nil, reqs[1:]
			}
			if ctx.Err() == nil && inflight < cap(replies) {
				send()
				inflight++
			}
		case r := <-replies:
			inflight--
			if r.req.stop == nil {
				break // canceled for a fresher one
			}
			r.req.stop()
			r.req.stop = nil
			reqs = slices.DeleteFunc(reqs, func(q *request) bool { return q == r.req })
			if r.err == nil || first.req == nil {
				first = r
			}
			if r.err == nil || lkerrors.KindOf(l.classify(r.err)) == lkerrors.LeaseExpired {
				reqs = nil // decided
			}
		}
		// A success or the server's word that the lease is gone decides;
		// so does no request left in flight, as after an early failure
		// (back to the backoff) or at the attempt's deadline.
		if len(reqs) > 0 {
			continue
		}
		cancel()
		for ; inflight > 0; inflight-- {
			<-replies
		}
		if first.err != nil {
			return 0, time.Time{}, 0, first.err
		}
		return first.ttl, first.req.sent, first.at.Sub(first.req.sent), nil
	}
}

// jittered spreads d over [d/2, 3d/2) when spread, so that keepers that
// lost the cluster together do not ask it again together.
func jittered(d time.Duration, exact bool) time.Duration {
	if exact || d <= 0 {
		return d
	}
	return d/2 + rand.N(d)
}
