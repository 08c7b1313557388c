package keeper

import (
	"context"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	lkerrors "github.com/leasekeeper/leasekeeper/errors"
	"github.com/leasekeeper/leasekeeper/keeper/internal/alarm"
)

// keepAlive renews lease a.id and gives once the TTL and the send time of
// the request that succeeded: to wait, which must have room for it, or, if
// wait is nil, to renewDone, which must not block. The first success wins,
// as does the server's word that the lease is gone; every request ends at
// the attempt's deadline, and the result is given once none is in flight.
// It never blocks: the replies, the attempt's alarm and Close drive it,
// and the result is given on the goroutine of the event that ended it (or
// in keepAlive, if the backend fails the first request at once).
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
func (l *leaseLoop) keepAlive(a attempt, wait chan<- keepAliveResult) {
	k := runs.Get().(*keepAliveRun)
	*k = keepAliveRun{l: l, a: a, wait: wait}
	now := time.Now()
	k.end = attemptEnd(now, a.timeout, a.deadline)
	// With a live lease: a fresh keepalive every third of the renew
	// timeout, none given up. Without: one every BaseDelay, each given up
	// once stuck, when it waited for the renew timeout or twice the usual
	// round trip, whichever is longer: until then a slow link may still
	// answer it, and giving it up for a fresh one would only start the
	// wait over.
	k.every, k.stuck = a.hedge, a.timeout
	switch {
	case !a.live && !a.held:
		k.every, k.stuck = l.k.cfg.Backoff.BaseDelay, max(a.tm.renewTimeout, 2*a.rtt)
	case !a.live:
		// A path that holds keepalives answers a fresh stream no sooner
		// than its schedule: one fresh keepalive per wait bound, so that
		// a stream gone silent is replaced, without a new stream every
		// BaseDelay at the proxy.
		k.every, k.stuck = a.tm.renewTimeout, 2*a.tm.renewTimeout
	}
	k.first.err = context.DeadlineExceeded
	k.nextAt = k.end
	if k.every <= 0 {
		// Where replies come late as a rule, or the path holds
		// keepalives, a fresh one on a new stream is answered no sooner
		// than the first (path.go): one request waits.
		k.every = 0
	} else {
		k.most = int(a.timeout/(k.every/2)) + 2
		if a.learn {
			// A path not known yet may hold keepalives, where every
			// hedge only joins the wait on a stream of its own.
			k.most = 2
		}
		k.nextAt = now.Add(jittered(k.every, a.live))
	}
	k.tick.On(k)
	l.k.hub.ticks.Set(&k.tick, earlier(k.nextAt, k.end))
	if !l.k.life.onClose(&k.closing, k) {
		go k.onClose()
	}
	k.mu.Lock()
	req := k.addLocked()
	k.mu.Unlock()
	k.send(req)
}

// runs holds the keepAliveRuns that ended with nothing left holding them,
// for the renewals after them: one per renewal, of several hundred bytes,
// was the largest allocation of the renewal path. A pool, not one kept by
// each keeper, so that an idle keeper keeps none.
var runs = sync.Pool{New: func() any { return new(keepAliveRun) }}

// keepAliveResult is what a renewal's keepalives came to: the TTL and the
// send time of the request that succeeded, and its round trip; or the
// error.
type keepAliveResult struct {
	ttl   int64
	sent  time.Time
	rtt   time.Duration
	first bool // the attempt's first request succeeded: its round trip is a sample
	err   error
}

// keepAliveWait is keepAlive for a caller that waits for the result.
func (l *leaseLoop) keepAliveWait(a attempt) keepAliveResult {
	ch := make(chan keepAliveResult, 1)
	l.keepAlive(a, ch)
	return <-ch
}

// keepAliveRun is one attempt's keepalives in flight. Its events (a reply,
// its alarm, Close) come on other goroutines; each takes mu, and the one
// that leaves nothing in flight gives the result.
type keepAliveRun struct {
	l       *leaseLoop
	a       attempt
	wait    chan<- keepAliveResult // nil: renewDone takes the result
	tick    alarm.Alarm            // the next fresh keepalive, or the end
	closing afterEntry             // ends it at Close

	mu           sync.Mutex
	reqs         []*keepAliveReq // in flight, oldest first
	n, most      int             // requests sent, and how many may be; every one after the first goes another way
	every, stuck time.Duration
	nextAt, end  time.Time
	first        keepAliveReply // the reply that decides: a success, or else the first
	over         bool           // the result was given or is about to be

	req0  keepAliveReq     // the first request, which most renewals send alone
	reqs0 [1]*keepAliveReq // reqs' first array
}

type keepAliveReq struct {
	k        *keepAliveRun
	sent     time.Time
	hedge    bool // an earlier one of the attempt, or of the failed attempt before, went unanswered
	answered bool
	givenUp  bool
	cancel   canceler // the backend's, once keepAliveAsync returned
}

// reply is the backend's reply to req.
func (req *keepAliveReq) reply(ttl int64, err error) {
	req.k.onReply(keepAliveReply{ttl, err, time.Now(), req})
}

type keepAliveReply struct {
	ttl int64
	err error
	at  time.Time
	req *keepAliveReq
}

// addLocked puts one keepalive more in flight; send sends it.
func (k *keepAliveRun) addLocked() *keepAliveReq {
	var req *keepAliveReq
	if k.n == 0 {
		req, k.reqs = &k.req0, k.reqs0[:0]
	} else {
		req = new(keepAliveReq)
	}
	*req = keepAliveReq{k: k, sent: time.Now(), hedge: k.n > 0 || !k.a.clean}
	k.reqs = append(k.reqs, req)
	k.n++
	return req
}

