package keeper

import (
	"fmt"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/leasekeeper/leasekeeper/statemachine"
)

// watchDeadline checks, every 10 ms of fake time until the returned func
// is called, that k's deadline D is no later than the server's expiry of
// its lease (and passed, if the server has no such lease any more); the
// func stops it and returns how many checks found D later.
func watchDeadline(p *proxyFake, k *Keeper) (stop func() int) {
	done, out := make(chan struct{}), make(chan int, 1)
	go func() {
		late := 0
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-done:
				out <- late
				return
			case <-tick.C:
			}
			d := k.Deadline()
			exp, ok := p.expiry(k.LeaseID())
			switch {
			case d.IsZero():
			case ok && d.After(exp):
				late++
			case !ok && d.After(time.Now()):
				late++ // alive by D, gone on the server
			}
		}
	}()
	return func() int {
		close(done)
		return <-out
	}
}

// closeProxyTest closes k and then p, and waits out the proxy's answers
// on their way, so that no goroutine of the bubble is left.
func closeProxyTest(t *testing.T, k *Keeper, p *proxyFake) {
	t.Helper()
	mustClose(t, k)
	p.close()
	time.Sleep(time.Second)
}

// newProxyTest returns a keeper of ttl behind p, and a recorder of its
// transitions.
func newProxyTest(t *testing.T, p *proxyFake, ttl time.Duration) (*Keeper, *recorder) {
	t.Helper()
	return newTest(t, p, func(c *Config) { c.TTL = ttl })
}

// startProxyTest starts a keeper of ttl behind p and waits until it is
// Healthy, with its deadline watched (watchDeadline): it returns the
// keeper, a recorder of its transitions, and the watch's stop.
func startProxyTest(t *testing.T, p *proxyFake, ttl time.Duration) (*Keeper, *recorder, func() int) {
	t.Helper()
	k, rec := newProxyTest(t, p, ttl)
	late := watchDeadline(p, k)
	startHealthy(t, k, "svc/a")
	return k, rec, late
}

// episodes counts the times the keeper left Healthy after since.
func episodes(rec *recorder, since time.Time) int {
	n := 0
	for _, t := range rec.transitions() {
		if t.From == statemachine.Healthy && t.At.After(since) {
			n++
		}
	}
	return n
}

// TestProxySteady: behind a gRPC proxy, whose answers come on its own
// schedule, the keeper learns the schedule within a few renewals and then
// stays Healthy, sends no hedge and no more keepalives than the proxy
// renews the lease upstream; and its D never passes the server's expiry,
// also when the link between the proxy and etcd is slow and keepalives are
// answered by renewals made before they were sent. (With a round trip of
// TTL/6 between the proxy and etcd, at a TTL of 3s, the server itself has
// the lease renewed only a second before it would expire: the keeper may
// be Degraded there, never late.)
func TestProxySteady(t *testing.T) {
	for _, tc := range []struct {
		ttl, up time.Duration
		steady  bool // 0 episodes, no more keepalives than renewals
	}{
		{3 * time.Second, time.Millisecond, true},
		{3 * time.Second, 500 * time.Millisecond, false},
		{5 * time.Second, time.Millisecond, true},
		{10 * time.Second, time.Millisecond, true},
		{10 * time.Second, 500 * time.Millisecond, true},
		{30 * time.Second, time.Millisecond, true},
		{60 * time.Second, time.Millisecond, true},
	} {
		t.Run(fmt.Sprintf("ttl %v upstream %v", tc.ttl, tc.up), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				p := newProxyFake(tc.up)
				k, rec, late := startProxyTest(t, p, tc.ttl)
				time.Sleep(3 * tc.ttl)
				learned := time.Now()
				sent0, hedges0, renewed0 := p.counts()
				time.Sleep(10 * tc.ttl)
				synctest.Wait()
				sent, hedges, renewed := p.counts()
				assert.Zero(t, late(), "checks that found D later than the server's expiry")
				assert.Equal(t, hedges0, hedges, "hedges sent through the proxy once learned")
				if tc.steady {
					assert.Zero(t, episodes(rec, learned), "episodes in 10 TTLs once learned: %v", rec.path())
					assert.Equal(t, statemachine.Healthy, k.State())
					assert.LessOrEqual(t, sent-sent0, renewed-renewed0+1, "keepalives sent, against the proxy's own renewals (one may straddle the window's edge)")
				}
				closeProxyTest(t, k, p)
			})
		})
	}
}

