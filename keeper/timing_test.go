package keeper

import (
	"fmt"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/leasekeeper/leasekeeper/statemachine"
)

// With the defaults (TTL 10s): renew every 3.69s on the renewal grid
// (3.23s to 3.69s after the grant), attempt timeout 1s, margin 0.25s,
// degraded below 5s left.

// TestRenewsOnScheduleForAnHour: renewals go out every 0.369 TTL once on
// the renewal grid (TTL/3, then the grid's next point), and the lease never
// changes.
func TestRenewsOnScheduleForAnHour(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake()
		k, rec := newTest(t, f, nil)
		startHealthy(t, k, "svc/a")
		id := k.LeaseID()
		learned := f.count("keepalive") // the keeper learned its path at Start
		assert.Equal(t, learnAfter, learned, "keepalives that learned the path")
		time.Sleep(time.Hour)
		synctest.Wait()
		// 3600s / 3.69s = 975 renewals.
		if got := f.count("keepalive") - learned; got < 973 || got > 976 {
			t.Errorf("keepalives in an hour = %d, want about 975", got)
		}
		if got := k.LeaseID(); got != id {
			t.Errorf("LeaseID() = %d, want %d (unchanged)", got, id)
		}
		if !samePath(rec.path(), statemachine.Idle, statemachine.Healthy) {
			t.Errorf("path = %v, want [idle healthy]", rec.path())
		}
		mustClose(t, k)
	})
}

// TestDeadlineFromSendTime checks D = send time + TTL - margin: the latency
// of the reply must not move the deadline later.
func TestDeadlineFromSendTime(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake()
		f.setLatency(300 * time.Millisecond)
		k, _ := newTest(t, f, nil)
		start := time.Now()
		startHealthy(t, k)
		// Grant sent at start, answered 300ms later: only the server
		// answers a grant, so D counts from the send time alone.
		if got, want := k.Deadline(), start.Add(10*time.Second-250*time.Millisecond); !got.Equal(want) {
			t.Errorf("Deadline() after grant = %v, want %v", got.Sub(start), want.Sub(start))
		}
		// A keepalive's reply may come from a renewal made up to one leg
		// of the path before it was sent (a proxy's): D also takes off b,
		// the longest recent round trip of a unary call, the grant's.
		// The keeper learns its path with three keepalives in a row, the
		// first as the grant returns, each of the others when the one
		// before was answered: the last goes at 0.9s.
		const b = 300 * time.Millisecond
		sent := start.Add(3 * b)
		time.Sleep(time.Until(sent) + 400*time.Millisecond)
		synctest.Wait()
		if got, want := k.Deadline(), sent.Add(9750*time.Millisecond-b); !got.Equal(want) {
			t.Errorf("Deadline() after renewal = %v, want %v", got.Sub(start), want.Sub(start))
		}
		mustClose(t, k)
	})
}

