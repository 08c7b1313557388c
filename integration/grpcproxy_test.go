package integration

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/leasekeeper/leasekeeper/internal/test/testbed"
	"github.com/leasekeeper/leasekeeper/statemachine"
)

// The grpc-proxy tier: the keepers reach one etcd member through etcd's own
// gRPC proxy (`etcd grpc-proxy start`, from the same binary), which answers
// their keepalives from a lease keepalive of its own, on its own schedule
// (a third of the TTL after its last answer, on a 500 ms tick), in bursts.
// The proxy reaches the member through the member's fault proxy, so a test
// can stall or slow the link between the gRPC proxy and etcd.

// proxyScenario is a scenario whose keepers sit behind a gRPC proxy.
type proxyScenario struct {
	*scenario
	gp *testbed.GRPCProxy
}

// newProxyScenario starts one member, a gRPC proxy in front of its fault
// proxy, and the two keepers on the gRPC proxy. setup, if set, runs on the
// member before the keepers start (a delay on the link, say).
func newProxyScenario(t *testing.T, name string, ttl time.Duration, setup func(*testbed.Member)) *proxyScenario {
	t.Helper()
	dir := t.TempDir()
	c, err := testbed.StartCluster(etcdBin, dir, 1)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	m := c.Members[0]
	gp, err := testbed.StartGRPCProxy(etcdBin, filepath.Join(dir, "grpc-proxy.log"), []string{m.Proxy.URL()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(gp.Kill)
	if setup != nil {
		setup(m)
	}
	s := newScenarioOn(t, name, ttl, []string{gp.URL}, c.DirectEndpoints())
	s.c = c
	// The gRPC proxy's process (its waiter, reapProcess, is ignored for
	// every scenario) and its connections through the member's fault
	// proxy outlive the keepers: they go with the test's cleanup.
	s.ignore = append(s.ignore,
		goleak.IgnoreAnyFunction("github.com/leasekeeper/leasekeeper/internal/test/testbed.(*Proxy).pipe"),
		goleak.IgnoreAnyFunction("github.com/leasekeeper/leasekeeper/internal/test/testbed.(*Proxy).pipe.func1"))
	return &proxyScenario{scenario: s, gp: gp}
}

// episodes counts, for every keeper, the times it left Healthy at or after
// since.
func (s *scenario) episodes(since time.Time) int {
	n := 0
	for _, sub := range s.subjects() {
		for _, tr := range sub.transitions() {
			if tr.From == statemachine.Healthy && !tr.At.Before(since) {
				n++
			}
		}
	}
	return n
}

// proxyPeriod is how long after one answer the gRPC proxy answers a
// keepalive at the latest: its own renewal runs a third of the TTL after
// its last answer, on a 500 ms tick.
func proxyPeriod(ttl time.Duration) time.Duration {
	return ttl/3 + 500*time.Millisecond
}

// TestGRPCProxySteady: behind a healthy proxy the keepers keep their
// lease and keys for 10 TTLs and never leave Healthy: the keeper learns
// the proxy's schedule at Start and sends each keepalive just before the
// proxy's answer (keeper/path.go).
func TestGRPCProxySteady(t *testing.T) {
	for _, ttl := range []time.Duration{3 * time.Second, 10 * time.Second} {
		t.Run(ttl.String(), func(t *testing.T) {
			s := newProxyScenario(t, fmt.Sprintf("grpc-proxy: steady 10×TTL (%v)", ttl), ttl, nil)
			s.flapsAllowed = true
			s.startFault()
			s.hold(10 * ttl)
			s.endFault()
			n := s.episodes(s.faultStart())
			failed := s.failedOnItsOwn()
			r := s.finish(fmt.Sprintf("%d Degraded episodes in 10×TTL, both keepers", n))
			if failed {
				t.Errorf("failed in steady state behind the proxy: %s / %s", pathString(r.path), pathString(s.plain.path()))
			}
			if r.deleted || r.lease != "same" {
				t.Errorf("lease %s, keys deleted %v, in steady state behind the proxy", r.lease, r.deleted)
			}
			if n != 0 {
				t.Errorf("%d Degraded episodes in steady state behind the proxy, want 0", n)
				s.debug()
			}
		})
	}
}

func TestGRPCProxyUpstreamStall(t *testing.T) {
	s := newProxyScenario(t, "grpc-proxy: upstream stall 2×TTL", ttl1, nil)
	p := s.c.Members[0].Proxy
	s.startFault()
	p.Stall()
	s.hold(2 * s.ttl)
	p.Heal()
	s.endFault()
	healed := s.waitState(statemachine.Healthy, s.faultEnd(), 30*time.Second)
	s.hold(3 * s.ttl)
	after := 0
	if at, ok := s.firstAt(statemachine.Healthy, s.faultEnd()); ok {
		after = s.episodes(at.Add(time.Millisecond))
	}
	s.flapsAllowed = true
	r := s.finish(fmt.Sprintf("%d Degraded episodes in 3×TTL after healing", after))
	wantPath(t, r, statemachine.Healthy, statemachine.Failed, statemachine.Healthy)
	if !healed || r.heal > proxyPeriod(s.ttl) {
		t.Errorf("healthy %v after the link came back, want within one proxy renewal period (%v)", r.heal, proxyPeriod(s.ttl))
	}
	if !r.deleted {
		t.Errorf("the server kept the keys through a %v stall with ttl %v", 2*s.ttl, s.ttl)
	}
	if after != 0 {
		t.Errorf("%d Degraded episodes in 3×TTL after healing, want 0", after)
		s.debug()
	}
}

func TestGRPCProxyRestart(t *testing.T) {
	s := newProxyScenario(t, "grpc-proxy: proxy restarted", ttl1, nil)
	s.startFault()
	if err := s.gp.Restart(); err != nil {
		t.Fatal(err)
	}
	s.endFault()
	s.hold(3 * s.ttl)
	r := s.finish("killed and started again on its address")
	if r.lease != "same" {
		t.Errorf("lease after a proxy restart: %s, want same", r.lease)
	}
	if s.failedOnItsOwn() {
		t.Errorf("path %s: failed across a proxy restart", pathString(r.path))
	}
}

// TestGRPCProxySlowUpstream stalls, six times at phases spread over the
// renewal cycle, the link between the gRPC proxy and etcd, whose round trip
// is about 0.5 s: each time the server deletes the keys, and the keeper
// must be Failed when it does.
func TestGRPCProxySlowUpstream(t *testing.T) {
	const rtt = 500 * time.Millisecond
	s := newProxyScenario(t, "grpc-proxy: upstream RTT 0.5 s, 6 stalls of 2×TTL", ttl1, func(m *testbed.Member) {
		m.Proxy.Delay(rtt / 2)
	})
	p := s.c.Members[0].Proxy
	var margins []time.Duration
	for i := range 6 {
		// Wait out a fraction of the proxy's renewal period, from the
		// keeper's last renewal, so the stalls start at varied phases.
		s.waitRenewal(s.subject)
		s.hold(proxyPeriod(s.ttl) * time.Duration(i) / 6)
		// Over this slow a leg a keeper may leave Healthy without a
		// fault (TestProxySteady's note): it is Failed before the
		// deletion if it is Failed when the keys go, whenever it failed.
		for j, sub := range s.subjects() {
			if st := sub.k.State(); st != statemachine.Healthy {
				t.Logf("stall %d: keeper %d %v when the stall begins", i+1, j, st)
			}
		}
		s.startFault()
		p.Stall()
		s.hold(2 * s.ttl)
		p.Heal()
		s.endFault()
		m, late := s.failedBeforeDeletion(s.faults[len(s.faults)-1])
		if len(late) > 0 {
			t.Errorf("stall %d: the server deleted the keys of a keeper not failed: %s", i+1, strings.Join(late, "; "))
			s.debug()
		}
		margins = append(margins, m)
		// Both keepers, not only the one with a short reconnect, heal.
		for j, sub := range s.subjects() {
			if !sub.waitState(statemachine.Healthy, s.faultEnd(), 30*time.Second) {
				t.Fatalf("stall %d: keeper %d not healthy again within 30s", i+1, j)
			}
		}
		s.forgetDeletions()
	}
	s.finish(fmt.Sprintf("failed before expiry by %s", durs(margins)))
}

// TestSlowDirectLink runs the keepers straight to the member over a link
// with a round trip of TTL/6: Start works (newScenarioOn fails the test
// otherwise), the keepers stay Healthy for 6 TTLs (the renew timeout is
// learned from the replies, not the configured TTL/10), and a stall makes
// them fail before the server deletes the keys (finish checks it).
func TestSlowDirectLink(t *testing.T) {
	dir := t.TempDir()
	c, err := testbed.StartCluster(etcdBin, dir, 1)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	p := c.Members[0].Proxy
	p.Delay(ttl1 / 12)
	s := newScenarioOn(t, "direct link, RTT TTL/6", ttl1, c.Endpoints(), c.DirectEndpoints())
	s.c = c
	// The fault proxy's delayed writes outlive the keepers by a delay.
	s.ignore = append(s.ignore, goleak.IgnoreAnyFunction("github.com/leasekeeper/leasekeeper/internal/test/testbed.(*Proxy).pipe.func1"))
	s.hold(6 * s.ttl)
	steady := s.episodes(time.Time{})
	s.startFault()
	p.Stall()
	s.hold(2 * s.ttl)
	p.Heal()
	s.endFault()
	r := s.finish(fmt.Sprintf("Start worked; %d Degraded episodes in 6×TTL before the stall", steady))
	if !r.deleted {
		t.Errorf("the server kept the keys through a %v stall", 2*s.ttl)
	}
	if steady != 0 {
		t.Errorf("%d Degraded episodes in 6×TTL over a link of RTT TTL/6, want 0", steady)
		s.debug()
	}
}

// waitRenewal waits until sub's keeper renewed its lease: its deadline
// moved.
func (s *scenario) waitRenewal(sub *subject) {
	d := sub.k.Deadline()
	for end := time.Now().Add(2 * s.ttl); time.Now().Before(end); time.Sleep(5 * time.Millisecond) {
		if nd := sub.k.Deadline(); !nd.Equal(d) && !nd.IsZero() {
			return
		}
	}
	s.t.Errorf("%s: no renewal within 2×TTL", s.name)
}

// failedBeforeDeletion checks, for every keeper, that it was Failed when
// the first deletion of its keys after sp began came, and returns how long
// before the deletion the keeper with a short reconnect had entered that
// Failed state (negative: it was not Failed), and a line for every keeper
// that was not. A keeper whose keys were not deleted has nothing to check.
func (s *scenario) failedBeforeDeletion(sp span) (time.Duration, []string) {
	var late []string
	margin := time.Duration(-1)
	for end := time.Now().Add(s.ttl); time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
		if _, deleted := s.deletionAfter(sp.start); deleted {
			break
		}
	}
	for i, sub := range s.subjects() {
		del, deleted := sub.deletionAfter(sp.start)
		if !deleted {
			continue
		}
		st, since := sub.stateAt(del)
		if st != statemachine.Failed {
			late = append(late, fmt.Sprintf("keeper %d: keys deleted +%v, %v since +%v", i,
				del.Sub(sp.start).Round(time.Millisecond), st, since.Sub(sp.start).Round(time.Millisecond)))
			continue
		}
		if sub == s.subject {
			margin = del.Sub(since)
		}
		s.t.Logf("keeper %d: failed %v before the server deleted its keys", i, del.Sub(since).Round(time.Millisecond))
	}
	return margin, late
}

// stateAt returns the state sub's keeper was in at at, and since when.
func (sub *subject) stateAt(at time.Time) (statemachine.State, time.Time) {
	sub.mu.Lock()
	defer sub.mu.Unlock()
	st, since := statemachine.Idle, time.Time{}
	for _, t := range sub.ts {
		if t.At.After(at) {
			break
		}
		st, since = t.To, t.At
	}
	return st, since
}

// deletionAfter returns the first deletion of sub's keys at or after since.
func (sub *subject) deletionAfter(since time.Time) (time.Time, bool) {
	sub.mu.Lock()
	defer sub.mu.Unlock()
	for _, d := range sub.deletions {
		if !d.Before(since) {
			return d, true
		}
	}
	return time.Time{}, false
}

// forgetDeletions makes finish ignore the deletions so far, which the test
// checked itself.
func (s *scenario) forgetDeletions() {
	for _, sub := range s.subjects() {
		sub.forgetDeletion()
	}
}
