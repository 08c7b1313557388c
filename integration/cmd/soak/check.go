package main

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/leasekeeper/leasekeeper/keeper"
	"github.com/leasekeeper/leasekeeper/statemachine"
)

// Invariants, by the name the report gives them.
const (
	invHealthy   = "healthy only with its lease and keys on the server"
	invExpiry    = "failed before the server deletes the keys on expiry"
	invExclusive = "one holder per exclusive key"
	invHeal      = "healthy within 1s of the cluster whole"
	invGrowth    = "no goroutine or heap growth"
	invMissing   = "no key missing at the end"
)

var invariants = []string{invHealthy, invExpiry, invExclusive, invHeal, invGrowth, invMissing}

// watchRoundTrip bounds how long a keeper may look healthy after a change
// made behind its back (a key deleted, its lease revoked), before its
// watch tells it: one watch round trip, with room for a loaded machine.
const watchRoundTrip = time.Second

// sampleEvery is how often the checker compares the keepers with the
// members.
const sampleEvery = 100 * time.Millisecond

// checker checks the invariants as the soak runs. mu guards everything.
type checker struct {
	s *soak

	mu       sync.Mutex
	checks   map[string]int
	failures map[string][]string
	// suspects are mismatches seen in a sample, by what mismatched, with
	// when first seen: a mismatch that outlives watchRoundTrip is a
	// violation.
	suspects map[string]time.Time
	worst    time.Duration // the longest a mismatch lasted
	// live is, for each keeper, its lease in the last sample that saw it
	// healthy or degraded, and when.
	live map[int]seen
	// revoked are the leases the soak revoked behind the keepers' backs:
	// their keys' deletions are no expiry, however late the keeper
	// hears of them.
	revoked map[clientv3.LeaseID]bool
	// touched are the keys the soak deleted or overwrote behind the
	// keepers' backs: their deletions are the soak's.
	touched map[string]bool
	// early are the deletions of a keeper's key, on the lease it held,
	// that neither the soak nor an expiry the keeper's D foresaw made:
	// the server revoked the lease while D was still ahead.
	early []string
}

type seen struct {
	lease    clientv3.LeaseID
	at       time.Time
	deadline time.Time // the keeper's D then
}

func newChecker(s *soak) *checker {
	return &checker{s: s, checks: map[string]int{}, failures: map[string][]string{},
		suspects: map[string]time.Time{}, live: map[int]seen{}, revoked: map[clientv3.LeaseID]bool{}, touched: map[string]bool{}}
}

func (c *checker) count(inv string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.checks[inv]++
}

func (c *checker) violate(inv, format string, args ...any) {
	msg := fmt.Sprintf("%8.3fs  ", time.Since(c.s.began).Seconds()) + fmt.Sprintf(format, args...)
	c.mu.Lock()
	c.failures[inv] = append(c.failures[inv], msg)
	c.mu.Unlock()
	c.s.logf("VIOLATION %s: %s", inv, msg)
}

// external notes a change the soak makes behind a keeper's back: key
// deleted or overwritten, or lease revoked. A mismatch it causes has a
// watch round trip to clear; a revoked lease's keys are deleted by the
// revoke, not by an expiry the keeper had to see coming.
func (c *checker) external(key string, lease clientv3.LeaseID) {
	c.s.logf("behind the keepers' backs: %s %x", key, int64(lease))
	c.mu.Lock()
	defer c.mu.Unlock()
	if lease != 0 {
		c.revoked[lease] = true
	} else {
		c.touched[key] = true
	}
}

// sample compares, every sampleEvery, what each keeper says with what the
// members hold.
func (c *checker) sample(ctx context.Context) {
	t := time.NewTicker(sampleEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		c.sampleOnce(ctx)
	}
}

// view is what a keeper says at one moment.
type view struct {
	state statemachine.State
	lease clientv3.LeaseID
	holds bool // its exclusive key, by Token
}

func (c *checker) look(sub *subject) view {
	v := view{state: sub.k.State(), lease: sub.k.LeaseID()}
	if sub.xkey != "" {
		_, err := sub.k.Token(sub.xkey)
		v.holds = err == nil
	}
	return v
}