// TestProxyAnswersEarlyAtTimes: the proxy's own renewal goes a whole tick
// sooner now and then (its lessor's tick drifts against its answers), so
// its answers come a third of the TTL apart among many half a tick longer.
// The keeper's keepalive must be there for the early answer too: a missed
// answer leaves it waiting a whole period more, past the degrade
// threshold.
func TestProxyAnswersEarlyAtTimes(t *testing.T) {
	steadyDespite(t, func(p *proxyFake) { p.early = 40 }, 3, 60)
}

// TestProxyAnswersLateAtTimes: the proxy answers a third of the TTL after
// its last answer for longer than the keeper takes to trust the gaps it saw,
// then once a tick later: against etcd 3.5 its rounds can land just before
// the earliest time for long runs. The keeper must not take the longest gap
// it saw for the longest the path can show, and go Degraded when the answer
// comes half a tick after it.
func TestProxyAnswersLateAtTimes(t *testing.T) {
	steadyDespite(t, func(p *proxyFake) { p.late = 40 }, 3, 60)
}

// TestProxyAnswersTwiceAtStart: the proxy answers a new lease twice half a
// second apart (it sent its first renewal upstream again while etcd was slow
// to answer); the keeper must not take that for the path's period, and
// stays Healthy from Start on.
func TestProxyAnswersTwiceAtStart(t *testing.T) {
	steadyDespite(t, func(p *proxyFake) { p.twice = true }, 0, 30)
}

// steadyDespite runs a keeper behind a proxy fake that quirk set up, at TTLs
// of 3 s and 10 s, and checks that in the span TTLs after the first learn
// its D never passes the server's expiry and it never leaves Healthy.
func steadyDespite(t *testing.T, quirk func(*proxyFake), learn, span time.Duration) {
	for _, ttl := range []time.Duration{3 * time.Second, 10 * time.Second} {
		t.Run(fmt.Sprintf("ttl %v", ttl), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				p := newProxyFake(time.Millisecond)
				quirk(p)
				k, rec, late := startProxyTest(t, p, ttl)
				time.Sleep(learn * ttl)
				from := time.Now()
				time.Sleep(span * ttl)
				synctest.Wait()
				assert.Zero(t, late(), "checks that found D later than the server's expiry")
				assert.Zero(t, episodes(rec, from), "episodes in %d TTLs after the first %d: %v", span, learn, rec.path())
				closeProxyTest(t, k, p)
			})
		})
	}
}

// TestProxyUpstreamStall: when the link between the proxy and etcd stalls
// for two TTLs the proxy goes silent; the keeper is Failed before the
// server's expiry, and Healthy again within one proxy period of the link
// coming back, on a new lease (the proxy answers the old one with TTL -1).
func TestProxyUpstreamStall(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const ttl = 3 * time.Second
		p := newProxyFake(time.Millisecond)
		k, rec, late := startProxyTest(t, p, ttl)
		time.Sleep(3 * ttl)
		old := k.LeaseID()
		expiry, ok := p.expiry(old)
		require.True(t, ok)
		stallAt := time.Now()
		p.setUpstreamStalled(true)
		time.Sleep(2 * ttl)
		failedAt := rec.at(statemachine.Failed)
		require.False(t, failedAt.IsZero(), "not failed during a %v stall: %v", 2*ttl, rec.path())
		assert.True(t, failedAt.Before(expiry), "failed at %v, the server's expiry at %v", failedAt.Sub(stallAt), expiry.Sub(stallAt))
		healAt := time.Now()
		p.setUpstreamStalled(false)
		time.Sleep(ttl/3 + proxyTick)
		synctest.Wait()
		assert.Equal(t, statemachine.Healthy, k.State(), "state one proxy period after the link came back: %v", rec.path())
		assert.NotEqual(t, old, k.LeaseID(), "the lease the server expired is still held")
		v, ok := p.get("svc/a")
		assert.True(t, ok && v.lease == k.LeaseID(), "key after healing: %+v, %v", v, ok)
		time.Sleep(3 * ttl)
		assert.Zero(t, episodes(rec, healAt.Add(ttl/3+proxyTick)), "episodes after healing: %v", rec.path())
		assert.Zero(t, late(), "checks that found D later than the server's expiry")
		closeProxyTest(t, k, p)
	})
}

