package keeper

import (
	"context"
	"math/rand/v2"
	"time"

	lkerrors "github.com/leasekeeper/leasekeeper/errors"
)

// maxOutstanding is how many keepalives an attempt without a live lease
// keeps in flight: sending another cancels the oldest.
const maxOutstanding = 2

// keepAlive renews lease a.id and returns the TTL and the send time of the
// request that succeeded. The first success wins, as does the server's
// word that the lease is gone; every request ends at the attempt's
// deadline, and keepAlive returns only once all did.
//
// While no keepalive was answered, a fresh one goes out on a new stream,
// which the client's balancer sends to the next member, keeping
// maxOutstanding in flight: with a live lease every third of the renew
// timeout, so that a silent member costs a third of it instead of all of
// it and the keeper stays Healthy; without one, every Backoff.BaseDelay
// (jittered) for as long as the attempt stays outstanding. A member that
// lost its leader, or still forwards to one that went silent, holds a
// keepalive until it looks for a leader again, which etcd does once per
// election timeout (a second by default); a fresh request reaches the new
// leader at once. So the keeper hears that etcd answers again within a
// fraction of a second, whatever member its requests wait on. An error that
// comes back while nothing else is in flight ends the attempt: it goes
// back to the backoff, so that errors that return at once cannot spin.
func (l *leaseLoop) keepAlive(a attempt) (int64, time.Time, error) {
	type reply struct {
		ttl  int64
		sent time.Time
		err  error
		n    int
	}
	ctx, cancel := l.attemptCtx(a.timeout, a.deadline)
	defer cancel()
	every := a.tm.renewTimeout / 3
	if !a.live {
		every = l.cfg.Backoff.BaseDelay
	}
	maxSends := int(a.timeout/(every/2)) + 2
	replies := make(chan reply, maxSends)
	var stops []context.CancelFunc // of the requests, by send order; nil once answered or canceled
	send := func() {
		sctx, stop := context.WithCancel(ctx)
		n := len(stops)
		stops = append(stops, stop)
		go func() {
			sent := time.Now()
			ttl, err := l.b.keepAliveOnce(sctx, a.id)
			replies <- reply{ttl, sent, err, n}
		}()
	}
	send()
	inflight, active := 1, 1 // requests not answered yet; those of them not canceled
	next := time.NewTimer(jittered(every, a.live))
	defer next.Stop()

	var first reply
	first.err = context.DeadlineExceeded
	for {
		select {
		case <-next.C:
			if len(stops) < maxSends && ctx.Err() == nil {
				send()
				inflight, active = inflight+1, active+1
				for oldest := 0; active > maxOutstanding && oldest < len(stops); oldest++ {
					if stops[oldest] != nil {
						stops[oldest]()
						stops[oldest] = nil
						active--
					}
				}
				next.Reset(jittered(every, a.live))
			}
			continue
		case r := <-replies:
			inflight--
			canceled := stops[r.n] == nil
			if !canceled {
				stops[r.n]()
				stops[r.n] = nil
				active--
			}
			if r.err == nil || (!canceled && first.sent.IsZero()) {
				first = r
			}
			decided := r.err == nil || lkerrors.KindOf(l.classify(r.err)) == lkerrors.LeaseExpired || active == 0
			if !decided {
				continue
			}
		}
		cancel()
		for ; inflight > 0; inflight-- {
			<-replies
		}
		if first.err != nil {
			return 0, time.Time{}, first.err
		}
		return first.ttl, first.sent, nil
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