// sampleOnce looks at every keeper, reads the members, and looks again: a
// keeper that said the same before and after is compared with what the
// members held in between.
func (c *checker) sampleOnce(ctx context.Context) {
	subs := c.s.subs
	before := make([]view, len(subs))
	for i, sub := range subs {
		before[i] = c.look(sub)
	}
	keys, rev, ok := c.s.clusterKeys(ctx)
	if !ok {
		// No quorum, or a member on the way: nothing to compare with, and
		// no telling what happened since the last sample.
		c.mu.Lock()
		clear(c.suspects)
		c.mu.Unlock()
		return
	}
	now := time.Now()
	mismatched := map[string]bool{}
	for i, sub := range subs {
		after := c.look(sub)
		if after != before[i] {
			continue
		}
		if after.state == statemachine.Healthy || after.state == statemachine.Degraded {
			c.mu.Lock()
			c.live[sub.i] = seen{after.lease, now, sub.k.Deadline()}
			c.mu.Unlock()
		}
		if after.state != statemachine.Healthy {
			continue
		}
		c.count(invHealthy)
		if l, ok := keys[sub.rkey]; !ok || l != after.lease {
			mismatched[fmt.Sprintf("keeper %d healthy on lease %x, %s on %x (present %v)", sub.i, int64(after.lease), sub.rkey, int64(l), ok)] = true
		}
		if after.holds {
			if l, ok := keys[sub.xkey]; !ok || l != after.lease {
				mismatched[fmt.Sprintf("keeper %d holds %s on lease %x, the server has it on %x (present %v)", sub.i, sub.xkey, int64(after.lease), int64(l), ok)] = true
			}
		}
	}
	for key, contenders := range c.s.excl {
		c.count(invExclusive)
		var holders []int
		for _, sub := range contenders {
			if c.look(sub).holds {
				holders = append(holders, sub.i)
			}
		}
		if len(holders) > 1 {
			mismatched[fmt.Sprintf("keepers %v all hold %s", holders, key)] = true
		}
	}
	if len(mismatched) >= 5 {
		c.s.logf("%d mismatches in the sample at revision %d (%d keys)", len(mismatched), rev, len(keys))
	}
	c.settle(mismatched, now)
}

// settle keeps the mismatches seen now as suspects, drops those gone, and
// reports those that outlived watchRoundTrip, once each.
func (c *checker) settle(mismatched map[string]bool, now time.Time) {
	c.mu.Lock()
	var late []string
	for m, since := range c.suspects {
		switch {
		case !mismatched[m]:
			delete(c.suspects, m)
			if !since.IsZero() && now.Sub(since) > sampleEvery {
				c.s.logf("mismatch cleared after %v: %s", now.Sub(since).Round(time.Millisecond), m)
			}
		case since.IsZero():
			// Reported already.
		case now.Sub(since) > watchRoundTrip:
			late = append(late, m)
			c.suspects[m] = time.Time{}
		}
		if d := now.Sub(since); !since.IsZero() && d > c.worst {
			c.worst = d
		}
	}
	for m := range mismatched {
		if _, ok := c.suspects[m]; !ok {
			c.suspects[m] = now
		}
	}
	c.mu.Unlock()
	for _, m := range late {
		inv := invHealthy
		if len(m) > 7 && m[:7] == "keepers" {
			inv = invExclusive
		}
		c.violate(inv, "for more than %v: %s", watchRoundTrip, m)
	}
}