func TestOutageLongerThanTTL(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake()
		k, rec := newTest(t, f, nil)
		start := time.Now()
		startHealthy(t, k, "svc/a", "svc/b")
		old := k.LeaseID()
		serverExpiry := f.leases[old].expires

		time.Sleep(time.Second)
		f.setDown(true)
		time.Sleep(30 * time.Second)
		synctest.Wait()
		if got := k.State(); got != statemachine.Failed {
			t.Fatalf("State() during outage = %v, want failed", got)
		}
		degradedAt, failedAt := rec.at(statemachine.Degraded).Sub(start), rec.at(statemachine.Failed)
		// The first renewal (by 3.75s) times out a second later; 5s left
		// is reached at 4.75s.
		if degradedAt < 4*time.Second || degradedAt > 5*time.Second {
			t.Errorf("degraded %v after start, want within [4s, 5s]", degradedAt)
		}
		if got := failedAt.Sub(start); got != 9750*time.Millisecond {
			t.Errorf("failed %v after start, want exactly at the deadline 9.75s", got)
		}
		if margin := serverExpiry.Sub(failedAt); margin <= 0 {
			t.Errorf("failed %v after the server expired the lease, want before", -margin)
		}
		// The registration is really gone on the server.
		if _, ok := f.get("svc/a"); ok {
			t.Errorf("svc/a still on the server 30s into the outage")
		}

		f.setDown(false)
		reconnected := time.Now()
		synctest.Wait()
		if got := k.State(); got != statemachine.Healthy {
			t.Fatalf("State() after reconnect = %v, want healthy", got)
		}
		if heal := rec.transitions()[len(rec.transitions())-1].At.Sub(reconnected); heal > 10*time.Millisecond {
			t.Errorf("healed %v after reconnect, want at once (not after the backoff)", heal)
		}
		id := k.LeaseID()
		if id == old || id == 0 {
			t.Errorf("LeaseID() = %d after re-grant, want a new lease (old %d)", id, old)
		}
		for _, key := range []string{"svc/a", "svc/b"} {
			if v, ok := f.get(key); !ok || v.lease != id || v.value != "v-"+key {
				t.Errorf("%s on the server = %+v (present %v), want v-%s with lease %d", key, v, ok, key, id)
			}
		}
		want := []statemachine.State{statemachine.Idle, statemachine.Healthy, statemachine.Degraded, statemachine.Failed, statemachine.Healthy}
		if !samePath(rec.path(), want...) {
			t.Errorf("path = %v, want %v", rec.path(), want)
		}
		mustClose(t, k)
	})
}

// TestRestartKeepsLease: a cluster restart resets lease TTLs on the server;
// the keeper must resume the same lease instead of granting a new one.
func TestRestartKeepsLease(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake()
		k, rec := newTest(t, f, nil)
		startHealthy(t, k, "svc/a")
		old := k.LeaseID()
		f.setDown(true)
		time.Sleep(9 * time.Second)
		f.restart()
		time.Sleep(6 * time.Second)
		synctest.Wait()
		if got := k.State(); got != statemachine.Failed {
			t.Fatalf("State() = %v, want failed: the local deadline passed", got)
		}
		f.setDown(false)
		synctest.Wait()
		if got := k.State(); got != statemachine.Healthy {
			t.Fatalf("State() after restart = %v, want healthy", got)
		}
		if got := k.LeaseID(); got != old {
			t.Errorf("LeaseID() = %d, want the old lease %d", got, old)
		}
		// Past D a spare lease is granted beside each keepalive, in case the
		// old one is gone; the old one lived, so every spare was revoked.
		if got := f.liveLeases(); got != 1 {
			t.Errorf("live leases = %d, want 1 (the old one; spares revoked)", got)
		}
		if last := rec.transitions()[len(rec.transitions())-1]; last.From != statemachine.Failed || last.To != statemachine.Healthy {
			t.Errorf("last transition = %v, want failed -> healthy", last)
		}
		mustClose(t, k)
	})
}

// TestShortFaultsNeverFail: outages shorter than the time left before the
// deadline may degrade the keeper but never fail it.
func TestShortFaultsNeverFail(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake()
		k, rec := newTest(t, f, nil)
		startHealthy(t, k, "svc/a")
		for range 50 {
			f.setDown(true)
			time.Sleep(3 * time.Second) // under a third of the TTL
			f.setDown(false)
			time.Sleep(4 * time.Second)
			synctest.Wait()
			if got := k.State(); got == statemachine.Failed {
				t.Fatalf("State() = failed after a 3s fault, want healthy or degraded")
			}
		}
		for _, tr := range rec.transitions() {
			if tr.To == statemachine.Failed {
				t.Errorf("transition %v during short faults", tr)
			}
		}
		if got := k.State(); got != statemachine.Healthy {
			t.Errorf("State() after faults = %v, want healthy", got)
		}
		mustClose(t, k)
	})
}

