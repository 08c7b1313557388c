package main

import (
	"fmt"
	"io"
	"slices"
	"time"
)

// violations returns how many violations the checks found.
func (s *soak) violations() int {
	s.chk.mu.Lock()
	defer s.chk.mu.Unlock()
	n := 0
	for _, fs := range s.chk.failures {
		n += len(fs)
	}
	return n
}

// report prints the faults injected, the checks made and their
// violations, the heal times, and the violations themselves.
func (s *soak) report(w io.Writer) {
	total := 0
	fmt.Fprintln(w, "\n| fault | injected |\n|---|---|")
	for _, f := range faults {
		fmt.Fprintf(w, "| %s | %d |\n", f.name, s.faults[f.name])
		total += s.faults[f.name]
	}
	fmt.Fprintf(w, "| all | %d |\n", total)

	c := s.chk
	c.mu.Lock()
	defer c.mu.Unlock()
	fmt.Fprintln(w, "\n| invariant | checks | violations |\n|---|---|---|")
	for _, inv := range invariants {
		fmt.Fprintf(w, "| %s | %d | %d |\n", inv, c.checks[inv], len(c.failures[inv]))
	}
	first, last := s.growth()
	fmt.Fprintf(w, "\nmismatches between a keeper and the members lasted at most %v (allowed: %v, one watch round trip)\n",
		c.worst.Round(time.Millisecond), watchRoundTrip)
	fmt.Fprintf(w, "goroutines %d -> %d, heap %.1f -> %.1f MiB (median of the first and of the last three quiet points of %d)\n",
		first.goroutines, last.goroutines, float64(first.heap)/(1<<20), float64(last.heap)/(1<<20), len(s.usage))
	if len(s.heals) > 0 {
		h := slices.Clone(s.heals)
		slices.Sort(h)
		q := func(p float64) string { return h[int(p*float64(len(h)-1))].Round(time.Millisecond).String() }
		fmt.Fprintf(w, "heal time after the cluster is whole, %d keepers that left healthy: p50 %s, p99 %s, max %s\n",
			len(h), q(0.5), q(0.99), h[len(h)-1].Round(time.Millisecond))
	}
	if s.o.proxied > 0 {
		own := s.o.keepers - s.o.shared
		fmt.Fprintf(w, "keepers %d to %d reach the cluster through an etcd gRPC proxy: healthy within %v of the cluster whole (1s and the proxy's renewal period)\n",
			own-s.o.proxied, own-1, healWithin+s.o.ttl/3+500*time.Millisecond)
	}
	if len(c.early) > 0 {
		// Not the keepers' doing, so no violation: they hear of it as of
		// any revoke behind their backs (the samples check that). A
		// leader frozen past the TTL revokes, once thawed, what its stale
		// lessor holds expired: etcd checks its leadership first, but
		// skips the check for a member whose raft ticked a moment ago, and
		// a follower forwards the revoke to the new leader (etcd issues
		// 12528 and 15247; the members' logs say "failed to revoke lease"
		// for the ones revoked twice).
		fmt.Fprintf(w, "keys the cluster deleted while their keeper's D was ahead, not by the soak (a thawed leader's revokes, etcd issue 15247): %d\n", len(c.early))
		for _, e := range c.early[:min(len(c.early), 5)] {
			fmt.Fprintln(w, "  "+e)
		}
	}
	for _, inv := range invariants {
		for _, f := range c.failures[inv] {
			fmt.Fprintf(w, "VIOLATION %s: %s\n", inv, f)
		}
	}
	fmt.Fprintf(w, "seed %d: replay with -seed %d\n", s.o.seed, s.o.seed)
}
