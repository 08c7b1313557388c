package keeper

import (
	"sync"
	"sync/atomic"
	"time"
)

// rttEstimator estimates how long replies of one kind take on one path, as
// TCP's retransmission timer does (RFC 6298): a smoothed latency and its
// mean deviation, updated per sample, and one bound, srtt + 4×rttvar, above
// nearly every reply the path gives. Samples come only from replies that
// answer one known request (Karn's rule): never from a request sent again,
// nor from one given up.
type rttEstimator struct {
	srtt, rttvar time.Duration
	n            uint32 // samples taken, saturating
}

// sample takes in one reply that took r.
func (e *rttEstimator) sample(r time.Duration) {
	r = max(r, 0)
	if e.n == 0 {
		e.srtt, e.rttvar = r, r/2
	} else {
		d := e.srtt - r
		if d < 0 {
			d = -d
		}
		e.rttvar += (d - e.rttvar) / 4
		e.srtt += (r - e.srtt) / 8
	}
	if e.n < ^uint32(0) {
		e.n++
	}
}

// bound is srtt + 4×rttvar: how long a reply may take before it is late.
// It is zero before the first sample: the caller's floor applies (RFC
// 6298's clock granularity G is the callers' floors too).
func (e *rttEstimator) bound() time.Duration {
	if e.n == 0 {
		return 0
	}
	return e.srtt + 4*e.rttvar
}

// callTiming is the estimator of the unary calls (grant, put, time to
// live) of one client, which the keepers of its hub share: those calls go
// all the way to etcd on every path, through a gRPC proxy too, so their
// round trip bounds the legs of the path, the proxy's own to etcd
// included. mu guards est and peak.
type callTiming struct {
	mu   sync.Mutex
	est  rttEstimator
	peak time.Duration // the longest recent round trip: follows a longer one at once, a shorter one by an eighth

	// What leg and timeout return, kept by take: every renewal of every
	// keeper of the hub reads them, and only calls write them.
	legNow, timeoutNow atomic.Int64
}

// sample takes in a call sent at sent that returned now.
func (c *callTiming) sample(sent time.Time) { c.take(sent, true) }

// take takes in a call sent at sent that returned now; leg says its round
// trip is the path's (a call that waited out an outage only bounds how
// long calls may take).
func (c *callTiming) take(sent time.Time, leg bool) {
	r := time.Since(sent)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.est.sample(r)
	c.timeoutNow.Store(int64(c.est.bound()))
	if !leg {
		return
	}
	if r > c.peak {
		c.peak = r
	} else {
		c.peak += (r - c.peak) / 8
	}
	c.legNow.Store(int64(c.peak))
}

// initialCallTimeout bounds a unary call before any returned, RFC 6298's
// initial retransmission timeout: nothing is known of the path yet, and a
// far link takes a few round trips to connect.
const initialCallTimeout = time.Second

// timeout is how long a unary call may take before it is late: the
// estimator's bound, or initialCallTimeout before the first call returned.
func (c *callTiming) timeout() time.Duration {
	if t := c.timeoutNow.Load(); t != 0 {
		return time.Duration(t)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.est.n == 0 {
		return initialCallTimeout
	}
	return c.est.bound()
}

// leg is a bound on the one-way time of any leg of the path, b: a whole
// round trip, the longest of the recent ones, so that a path that just
// became slower counts at once. Zero before the first call returned.
func (c *callTiming) leg() time.Duration { return time.Duration(c.legNow.Load()) }