// TestStateAfterPause models a process pause: the timers do not fire, yet
// State must already say Failed once the deadline passed, without changing
// anything; the timers, once they fire late, move the state and recover.
func TestStateAfterPause(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake()
		k, rec := newTest(t, f, nil)
		start := time.Now()
		startHealthy(t, k, "svc/a")
		learned := f.count("keepalive")
		l := &k.loop
		l.mu.Lock()
		l.k.hub.timers.Stop(&l.sched.attempt)
		l.k.hub.timers.Stop(&l.sched.check)
		l.mu.Unlock()
		// Past the threshold (5s left of 9.75s), before D: degraded.
		time.Sleep(5 * time.Second)
		assert.Equal(t, statemachine.Degraded, k.State(), "State() 5s after the last renewal")
		assert.False(t, k.Writable(), "Writable() past the degrade threshold")
		time.Sleep(15 * time.Second)
		assert.Equal(t, statemachine.Failed, k.State(), "State() 20s after the last renewal")
		_, err := k.Token("svc/a")
		assert.ErrorIs(t, err, ErrNotHeld, "Token() after the deadline")
		synctest.Wait()
		// Asking changed nothing: no transition, no attempt.
		assert.Equal(t, []statemachine.State{statemachine.Idle, statemachine.Healthy}, rec.path())
		assert.Equal(t, learned, f.count("keepalive"), "keepalives while paused")

		// The timers fire late, as after SIGCONT.
		l.onCheck()
		synctest.Wait()
		failed := rec.at(statemachine.Failed)
		assert.Equal(t, 9750*time.Millisecond, failed.Sub(start), "the transition to failed, dated D however late the timer fired")
		// The old lease expired on the server, so a new one was granted.
		want := []statemachine.State{statemachine.Idle, statemachine.Healthy, statemachine.Failed, statemachine.Healthy}
		assert.Equal(t, want, rec.path())
		mustClose(t, k)
	})
}

// TestSilentMemberIsHedged: a keepalive that gets no reply (a silent member)
// is hedged after a third of the renew timeout by a second one, which
// succeeds: no failure is counted, even with DegradeAfter 1.
func TestSilentMemberIsHedged(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake()
		k, rec := newTest(t, f, func(c *Config) { c.DegradeAfter = 1 })
		start := time.Now()
		startHealthy(t, k, "svc/a")
		learned := f.count("keepalive")
		f.setHang(1)
		time.Sleep(5 * time.Second)
		synctest.Wait()
		if !samePath(rec.path(), statemachine.Idle, statemachine.Healthy) {
			t.Errorf("path = %v, want [idle healthy]", rec.path())
		}
		if err := k.Err(); err != nil {
			t.Errorf("Err() = %v, want nil: the hedge succeeded", err)
		}
		if got := f.count("keepalive") - learned; got != 2 {
			t.Errorf("keepalives after Start = %d, want 2 (the silent one and the hedge)", got)
		}
		// The hedge was sent a third of the renew timeout after the
		// renewal; D counts from its send time.
		hedgeSent := firstDueAfter(k, start, 10*time.Second, defaultTiming(10*time.Second)).Add(time.Second / 3)
		if got, want := k.Deadline(), hedgeSent.Add(9750*time.Millisecond); !got.Equal(want) {
			t.Errorf("Deadline() = %v, want %v", got.Sub(start), want.Sub(start))
		}
		mustClose(t, k)
	})
}