// TestProxyUpstreamSlowsDown: when the link between the proxy and etcd
// becomes slow after Start, the keeper's probes of the path (a time to
// live, which goes all the way to etcd, after the answer the slower leg
// delayed) raise b, the
// bound on a leg that D allows for, and D never passes the server's
// expiry.
func TestProxyUpstreamSlowsDown(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const ttl = 3 * time.Second
		p := newProxyFake(time.Millisecond)
		k, _, late := startProxyTest(t, p, ttl)
		time.Sleep(5 * ttl)
		p.mu.Lock()
		p.up = 400 * time.Millisecond
		p.mu.Unlock()
		p.setLatency(400 * time.Millisecond)
		time.Sleep(20 * ttl)
		synctest.Wait()
		assert.Zero(t, late(), "checks that found D later than the server's expiry")
		assert.Positive(t, p.count("ttl"), "probes of the path")
		assert.GreaterOrEqual(t, k.hub.calls.leg(), 400*time.Millisecond, "b once the upstream is slow")
		closeProxyTest(t, k, p)
	})
}

// cutTTL is the TTL of newCutTest's keeper.
const cutTTL = 3 * time.Second

// newCutTest starts a keeper of cutTTL behind a proxy 100 ms from etcd,
// with its deadline watched (watchDeadline), lets it learn the path for
// three TTLs, and has the proxy's link to etcd stall just after the
// server's next renewal, holding its answer.
func newCutTest(t *testing.T) (*proxyFake, *Keeper, *recorder, func() int) {
	t.Helper()
	p := newProxyFake(100 * time.Millisecond)
	k, rec, late := startProxyTest(t, p, cutTTL)
	time.Sleep(3 * cutTTL)
	p.mu.Lock()
	p.cutNext = true
	p.mu.Unlock()
	return p, k, rec, late
}

// TestProxyStaleAnswerAfterStall: the link between the proxy and etcd
// stalls just after the server renewed the lease for the proxy, so the
// answer is held in the link; the keepalives the keeper sends meanwhile
// are answered, once the link is back, by that renewal, made before they
// were sent. D must not count from their send times: the keeper is Failed
// before the server's expiry, and D never passes it.
func TestProxyStaleAnswerAfterStall(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const ttl = cutTTL
		p, k, rec, late := newCutTest(t)
		time.Sleep(ttl)
		id := k.LeaseID()
		expiry, _ := p.expiry(id)
		time.Sleep(ttl)
		p.setUpstreamStalled(false)
		time.Sleep(2 * ttl)
		synctest.Wait()
		assert.Zero(t, late(), "checks that found D later than the server's expiry")
		failedAt := rec.at(statemachine.Failed)
		if assert.False(t, failedAt.IsZero(), "never failed: %v", rec.path()) {
			assert.True(t, failedAt.Before(expiry), "failed at %v, after the server's expiry at %v", failedAt, expiry)
		}
		assert.Equal(t, statemachine.Healthy, k.State())
		closeProxyTest(t, k, p)
	})
}

