package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/leasekeeper/leasekeeper/internal/test/testbed"
	"github.com/leasekeeper/leasekeeper/statemachine"
)

// fault is one kind of fault: inject breaks something for d and heals
// it, and returns what it did, for the log.
type fault struct {
	name   string
	inject func(s *soak, d time.Duration) (string, error)
}

var faults = []fault{
	{"stall a member", func(s *soak, d time.Duration) (string, error) {
		i := s.rng.IntN(len(s.c.Members))
		p := s.c.Members[i].Proxy
		p.Stall()
		time.Sleep(d)
		p.Heal()
		return fmt.Sprintf("m%d stalled for %v", i, d), nil
	}},
	{"freeze a member", func(s *soak, d time.Duration) (string, error) {
		i := s.rng.IntN(len(s.c.Members))
		s.c.Freeze(i)
		time.Sleep(d)
		s.c.Thaw(i)
		return fmt.Sprintf("m%d frozen for %v", i, d), nil
	}},
	{"kill and restart the leader", func(s *soak, d time.Duration) (string, error) {
		i, err := s.c.Leader(context.Background())
		if err != nil {
			return "", err
		}
		s.c.Kill(i)
		time.Sleep(d)
		return fmt.Sprintf("leader m%d killed for %v", i, d), s.c.Restart(i)
	}},
	{"drop quorum and bring it back", func(s *soak, d time.Duration) (string, error) {
		keep := s.rng.IntN(len(s.c.Members))
		var killed []int
		for i := range s.c.Members {
			if i != keep {
				s.c.Kill(i)
				killed = append(killed, i)
			}
		}
		time.Sleep(d)
		for _, i := range killed {
			if err := s.c.Restart(i); err != nil {
				return "", err
			}
		}
		return fmt.Sprintf("m%d alone for %v", keep, d), nil
	}},
	{"revoke a lease", func(s *soak, _ time.Duration) (string, error) {
		sub := s.subs[s.rng.IntN(len(s.subs))]
		id := sub.k.LeaseID()
		if id == 0 {
			return "keeper holds no lease", nil
		}
		s.chk.external(sub.rkey, id)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, err := s.obs.Revoke(ctx, id)
		return fmt.Sprintf("lease %x of keeper %d", int64(id), sub.i), err
	}},
	{"delete a key", func(s *soak, _ time.Duration) (string, error) {
		sub := s.subs[s.rng.IntN(len(s.subs))]
		key := sub.rkey
		if sub.xkey != "" && s.rng.IntN(2) == 0 {
			key = sub.xkey
		}
		s.chk.external(key, 0)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, err := s.obs.Delete(ctx, key)
		return key, err
	}},
	{"overwrite an exclusive key", func(s *soak, _ time.Duration) (string, error) {
		key := fmt.Sprintf("soak/x/%02d", s.rng.IntN(len(s.excl)))
		s.chk.external(key, 0)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		// On a lease of the soak's own, so that the key is free again
		// once it expires and a keeper takes it back.
		g, err := s.obs.Grant(ctx, int64(s.o.ttl/time.Second))
		if err != nil {
			return "", err
		}
		_, err = s.obs.Put(ctx, key, "the soak's", clientv3.WithLease(g.ID))
		return key, err
	}},
	{"stall a keeper's client", func(s *soak, d time.Duration) (string, error) {
		i := s.rng.IntN(len(s.cls))
		for _, p := range s.cls[i].proxies {
			p.Stall()
		}
		time.Sleep(d)
		for _, p := range s.cls[i].proxies {
			p.Heal()
		}
		return fmt.Sprintf("client %d stalled for %v", i, d), nil
	}},
}

// healWithin is how soon after the cluster is whole every keeper must be
// healthy again.
const healWithin = time.Second

// healWithinFor is healWithin for sub: behind the gRPC proxy, a keeper
// hears that etcd answers only when the proxy's own renewal of its lease
// comes back, which the proxy sends a third of the TTL after its last
// answer, on a 500 ms tick: that period more.
func healWithinFor(sub *subject, ttl time.Duration) time.Duration {
	if sub.proxied {
		return healWithin + ttl/3 + 500*time.Millisecond
	}
	return healWithin
}

// run injects faults for the duration, one at a time, each followed by
// the wait for the cluster to be whole and the keepers to heal, and then
// checks that no key is missing.
func (s *soak) run() error {
	if err := s.waitHealthy(time.Now(), 30*time.Second); err != nil {
		return fmt.Errorf("warm-up: %w", err)
	}
	time.Sleep(2 * s.o.ttl)
	s.usage = append(s.usage, measure())
	s.heapProfile("first.pprof")
	end := time.Now().Add(s.o.duration)
	for time.Now().Before(end) {
		f := s.nextFault()
		d := s.o.ttl/2 + time.Duration(s.rng.Int64N(int64(2*s.o.ttl)))
		pause := time.Second + time.Duration(s.rng.Int64N(int64(2*time.Second)))
		start := time.Now()
		what, err := f.inject(s, d)
		if err != nil {
			return fmt.Errorf("%s: %w", f.name, err)
		}
		s.faults[f.name]++
		whole, err := s.waitWhole()
		if err != nil {
			return fmt.Errorf("after %s: %w", f.name, err)
		}
		s.logf("%s: %s; whole %v after it began", f.name, what, whole.Sub(start).Round(time.Millisecond))
		s.measureHeal(f.name, start, whole)
		time.Sleep(pause)
		if len(s.usage) < 1000 {
			s.usage = append(s.usage, measure())
		}
	}
	if err := s.waitHealthy(time.Now(), 30*time.Second); err != nil {
		return err
	}
	// An exclusive key the soak overwrote last is on a lease of its own
	// until that expires; then a keeper takes it back.
	time.Sleep(s.o.ttl + time.Second)
	s.heapProfile("last.pprof")
	s.chk.final()
	return nil
}