// TestHealsWithinARoundTripAfterSilentPartition: once no lease is live,
// a request is always outstanding (the next attempt starts when one ends,
// and each sends a fresh keepalive every BaseDelay), so when a silent
// partition heals (the connection never looked broken, so nothing signals
// it) a request in flight is answered at once, whenever the partition
// ends.
func TestHealsWithinARoundTripAfterSilentPartition(t *testing.T) {
	for _, outage := range []time.Duration{10 * time.Second, 12 * time.Second, 20 * time.Second, 31*time.Second + 700*time.Millisecond, 44*time.Second + 300*time.Millisecond, time.Minute + 2100*time.Millisecond} {
		t.Run(outage.String(), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				f := newFake()
				k, rec := newTest(t, f, nil)
				startHealthy(t, k, "svc/a")
				f.setStalled(true)
				time.Sleep(outage)
				synctest.Wait()
				if got := k.State(); got != statemachine.Failed {
					t.Fatalf("State() during the partition = %v, want failed", got)
				}
				calls := f.count("keepalive") + f.count("grant")
				healed := time.Now()
				f.setStalled(false)
				synctest.Wait()
				ts := rec.transitions()
				if last := ts[len(ts)-1]; last.To != statemachine.Healthy || last.At.Sub(healed) != 0 {
					t.Errorf("last transition %v at +%v after the heal, want healthy at once", last, last.At.Sub(healed))
				}
				// Outstanding attempts are no flood: a fresh keepalive at
				// most every BaseDelay/2 (jitter) once no lease is live, two
				// in flight; before that, one attempt and its hedge per retry.
				if limit := int(outage/(50*time.Millisecond)) + 20; calls > limit {
					t.Errorf("calls during a %v partition = %d, want at most %d", outage, calls, limit)
				}
				mustClose(t, k)
			})
		})
	}
}

// TestSlowLinkNeverFails: keepalives that take 0.8 of the renew timeout
// are answered in time: the fresh ones sent meanwhile do not cancel them.
func TestSlowLinkNeverFails(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake()
		k, rec := newTest(t, f, nil)
		startHealthy(t, k, "svc/a")
		f.setLatency(800 * time.Millisecond)
		time.Sleep(time.Minute)
		synctest.Wait()
		assert.Equal(t, []statemachine.State{statemachine.Idle, statemachine.Healthy}, rec.path())
		assert.Nil(t, k.Err())
		f.setLatency(0)
		mustClose(t, k)
	})
}

// dueAfter is when a renewal is due after one sent at sent with the
// default timing for ttl.
func dueAfter(k *Keeper, sent time.Time, ttl time.Duration) time.Time {
	return renewalDue(sent, ttl, defaultTiming(ttl), defaultTiming(ttl), gridPhase)
}

// TestRenewalsOnTheGrid: keepers that started apart join the renewal grid
// at their second renewal (the first goes early: no keepalive was answered
// yet) and stay on it, renewing every eight grid steps (0.369 TTL, short
// of the latest that leaves a whole renew timeout before the degrade
// threshold),
// so that the keepalives of keepers on one grid point go out together.
func TestRenewalsOnTheGrid(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ttl := 10 * time.Second
		step := gridStep(ttl, defaultTiming(ttl))
		f := newFake()
		var ks []*Keeper
		for i := range 3 {
			k, _ := newTest(t, f, nil)
			startHealthy(t, k, fmt.Sprintf("svc/%d", i))
			ks = append(ks, k)
			time.Sleep(step / 3) // apart by a third of a step
		}
		time.Sleep(gridPoints * step) // the first renewal, half way to the degrade threshold
		for range 3 {
			time.Sleep(gridPoints * step)
			synctest.Wait()
			for _, k := range ks {
				sent := k.Deadline().Add(-ttl + ttl/40)
				assert.Zero(t, gridOffset(sent, step, gridPhase), "renewal sent off the grid at %v", sent)
				assert.WithinDuration(t, time.Now(), sent, gridPoints*step, "no renewal in the last interval")
			}
		}
		for _, k := range ks {
			mustClose(t, k)
		}
	})
}

// TestClientsOfOneProcessShareTheGrid: keepers of two clients (two hubs)
// in one process renew on one grid, so that the process wakes once per
// grid point for all of them; the grid's phase is drawn once per process,
// so that a fleet of processes whose clocks agree does not renew in one
// burst.
func TestClientsOfOneProcessShareTheGrid(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ttl := 10 * time.Second
		step := gridStep(ttl, defaultTiming(ttl))
		f1, f2 := newFake(), newFake()
		a, _ := newTest(t, f1, nil)
		b, _ := newTest(t, f1, nil)
		c, _ := newTest(t, f2, nil)
		require.NotSame(t, a.hub, c.hub)
		for i, k := range []*Keeper{a, b, c} {
			startHealthy(t, k, fmt.Sprintf("svc/%d", i))
			time.Sleep(step / 3) // apart by a third of a step
		}
		time.Sleep(3 * ttl)
		synctest.Wait()
		sent := func(k *Keeper) time.Time { return k.Deadline().Add(-ttl + ttl/40) }
		for _, k := range []*Keeper{a, b, c} {
			assert.Zero(t, gridOffset(sent(k), step, gridPhase), "renewal sent off the process's grid at %v", sent(k))
			mustClose(t, k)
		}
	})
}

