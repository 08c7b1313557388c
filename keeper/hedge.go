package keeper

import (
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	lkerrors "github.com/leasekeeper/leasekeeper/errors"
)

// keepAlive renews lease id once and returns the TTL and the send time of
// the request that succeeded. If no reply came within a third of the renew
// timeout, it sends a second keepalive on a new stream, which the client's
// balancer sends to the next member: a silent member then costs a third of
// the renew timeout instead of all of it, and the keeper stays Healthy. The
// first success wins; both requests end at the attempt's deadline, and
// keepAlive returns only once both did.
func (k *Keeper) keepAlive(id clientv3.LeaseID, deadline time.Time, tm timing) (int64, time.Time, error) {
	type reply struct {
		ttl  int64
		sent time.Time
		err  error
	}
	ctx, cancel := k.attemptCtx(tm, deadline)
	defer cancel()
	replies := make(chan reply, 2)
	send := func() {
		sent := time.Now()
		ttl, err := k.b.keepAliveOnce(ctx, id)
		replies <- reply{ttl, sent, err}
	}
	go send()
	inflight, hedged := 1, false
	hedge := time.NewTimer(tm.renewTimeout / 3)
	defer hedge.Stop()

	var first reply
	for {
		select {
		case <-hedge.C:
			if !hedged && inflight > 0 {
				hedged, inflight = true, inflight+1
				go send()
			}
			continue
		case r := <-replies:
			inflight--
			if r.err == nil || first.err == nil && first.sent.IsZero() {
				first = r
			}
			// A success, the server's word that the lease is gone, or the
			// last request in flight decides. An early failure without a
			// hedge goes back to the backoff.
			decided := r.err == nil || lkerrors.KindOf(k.classify(r.err)) == lkerrors.LeaseExpired || inflight == 0
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
