package keeper

import (
	"context"
	"slices"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// proxyFake is the fake etcd behind a fake of etcd's gRPC proxy, which
// answers keepalives as the real one does (server/proxy/grpcproxy/lease.go):
// it renews each lease upstream with a keepalive of its own, the first on
// the next 500 ms tick of its lessor after a keepalive for the lease
// arrives, each next one on the first tick a third of the TTL after the
// last answer, and answers every keepalive that waits for the lease when an
// answer comes, in a burst. A keepalive that arrives while the proxy's own
// is on its way upstream gets that answer: a renewal the server made before
// the keepalive was sent. While the link to etcd is stalled the proxy says
// nothing; once it is back, an answer the stall held comes first (a
// renewal the server made before the stall), and a lease that expired
// meanwhile is answered with a TTL of -1. Unary calls go straight to the fake etcd, taking the
// upstream round trip.
type proxyFake struct {
	*fakeBackend
	up time.Duration // round trip between the proxy and etcd

	mu      sync.Mutex
	loops   map[clientv3.LeaseID]*proxyLoop
	stall   bool
	healed  chan struct{} // closed when a stall ends
	hedges  int           // keepalives asked to go another way
	cutNext bool          // stall the link as soon as the server made its next renewal
	// early makes every early-th renewal of a lease go a third of the TTL
	// after the last answer exactly, not on the next tick: the real
	// proxy's lessor tick is a 500 ms sleep after each round, so it drifts
	// against the answers, and a round that ran late puts a tick right
	// after the earliest time (1 s and 1.5 s gaps at a TTL of 3 s, the
	// shorter rare).
	early int
	// late makes the proxy renew every lease a third of the TTL after its
	// last answer exactly, and every late-th renewal a tick later: the
	// real proxy's rounds run so fast against the round trip to etcd that
	// the tick after the earliest time is due at once, and only a round
	// trip slower than usual waits for the tick after it (1 s gaps at a
	// TTL of 3 s, and now and then 1.5 s, against etcd 3.5 on loopback).
	late   int
	rounds int
	// twice makes the proxy renew each lease a second time one tick after
	// its first renewal, as the real one does when etcd answers the first
	// later than its lessor's next tick (under the load of many new
	// leases): two answers a tick and its round trip apart at the lease's
	// start.
	twice bool
	// direct makes the path answer every keepalive at once, as a member
	// does, until it is cleared: a keeper that learned such a path must
	// learn the proxy's schedule when it comes in (a client whose
	// balancer moved to a proxy, say).
	direct bool
	// newestFirst makes the proxy hand an answer to the keepalives
	// waiting for it newest first: a keepalive given up and one sent
	// after it, on two streams, are answered by one renewal, and either
	// reply may reach the keeper first.
	newestFirst bool
	sent        int // keepalives the proxy got
	renewed     int // keepalives the proxy sent upstream
	closed      bool
}

// proxyLoop is the proxy's keepalive of one lease and the keepalives
// waiting for its answer.
type proxyLoop struct {
	waiting  []*proxyCall
	next     *time.Timer
	renewals int // upstream renewals of the lease so far
}

type proxyCall struct {
	rep      replier
	canceled bool
}

// proxyTick is the proxy's lessor tick.
const proxyTick = lessorTick

func newProxyFake(up time.Duration) *proxyFake {
	f := newFake()
	f.latency = up
	p := &proxyFake{fakeBackend: f, up: up, loops: map[clientv3.LeaseID]*proxyLoop{}, healed: make(chan struct{})}
	close(p.healed)
	return p
}

// nextTick returns the first tick of the proxy's lessor at or after t.
func nextTick(t time.Time) time.Time {
	if rem := t.UnixNano() % int64(proxyTick); rem != 0 {
		t = t.Add(proxyTick - time.Duration(rem))
	}
	return t
}

func (p *proxyFake) keepAliveAsync(id clientv3.LeaseID, hedge bool, rep replier) canceler {
	c := &proxyCall{rep: rep}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.sent++
	if hedge {
		p.hedges++
	}
	if p.closed {
		go rep.reply(0, context.Canceled)
		return cancelFunc(func() {})
	}
	if p.direct {
		return p.fakeBackend.keepAliveAsync(id, hedge, rep)
	}
	l := p.loops[id]
	if l == nil {
		l = &proxyLoop{}
		p.loops[id] = l
		p.scheduleLocked(id, l, nextTick(time.Now()))
	}
	l.waiting = append(l.waiting, c)
	return cancelFunc(func() {
		p.mu.Lock()
		defer p.mu.Unlock()
		c.canceled = true
	})
}

// scheduleLocked makes the proxy renew lease id upstream at at.
func (p *proxyFake) scheduleLocked(id clientv3.LeaseID, l *proxyLoop, at time.Time) {
	l.next = time.AfterFunc(time.Until(at), func() { p.renew(id, l) })
}

// renew sends the proxy's own keepalive for id upstream: the server resets
// the lease half a round trip later, and the answer comes back after the
// whole one, for every keepalive that arrived by then.
func (p *proxyFake) renew(id clientv3.LeaseID, l *proxyLoop) {
	p.mu.Lock()
	healed, up := p.healed, p.up
	p.renewed++
	p.mu.Unlock()
	<-healed
	time.Sleep(up / 2)
	f := p.fakeBackend
	f.mu.Lock()
	f.expireLocked(time.Now())
	ttl := int64(-1)
	if fl, ok := f.leases[id]; ok {
		fl.expires = time.Now().Add(time.Duration(fl.ttl) * time.Second)
		ttl = fl.ttl
	}
	f.mu.Unlock()
	p.mu.Lock()
	if p.cutNext {
		p.cutNext = false
		p.mu.Unlock()
		p.setUpstreamStalled(true)
		p.mu.Lock()
	}
	p.mu.Unlock()
	time.Sleep(up - up/2)
	// A stall that began meanwhile holds the answer too: it reaches the
	// proxy once the link is back, carrying a renewal made before.
	p.mu.Lock()
	healed = p.healed
	p.mu.Unlock()
	<-healed

	p.mu.Lock()
	waiting := l.waiting
	l.waiting = nil
	if p.closed {
		p.mu.Unlock()
		return
	}
	if ttl > 0 {
		at := time.Now().Add(time.Duration(ttl) * time.Second / 3)
		switch p.rounds++; {
		case p.late > 0:
			if p.rounds%p.late == 0 {
				at = at.Add(proxyTick)
			}
		case p.early == 0 || p.rounds%p.early != 0:
			at = nextTick(at)
		}
		if l.renewals++; p.twice && l.renewals == 1 {
			at = time.Now().Add(proxyTick + 20*time.Millisecond)
		}
		p.scheduleLocked(id, l, at)
	} else {
		delete(p.loops, id) // the proxy's lessor lets an expired lease go
	}
	newestFirst := p.newestFirst
	p.mu.Unlock()
	if newestFirst {
		slices.Reverse(waiting)
	}
	for _, c := range waiting {
		if ttl <= 0 {
			// As the real backend says it (renewals.go).
			c.rep.reply(0, rpctypes.ErrLeaseNotFound)
		} else {
			c.rep.reply(ttl, nil)
		}
	}
}

// setUpstreamStalled stalls or heals the link between the proxy and etcd.
func (p *proxyFake) setUpstreamStalled(stall bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stall == stall {
		return
	}
	p.stall = stall
	if stall {
		p.healed = make(chan struct{})
	} else {
		close(p.healed)
	}
	p.setStalled(stall)
}

// counts returns the keepalives the proxy got, how many of them were
// hedges, and the keepalives it sent upstream.
func (p *proxyFake) counts() (sent, hedges, renewed int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.sent, p.hedges, p.renewed
}

// expiry returns when the server expires lease id, and false if it holds
// no such lease.
func (p *proxyFake) expiry(id clientv3.LeaseID) (time.Time, bool) {
	f := p.fakeBackend
	f.mu.Lock()
	defer f.mu.Unlock()
	f.expireLocked(time.Now())
	l, ok := f.leases[id]
	if !ok {
		return time.Time{}, false
	}
	return l.expires, true
}

// close stops the proxy's timers; the test's keepers must be closed.
func (p *proxyFake) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = true
	for id, l := range p.loops {
		l.next.Stop()
		for _, c := range l.waiting {
			go c.rep.reply(0, context.Canceled)
		}
		delete(p.loops, id)
	}
	if p.stall {
		p.stall = false
		close(p.healed)
	}
}