// TestRenewalDue: a renewal is due no sooner than TTL/3 after the last one
// was sent, except when it joins the grid, and no later than the latest
// point that leaves a whole renew timeout before the degrade threshold; a
// keeper on the grid renews eight steps later, whatever its path added to
// its margin and renew timeout within the grid's slack, so that keepers
// that learned different paths still share the grid.
func TestRenewalDue(t *testing.T) {
	ttl := 10 * time.Second
	tm := defaultTiming(ttl)
	latest := ttl - tm.margin - tm.threshold - tm.renewTimeout
	require.Equal(t, 3750*time.Millisecond, latest)
	step := gridStep(ttl, tm)
	require.InDelta(t, 3.6914, (gridPoints * step).Seconds(), 1e-4)
	base := time.Unix(1_700_000_000, 0)
	// Two hubs' grids: the wall clock's multiples, and one shifted by a
	// phase of more than a step, as a random hub's is.
	for _, phase := range []time.Duration{0, 7*step + step/3} {
		for _, off := range []time.Duration{0, time.Millisecond, step / 2, step - time.Nanosecond, 3 * step / 2} {
			sent := base.Add(off)
			due := renewalDue(sent, ttl, tm, tm, phase)
			assert.False(t, due.After(sent.Add(latest)), "phase %v, off %v: due %v after the latest point", phase, off, due.Sub(sent))
			assert.Zero(t, gridOffset(due, step, phase), "phase %v, off %v: due off the grid", phase, off)
			assert.Greater(t, due.Sub(sent), latest-step, "phase %v, off %v: due %v too early", phase, off, due.Sub(sent))
		}
		// On the grid it stays there, eight steps later, with a b of 20ms
		// in its margin and a renew timeout learned 30ms longer too.
		onGridSent := base.Add(-gridOffset(base, step, phase))
		learned := tm
		learned.margin += 20 * time.Millisecond
		learned.renewTimeout += 30 * time.Millisecond
		for _, in := range []timing{tm, learned} {
			assert.Equal(t, onGridSent.Add(gridPoints*step), renewalDue(onGridSent.Add(time.Millisecond), ttl, in, tm, phase), "phase %v", phase)
		}
		// A far path leaves less room: a step earlier, on the grid still.
		far := tm
		far.renewTimeout += 100 * time.Millisecond
		assert.Equal(t, onGridSent.Add((gridPoints-1)*step), renewalDue(onGridSent.Add(time.Millisecond), ttl, far, tm, phase), "phase %v", phase)
	}
	// The shifted grid's points are the phase's offset off the wall
	// clock's.
	assert.Equal(t, step-step*2/3, gridOffset(base.Add(-gridOffset(base, step, 0)), step, step*2/3))
	// No room past TTL/3 (a long renew timeout): TTL/3, off the grid.
	tm.renewTimeout = 2 * time.Second
	assert.Equal(t, base.Add(ttl/3), renewalDue(base, ttl, tm, tm, 0))
}

// firstDueAfter is when a keeper's first renewal is due after the grant
// sent at sent with timing tm: before any keepalive was answered, half way
// from the grant to the degrade threshold before its deadline (path.go).
func firstDueAfter(k *Keeper, sent time.Time, ttl time.Duration, tm timing) time.Time {
	// The keeper learned its path in the instant after Start, on a fake
	// that answers at once (path.go): its first renewal after that is on
	// the grid.
	return renewalDue(sent, ttl, tm, defaultTiming(ttl), gridPhase)
}

func defaultTiming(ttl time.Duration) timing {
	c := DefaultConfig()
	return c.timingFor(ttl)
}