// TestProxyShortStallBeforeDeadline: the link between the proxy and etcd
// stalls, for less than the time D leaves, just after the server renewed
// the lease for the proxy. The answer the stall held carries that renewal
// and answers the keepalive the keeper sent during the stall: it comes
// later than the proxy's schedule allows, so D counts from the path's
// previous answer, not from that keepalive's send time, and never passes
// the server's expiry. (The proxy renews a third of the TTL after the late
// answer, so the server may expire the lease meanwhile: the keeper is
// Healthy again in the end, on the lease or a new one.)
func TestProxyShortStallBeforeDeadline(t *testing.T) {
	for _, stall := range []time.Duration{500 * time.Millisecond, time.Second, 1500 * time.Millisecond} {
		t.Run(stall.String(), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				const ttl = cutTTL
				p, k, rec, late := newCutTest(t)
				// The cut comes with the proxy's next renewal, within a
				// proxy period.
				time.Sleep(ttl/3 + proxyTick + stall)
				p.setUpstreamStalled(false)
				time.Sleep(3 * ttl)
				synctest.Wait()
				assert.Zero(t, late(), "checks that found D later than the server's expiry")
				assert.Equal(t, statemachine.Healthy, k.State(), "%v", rec.path())
				closeProxyTest(t, k, p)
			})
		})
	}
}

// silentStream is a path through p whose stream in use goes silent once
// silence is called, as a frozen member's or a cut link's does: a
// keepalive sent on it is never answered, until one asks to go another way
// (a hedge), which opens a new stream, answered as p answers.
type silentStream struct {
	*proxyFake
	mu      sync.Mutex
	silent  bool
	dropped int // keepalives sent on the silent stream
}

func (s *silentStream) keepAliveAsync(id clientv3.LeaseID, hedge bool, rep replier) canceler {
	s.mu.Lock()
	if hedge {
		s.silent = false
	}
	silent := s.silent
	if silent {
		s.dropped++
	}
	s.mu.Unlock()
	if silent {
		return cancelFunc(func() {})
	}
	return s.proxyFake.keepAliveAsync(id, hedge, rep)
}

func (s *silentStream) silence() (dropped int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.silent = true
	return s.dropped
}

// TestHeldPathStreamGoesSilent: a keeper renewing on a holding path's
// schedule sends one keepalive at a time on the stream in use. When that
// stream goes silent, the attempt after the one that went unanswered
// leaves it for a new one, which answers: the keeper is Healthy again
// within a TTL, and never waits on the silent stream attempt after
// attempt. Without that, it sat Failed for good with the lease alive.
func TestHeldPathStreamGoesSilent(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const ttl = 3 * time.Second
		p := newProxyFake(time.Millisecond)
		s := &silentStream{proxyFake: p}
		k, rec := newTest(t, s, func(c *Config) { c.TTL = ttl })
		late := watchDeadline(p, k)
		startHealthy(t, k, "svc/a")
		time.Sleep(4 * ttl)
		k.loop.mu.Lock()
		held := k.loop.path.held()
		k.loop.mu.Unlock()
		require.True(t, held, "held mode behind the proxy")
		for range 3 {
			silentAt := time.Now()
			s.silence()
			time.Sleep(2 * ttl)
			synctest.Wait()
			assert.Equal(t, statemachine.Healthy, k.State(), "state 2×TTL after the stream went silent: %v", rec.path())
			assert.True(t, k.Deadline().After(silentAt.Add(ttl)), "D %v after the stream went silent: not renewed since", k.Deadline().Sub(silentAt))
		}
		assert.Positive(t, s.silence(), "keepalives sent on a silent stream")
		assert.Zero(t, late(), "checks that found D later than the server's expiry")
		s.mu.Lock()
		s.silent = false
		s.mu.Unlock()
		closeProxyTest(t, k, p)
	})
}

// TestProxySteadyCostsNoProbes: behind a proxy whose answers keep their
// rhythm, the keeper asks etcd nothing beyond the keepalives the proxy
// answers from its own renewals once it has learned the path: a probe (a
// time to live, which goes all the way to etcd) follows only an answer
// later than the path had shown.
func TestProxySteadyCostsNoProbes(t *testing.T) {
	for _, ttl := range []time.Duration{3 * time.Second, 10 * time.Second} {
		t.Run(ttl.String(), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				p := newProxyFake(time.Millisecond)
				k, rec, late := startProxyTest(t, p, ttl)
				time.Sleep(10 * ttl)
				learned := p.count("ttl")
				time.Sleep(60 * ttl)
				synctest.Wait()
				t.Logf("probes while learning %d, after %d", learned, p.count("ttl")-learned)
				assert.Zero(t, p.count("ttl")-learned, "probes after the keeper learned the path")
				assert.Equal(t, []statemachine.State{statemachine.Idle, statemachine.Healthy}, rec.path())
				assert.Zero(t, late(), "checks that found D later than the server's expiry")
				closeProxyTest(t, k, p)
			})
		})
	}
}