// nextFault draws the next fault: every kind once per round, in an order
// the seed shuffles, so that a short run still injects each kind.
func (s *soak) nextFault() fault {
	if len(s.round) == 0 {
		s.round = s.rng.Perm(len(faults))
	}
	f := faults[s.round[0]]
	s.round = s.round[1:]
	return f
}

// waitWhole waits until every member is running and answers a
// linearizable read on its own, and returns when.
func (s *soak) waitWhole() (time.Time, error) {
	if err := testbed.WaitServing(s.c.DirectEndpoints(), time.Now().Add(time.Minute)); err != nil {
		return time.Time{}, err
	}
	return time.Now(), nil
}

// measureHeal records, for every keeper that left healthy since start,
// how long after whole it was healthy again, and a violation if that took
// more than healWithin.
func (s *soak) measureHeal(name string, start, whole time.Time) {
	deadline := whole.Add(10 * time.Second)
	for _, sub := range s.subs {
		left := false
		for {
			back, ok := sub.lastHealthy(start)
			left = left || ok || sub.k.State() != statemachine.Healthy
			if !left {
				break
			}
			if ok && sub.k.State() == statemachine.Healthy {
				heal := max(back.Sub(whole), 0)
				s.heals = append(s.heals, heal)
				if heal > healWithin/2 {
					s.logf("keeper %d healthy %v after the cluster was whole at %.3fs (%s); transitions %s", sub.i,
						heal.Round(time.Millisecond), whole.Sub(s.began).Seconds(), name, sub.history(s.began))
				}
				if heal > healWithinFor(sub, s.o.ttl) {
					s.chk.violate("healthy within 1s of the cluster whole", "keeper %d healthy %v after the cluster was whole (%s)",
						sub.i, heal.Round(time.Millisecond), name)
				}
				break
			}
			if time.Now().After(deadline) {
				s.chk.violate("healthy within 1s of the cluster whole", "keeper %d not healthy 10s after the cluster was whole (%s): %v, last error %v; transitions %s",
					sub.i, name, sub.k.State(), sub.k.Err(), sub.history(s.began))
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		s.chk.count("healthy within 1s of the cluster whole")
	}
}

// lastHealthy returns when the keeper last became healthy after leaving
// healthy at or after since, or after since if it was not healthy then,
// if it did.
func (sub *subject) lastHealthy(since time.Time) (time.Time, bool) {
	sub.mu.Lock()
	defer sub.mu.Unlock()
	var back time.Time
	left := false
	for _, tr := range sub.ts {
		if tr.At.Before(since) {
			// Not healthy when since came (a fault before left it so,
			// behind the gRPC proxy a second or two after the cluster
			// was whole): its return counts too.
			left = tr.To != statemachine.Healthy
			continue
		}
		if tr.From == statemachine.Healthy {
			left = true
		}
		if left && tr.To == statemachine.Healthy {
			back = tr.At
		}
	}
	return back, !back.IsZero()
}

// history lists the keeper's transitions, with times since start and
// causes, for a report.
func (sub *subject) history(start time.Time) string {
	sub.mu.Lock()
	defer sub.mu.Unlock()
	var b strings.Builder
	for _, t := range sub.ts {
		fmt.Fprintf(&b, "\n  %.3fs %v", t.At.Sub(start).Seconds(), t)
	}
	return b.String()
}

// waitHealthy waits until every keeper is healthy.
func (s *soak) waitHealthy(since time.Time, timeout time.Duration) error {
	deadline := since.Add(timeout)
	for _, sub := range s.subs {
		for sub.k.State() != statemachine.Healthy {
			if time.Now().After(deadline) {
				return fmt.Errorf("keeper %d not healthy after %v: %v, last error %w; transitions %s",
					sub.i, timeout, sub.k.State(), sub.k.Err(), sub.history(s.began))
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	return nil
}

// usage is what this process holds at a quiet point: goroutines other
// than the fault proxies' (whose count follows the connections open), and
// the bytes of live heap objects after a collection.
type usage struct {
	goroutines int
	heap       uint64
}

func measure() usage {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	buf := make([]byte, 64<<20)
	buf = buf[:runtime.Stack(buf, true)]
	n := 0
	for _, g := range strings.Split(string(buf), "\n\n") {
		if !strings.Contains(g, "testbed.(*Proxy)") {
			n++
		}
	}
	return usage{goroutines: n, heap: ms.HeapAlloc}
}

// growth compares the usage at the last quiet points with the first ones:
// the median of the first three against that of the last three, so that
// one busy moment does not count.
func (s *soak) growth() (first, last usage) {
	med := func(us []usage) usage {
		g := make([]int, len(us))
		h := make([]uint64, len(us))
		for i, u := range us {
			g[i], h[i] = u.goroutines, u.heap
		}
		slices.Sort(g)
		slices.Sort(h)
		return usage{g[len(g)/2], h[len(h)/2]}
	}
	n := min(3, len(s.usage))
	return med(s.usage[:n]), med(s.usage[len(s.usage)-n:])
}

// heapProfile writes a heap profile to name in the -heap-profiles
// directory, if one is given.
func (s *soak) heapProfile(name string) {
	if s.o.heapDir == "" {
		return
	}
	f, err := os.Create(filepath.Join(s.o.heapDir, name))
	if err != nil {
		s.logf("heap profile: %v", err)
		return
	}
	defer func() { _ = f.Close() }()
	runtime.GC()
	if err := pprof.WriteHeapProfile(f); err != nil {
		s.logf("heap profile: %v", err)
	}
}
