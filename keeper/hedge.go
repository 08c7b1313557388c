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
// While no keepalive was answered, a fresh one goes out on a new stream
// (the hub leaves the one the first waits on, renewals.go), which the
// client's balancer sends to the next member: with a live lease
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
		sent   time.Time
		cancel func() // nil once answered or given up
	}
	type reply struct {
		ttl int64
		err error
		at  time.Time
		req *request
	}
	now := time.Now()
	end := attemptEnd(now, a.timeout, a.deadline)
	// With a live lease: a fresh keepalive every third of the renew
	// timeout, none given up. Without: one every BaseDelay, each given up
	// once stuck, when it waited for the renew timeout or twice the usual
	// round trip, whichever is longer: until then a slow link may still
	// answer it, and giving it up for a fresh one would only start the
	// wait over.
	every, stuck := a.tm.renewTimeout/3, a.timeout
	if !a.live {
		every, stuck = l.cfg.Backoff.BaseDelay, max(a.tm.renewTimeout, 2*a.rtt)
	}
	// Room for every reply, late ones included: done never blocks.
	replies := make(chan reply, int(a.timeout/(every/2))+2)
	var reqs []*request // in flight, oldest first
	n := 0              // requests sent; every one after the first goes another way
	send := func() {
		req := &request{sent: time.Now()}
		reqs = append(reqs, req)
		req.cancel = l.b.keepAliveAsync(a.id, n > 0, func(ttl int64, err error) {
			replies <- reply{ttl, err, time.Now(), req}
		})
		n++
	}
	giveUp := func(req *request) {
		if req.cancel != nil {
			req.cancel()
			req.cancel = nil
		}
	}
	// decided gives up every request in flight, which ends the loop.
	decided := func() {
		for _, req := range reqs {
			giveUp(req)
		}
		reqs = nil
	}
	send()
	nextAt := now.Add(jittered(every, a.live))
	t := time.NewTimer(earlier(nextAt, end).Sub(now))
	defer t.Stop()

	var first reply
	first.err = context.DeadlineExceeded
	for len(reqs) > 0 {
		select {
		case <-l.life.ctx.Done():
			first = reply{err: context.Canceled}
			decided()
		case now := <-t.C:
			if !now.Before(end) {
				decided()
				break
			}
			if !now.Before(nextAt) {
				nextAt = now.Add(jittered(every, a.live))
				for len(reqs) > 0 && now.Sub(reqs[0].sent) >= stuck {
					giveUp(reqs[0])
					reqs = reqs[1:]
				}
				if n < cap(replies) {
					send()
				}
			}
			t.Reset(earlier(nextAt, end).Sub(now))
		case r := <-replies:
			if r.req.cancel == nil {
				break // given up for a fresher one
			}
			r.req.cancel = nil
			reqs = slices.DeleteFunc(reqs, func(q *request) bool { return q == r.req })
			if r.err == nil || first.req == nil {
				first = r
			}
			// A success or the server's word that the lease is gone
			// decides. An early failure with nothing else in flight ends
			// the attempt too (the loop's condition): back to the backoff.
			if r.err == nil || lkerrors.KindOf(l.classify(r.err)) == lkerrors.LeaseExpired {
				decided()
			}
		}
	}
	if first.err != nil {
		return 0, time.Time{}, 0, first.err
	}
	return first.ttl, first.req.sent, first.at.Sub(first.req.sent), nil
}

func earlier(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

// attemptEnd is when an attempt that starts at now ends: after timeout,
// or at limit if limit is set, still ahead and sooner.
func attemptEnd(now time.Time, timeout time.Duration, limit time.Time) time.Time {
	end := now.Add(timeout)
	if !limit.IsZero() && limit.Before(end) && now.Before(limit) {
		end = limit
	}
	return end
}

// jittered spreads d over [d/2, 3d/2) when spread, so that keepers that
// lost the cluster together do not ask it again together.
func jittered(d time.Duration, exact bool) time.Duration {
	if exact || d <= 0 {
		return d
	}
	return d/2 + rand.N(d)
}