// send sends req. The backend may answer it before keepAliveAsync
// returns, so mu is not held across the call.
func (k *keepAliveRun) send(req *keepAliveReq) {
	cancel := k.l.k.hub.b.keepAliveAsync(k.a.id, req.hedge, req)
	k.mu.Lock()
	req.cancel = cancel
	late := req.givenUp // given up before the backend had it
	k.mu.Unlock()
	if late {
		cancel.cancel()
	}
}

func (k *keepAliveRun) onReply(r keepAliveReply) {
	k.mu.Lock()
	if r.req.answered || r.req.givenUp {
		late := !r.req.answered
		r.req.answered = true
		k.mu.Unlock()
		switch {
		case !late:
		case r.err == nil && r.ttl > 0:
			// Given up at its timeout, or for a fresher one, and answered
			// after all.
			k.l.lateReply(k.a.id, r.req.sent, r.ttl, r.at)
		case lkerrors.KindOf(k.l.classify(r.err)) == lkerrors.LeaseExpired:
			// The server's word that the lease is gone holds however late
			// it comes: on a link slower than the attempts, it is the only
			// word the keeper hears.
			k.l.writeFailed(k.a.id, r.err)
		}
		return
	}
	r.req.answered = true
	k.reqs = slices.DeleteFunc(k.reqs, func(q *keepAliveReq) bool { return q == r.req })
	if r.err == nil || k.first.req == nil {
		k.first = r
	}
	// A success or the server's word that the lease is gone decides. An
	// early failure with nothing else in flight ends the attempt too:
	// back to the backoff.
	var cancels []canceler
	if r.err == nil || lkerrors.KindOf(k.l.classify(r.err)) == lkerrors.LeaseExpired {
		cancels = k.decidedLocked()
	}
	k.finishLocked(cancels)
}

// Ring is the alarm's: a fresh keepalive is due, or the attempt's end.
func (k *keepAliveRun) Ring() {
	k.mu.Lock()
	if k.over {
		k.mu.Unlock()
		return
	}
	now := time.Now()
	var cancels []canceler
	var fresh *keepAliveReq
	switch {
	case !now.Before(k.end):
		cancels = k.decidedLocked()
	case !now.Before(k.nextAt) && k.every > 0:
		k.nextAt = now.Add(jittered(k.every, k.a.live))
		for len(k.reqs) > 0 && now.Sub(k.reqs[0].sent) >= k.stuck {
			cancels = append(cancels, k.giveUpLocked(k.reqs[0]))
			k.reqs = k.reqs[1:]
		}
		if k.n < k.most {
			fresh = k.addLocked()
		}
	}
	if len(k.reqs) > 0 {
		k.l.k.hub.ticks.Set(&k.tick, earlier(k.nextAt, k.end))
	}
	k.finishLocked(cancels)
	if fresh != nil {
		k.send(fresh)
	}
}

// onClose ends the attempt at Close.
func (k *keepAliveRun) onClose() {
	k.mu.Lock()
	if k.over {
		k.mu.Unlock()
		return
	}
	k.first = keepAliveReply{err: context.Canceled}
	k.finishLocked(k.decidedLocked())
}

// decidedLocked gives up every request in flight, which ends the attempt,
// and returns the backend's cancels to call.
func (k *keepAliveRun) decidedLocked() []canceler {
	var cancels []canceler
	for _, req := range k.reqs {
		cancels = append(cancels, k.giveUpLocked(req))
	}
	k.reqs = nil
	return cancels
}

// giveUpLocked gives req up and returns what cancels it at the backend:
// nothing yet if keepAliveAsync did not return (send cancels it then).
func (k *keepAliveRun) giveUpLocked(req *keepAliveReq) canceler {
	req.givenUp = true
	if req.cancel == nil {
		return cancelFunc(func() {})
	}
	return req.cancel
}

// finishLocked unlocks mu, calls cancels, and ends the attempt if nothing
// is in flight any more.
func (k *keepAliveRun) finishLocked(cancels []canceler) {
	end := len(k.reqs) == 0 && !k.over
	if end {
		k.over = true
	}
	// One request, answered after send took in its canceler: the backend
	// and send are done with it, and no late reply can come.
	alone := k.n == 1 && k.req0.answered && !k.req0.givenUp && k.req0.cancel != nil
	k.mu.Unlock()
	callAll(cancels)
	if !end {
		return
	}
	l, a, wait := k.l, k.a, k.wait
	stopped := l.k.hub.ticks.Stop(&k.tick)
	removed := l.k.life.removeOnClose(&k.closing)
	f := k.first
	r := keepAliveResult{err: f.err}
	if f.err == nil {
		r = keepAliveResult{ttl: f.ttl, sent: f.req.sent, rtt: f.at.Sub(f.req.sent), first: f.req == &k.req0}
	}
	if alone && stopped && removed {
		// Nothing holds k any more (its alarm cannot ring, nor Close
		// call it): a renewal after it reuses it. k is not touched
		// after this.
		runs.Put(k)
	}
	if wait != nil {
		wait <- r
		return
	}
	l.renewDone(a, r)
}

func callAll(cs []canceler) {
	for _, c := range cs {
		c.cancel()
	}
}

func earlier(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

// later returns the later of a and b.
func later(a, b time.Time) time.Time {
	if a.After(b) {
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