// TestSlowLinkIsLearned: over a link whose round trip (500 ms, a sixth of
// the TTL) is longer than the configured renew timeout (TTL/10, 300 ms),
// the keeper bounds its renewals by the latency its calls show (RFC 6298),
// so Start works at once, no attempt fails and the keeper never leaves
// Healthy. With the configured timeout alone every renewal timed out.
func TestSlowLinkIsLearned(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const ttl = 3 * time.Second
		f := newFake()
		f.setLatency(500 * time.Millisecond)
		log := &AttemptLog{}
		k, rec := newTest(t, f, func(c *Config) {
			c.TTL = ttl
			c.Observers = []Observer{log}
		})
		startHealthy(t, k, "svc/a")
		time.Sleep(20 * ttl)
		synctest.Wait()
		attempts := log.Since(time.Time{})
		assert.Greater(t, len(attempts), 40, "attempts in 20 TTLs")
		for _, a := range attempts {
			assert.NoError(t, a.Err, "%s at %v", a.Op, a.At)
		}
		assert.Equal(t, []statemachine.State{statemachine.Idle, statemachine.Healthy}, rec.path())
		mustClose(t, k)
	})
}

// TestLongCallDoesNotHoldDeadlineDown: one unary call that waited out a
// fault (2.6s, at a TTL of 3s) makes b, the bound on a leg that D allows
// for, so long that no renewal proves a D beyond the degrade threshold.
// The keeper then asks the server's time to live, whose answer owes
// nothing to b and whose round trips bring b down: it is Healthy again
// within a few renewals, never renews in a tight loop meanwhile, and D
// never passes the server's expiry. It renewed at once, for good, before.
func TestLongCallDoesNotHoldDeadlineDown(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const ttl = 3 * time.Second
		f := newFake()
		f.setLatency(5 * time.Millisecond)
		k, rec := newTest(t, f, func(c *Config) { c.TTL = ttl })
		startHealthy(t, k, "svc/a")
		time.Sleep(ttl)
		k.hub.calls.take(time.Now().Add(-2600*time.Millisecond), true)
		kas := f.count("keepalive")
		time.Sleep(4 * ttl)
		synctest.Wait()
		assert.Equal(t, statemachine.Healthy, k.State(), "4 TTLs after one long call: %v", rec.path())
		assert.Less(t, f.count("keepalive")-kas, 40, "keepalives in 4 TTLs")
		assert.Positive(t, f.count("ttl"), "probes of the server's time to live")
		assert.Less(t, k.hub.calls.leg(), 2*time.Second, "b after the probes")
		f.mu.Lock()
		exp := f.leases[k.LeaseID()].expires
		f.mu.Unlock()
		assert.False(t, k.Deadline().After(exp), "D %v after the server's expiry", k.Deadline().Sub(exp))
		mustClose(t, k)
	})
}

// TestDirectPathStaysDirectAfterOutage: the first reply after a silent
// partition comes long after its attempt began, on a path that answers at
// once; it must not make the keeper take the path for one that holds
// keepalives, which would renew every eighth of the TTL until it left.
func TestDirectPathStaysDirectAfterOutage(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake()
		k, _ := newTest(t, f, nil)
		startHealthy(t, k, "svc/a")
		ttl := k.cfg.TTL
		keepalives := func() int {
			f.mu.Lock()
			defer f.mu.Unlock()
			return f.calls["keepalive"]
		}
		time.Sleep(3 * ttl)
		before := keepalives()
		time.Sleep(3 * ttl)
		steady := keepalives() - before

		f.setStalled(true)
		time.Sleep(ttl * 7 / 10) // past the degrade threshold, not D
		f.setStalled(false)
		time.Sleep(ttl / 2)
		synctest.Wait()
		require.Equal(t, statemachine.Healthy, k.State())
		after := keepalives()
		time.Sleep(3 * ttl)
		assert.LessOrEqual(t, keepalives()-after, steady+1, "keepalives in 3 TTLs after the outage, against %d before it", steady)
		mustClose(t, k)
	})
}