// TestProxyAfterDirectPath: a keeper that learned a path answering at once
// (it renews on the grid, its attempts bounded by the replies' latency)
// finds that the path now holds keepalives, as when its client's balancer
// moves to a gRPC proxy. Its keepalives wait past its attempts' bound, and
// each answer comes as a burst to the keepalive given up and the one sent
// after it, on two streams, in either order. The keeper must learn the
// proxy's schedule from that within a few periods, whichever reply it
// takes in first, and then stay Healthy with D never past the server's
// expiry.
func TestProxyAfterDirectPath(t *testing.T) {
	for _, newestFirst := range []bool{false, true} {
		for _, ttl := range []time.Duration{3 * time.Second, 10 * time.Second} {
			t.Run(fmt.Sprintf("ttl %v newest first %v", ttl, newestFirst), func(t *testing.T) {
				synctest.Test(t, func(t *testing.T) {
					p := newProxyFake(time.Millisecond)
					p.direct, p.newestFirst = true, newestFirst
					k, rec, late := startProxyTest(t, p, ttl)
					time.Sleep(3 * ttl)
					require.False(t, k.loop.path.held(), "held mode on a path that answers at once")
					p.mu.Lock()
					p.direct = false
					p.mu.Unlock()
					time.Sleep(3 * ttl)
					from := time.Now()
					time.Sleep(10 * ttl)
					synctest.Wait()
					assert.Zero(t, late(), "checks that found D later than the server's expiry")
					assert.Zero(t, episodes(rec, from), "episodes in 10 TTLs, 3 TTLs after the path began to hold keepalives: %v", rec.path())
					closeProxyTest(t, k, p)
				})
			})
		}
	}
}

// TestProxyQuorumBackAfterLongCall: a unary call that waited out a frozen
// member made b, the bound on a leg that D allows for, long (1.8 s at a
// TTL of 3 s); then the cluster loses quorum for two TTLs, so the proxy
// goes silent and the keeper is Failed, and the lease survives (no leader
// expires it, and the new one gives it a full TTL). Once the cluster is
// whole, each keepalive the proxy answers holds a D too near to report
// Healthy, as the proxy answers a period after it was sent and D allows
// for b; the server's time to live proves a later one. The keeper must be
// Healthy on the lease within a proxy period and a second of the cluster
// being whole, not only after its probes brought b down.
func TestProxyQuorumBackAfterLongCall(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const ttl = 3 * time.Second
		p := newProxyFake(time.Millisecond)
		k, rec, late := startProxyTest(t, p, ttl)
		time.Sleep(4 * ttl)
		old := k.LeaseID()
		k.hub.calls.take(time.Now().Add(-1800*time.Millisecond), true)
		p.fakeBackend.mu.Lock()
		for _, l := range p.leases {
			l.expires = time.Now().Add(time.Hour) // no leader expires it
		}
		p.fakeBackend.mu.Unlock()
		p.setUpstreamStalled(true)
		time.Sleep(2 * ttl)
		require.Equal(t, statemachine.Failed, k.State(), "after losing quorum for 2×TTL: %v", rec.path())
		p.restart() // the new leader gives every lease a full TTL
		wholeAt := time.Now()
		p.setUpstreamStalled(false)
		time.Sleep(ttl/3 + proxyTick + time.Second)
		assert.Equal(t, statemachine.Healthy, k.State(), "state a proxy period and a second after the cluster is whole: %v", rec.path())
		trs := rec.transitions()
		assert.True(t, trs[len(trs)-1].At.After(wholeAt), "healthy %v after the cluster was whole", trs[len(trs)-1].At.Sub(wholeAt))
		assert.Equal(t, old, k.LeaseID(), "the lease the server kept")
		assert.Zero(t, late(), "checks that found D later than the server's expiry")
		closeProxyTest(t, k, p)
	})
}