// watchDeletions watches every key of the soak on the members, and checks
// each deletion of a keeper's key on its own lease that the lease expiring
// caused: the keeper must have reported Failed first. A deletion while the
// keeper's deadline is still ahead is no expiry (the soak or the server
// revoked the lease, or deleted the key): the samples check those.
func (c *checker) watchDeletions(ctx context.Context) {
	for ctx.Err() == nil {
		wch := c.s.obs.Watch(clientv3.WithRequireLeader(ctx), "soak/", clientv3.WithPrefix(), clientv3.WithPrevKV())
		for wr := range wch {
			now := time.Now()
			for _, ev := range wr.Events {
				if ev.Type == mvccpb.DELETE && ev.PrevKv != nil {
					c.deleted(string(ev.Kv.Key), clientv3.LeaseID(ev.PrevKv.Lease), ev.Kv.ModRevision, now)
				}
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (c *checker) deleted(key string, lease clientv3.LeaseID, rev int64, at time.Time) {
	c.mu.Lock()
	touched := c.touched[key]
	delete(c.touched, key)
	c.mu.Unlock()
	for _, sub := range c.s.owners(key) {
		if d := sub.k.Deadline(); sub.k.LeaseID() == lease {
			c.s.logf("%s deleted with lease %x at revision %d, %v before keeper %d's deadline", key, int64(lease), rev, d.Sub(at).Round(time.Millisecond), sub.i)
		}
		c.mu.Lock()
		last, ok := c.live[sub.i]
		revoked := c.revoked[lease]
		c.mu.Unlock()
		if !ok || last.lease != lease || revoked {
			continue // not on the lease this keeper last held, or revoked by the soak
		}
		// The D the keeper had for the lease when the key went: its D now
		// if it still holds the lease (D only moves later), else the D
		// of the last sample that saw it live (it may have moved on to a
		// new lease by the time this event is read).
		d := last.deadline
		if sub.k.LeaseID() == lease {
			d = sub.k.Deadline()
		}
		if at.Before(d) {
			// Not an expiry the keeper could see coming: the soak deleted
			// the key, or the server revoked the lease while D was ahead.
			if !touched {
				c.mu.Lock()
				c.early = append(c.early, fmt.Sprintf("%8.3fs  keeper %d: %s deleted with lease %x, %v before its D",
					at.Sub(c.s.began).Seconds(), sub.i, key, int64(lease), d.Sub(at).Round(time.Millisecond)))
				c.mu.Unlock()
			}
			continue
		}
		c.count(invExpiry)
		if !sub.failedBetween(last.at, at) {
			c.violate(invExpiry, "keeper %d: %s deleted with lease %x at %.3fs; last seen alive at %.3fs, not failed since",
				sub.i, key, int64(lease), at.Sub(c.s.began).Seconds(), last.at.Sub(c.s.began).Seconds())
		}
	}
}

// final checks, once every keeper is healthy after the last fault, that
// every key is on the server with the right lease: each keeper's restore
// key on its lease, each exclusive key on the lease of the one contender
// that holds it.
func (c *checker) final() {
	keys, _, ok := c.s.clusterKeys(context.Background())
	if !ok {
		c.violate(invMissing, "cannot read the keys at the end")
		return
	}
	for _, sub := range c.s.subs {
		c.count(invMissing)
		if l, ok := keys[sub.rkey]; !ok || l != sub.k.LeaseID() {
			c.violate(invMissing, "%s on lease %x (present %v), want keeper %d's %x", sub.rkey, int64(l), ok, sub.i, int64(sub.k.LeaseID()))
		}
	}
	for key, contenders := range c.s.excl {
		c.count(invMissing)
		var holders []int
		for _, sub := range contenders {
			tok, err := sub.k.Token(key)
			switch {
			case err == nil && keys[key] == tok.Lease:
				holders = append(holders, sub.i)
			case err != nil && !errors.Is(err, keeper.ErrKeyTaken):
				c.violate(invMissing, "keeper %d: Token(%s) = %v", sub.i, key, err)
			}
		}
		if len(holders) != 1 {
			c.violate(invMissing, "%s held by keepers %v on the server's lease %x, want exactly one", key, holders, int64(keys[key]))
		}
	}
	first, last := c.s.growth()
	c.count(invGrowth)
	if last.goroutines > first.goroutines+first.goroutines/10+20 {
		c.violate(invGrowth, "goroutines grew from %d to %d", first.goroutines, last.goroutines)
	}
	if last.heap > first.heap+first.heap/4+8<<20 {
		c.violate(invGrowth, "heap grew from %d MiB to %d MiB", first.heap>>20, last.heap>>20)
	}
}
