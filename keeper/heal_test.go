package keeper

import (
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"

	"github.com/leasekeeper/leasekeeper/statemachine"
)

// TestNoGapWithoutLiveLease: once no lease is live, the next attempt
// starts the moment the previous one ends, for as long as the outage
// lasts, so a request is always in flight; with a live lease the backoff
// paces the attempts as before.
func TestNoGapWithoutLiveLease(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake()
		log := &AttemptLog{}
		k, rec := newTest(t, f, func(c *Config) { c.Observers = []Observer{log} })
		startHealthy(t, k, "svc/a")
		f.setStalled(true)
		time.Sleep(2 * time.Minute)
		synctest.Wait()
		failed := rec.at(statemachine.Failed)
		require.False(t, failed.IsZero(), "never failed")
		tries := log.Since(failed)
		require.Greater(t, len(tries), 20, "attempts in two minutes without a live lease")
		for i := 1; i < len(tries); i++ {
			end := tries[i-1].At.Add(tries[i-1].Took)
			assert.Equal(t, end, tries[i].At, "attempt %d started %v after the previous one ended, want at once", i, tries[i].At.Sub(end))
		}
		// Before D, with the lease alive, attempts were paced: gaps between
		// them.
		var gaps int
		before := log.Since(time.Time{})
		for i := 1; i < len(before) && before[i].At.Before(failed); i++ {
			if before[i].At.After(before[i-1].At.Add(before[i-1].Took)) {
				gaps++
			}
		}
		assert.Positive(t, gaps, "attempts with a live lease, want paced by the backoff")
		f.setStalled(false)
		synctest.Wait()
		assert.Equal(t, statemachine.Healthy, k.State())
		mustClose(t, k)
	})
}

// TestReconnectsAtOnce: while the client's connection is in transient
// failure and the keeper needs it, the keeper asks gRPC to reconnect every
// BaseDelay or so, instead of after gRPC's own backoff; not while the
// error is one retrying cannot fix soon, and not once the connection is
// back.
func TestReconnectsAtOnce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake()
		k, _ := newTest(t, f, nil)
		startHealthy(t, k, "svc/a")
		f.setDown(true)
		time.Sleep(10 * time.Second)
		resets := f.count("reset")
		// The first failed renewal comes at 3.33s + 1s: about 5.7s of
		// resets every 100ms (jittered over [50ms, 150ms)).
		assert.GreaterOrEqual(t, resets, 38, "reconnects asked for in 5.7s down")
		assert.LessOrEqual(t, resets, 115, "reconnects asked for in 5.7s down")
		f.setDown(false)
		synctest.Wait()
		assert.Equal(t, statemachine.Healthy, k.State())
		time.Sleep(10 * time.Second)
		assert.Equal(t, f.count("reset"), resets, "reconnects asked for once connected")

		// A refusal retrying cannot fix soon (a refused certificate) asks
		// for none: it would only cost the server a handshake each time.
		f.setErr(rpctypes.ErrPermissionDenied)
		time.Sleep(10 * time.Second)
		synctest.Wait()
		require.Equal(t, statemachine.Failed, k.State())
		f.setDown(true)
		before := f.count("reset")
		time.Sleep(30 * time.Second)
		assert.Equal(t, before, f.count("reset"), "reconnects asked for while permission is denied")
		f.setDown(false)
		f.setErr(nil)
		mustClose(t, k)
	})
}

// TestPastDeadlineGrantsBeside: once D has passed, a lease is granted
// beside the keepalive of the old one, so that when the server says the
// old one is gone the keys go onto the new one at once: healthy again two
// round trips after a silent stall ends (keepalive and grant together,
// then the write), not three.
func TestPastDeadlineGrantsBeside(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake()
		const rtt = 100 * time.Millisecond
		f.setLatency(rtt)
		k, rec := newTest(t, f, nil)
		startHealthy(t, k, "svc/a")
		old := k.LeaseID()
		f.setStalled(true)
		time.Sleep(25 * time.Second) // the server expires the lease and deletes the key
		require.Equal(t, statemachine.Failed, k.State())
		_, ok := f.get("svc/a")
		require.False(t, ok)
		f.setStalled(false)
		began := time.Now()
		time.Sleep(time.Second)
		ts := rec.transitions()
		last := ts[len(ts)-1]
		require.Equal(t, statemachine.Healthy, last.To)
		assert.LessOrEqual(t, last.At.Sub(began), 2*rtt)
		assert.NotEqual(t, old, k.LeaseID())
		kv, ok := f.get("svc/a")
		require.True(t, ok)
		assert.Equal(t, k.LeaseID(), kv.lease)
		synctest.Wait()
		assert.Equal(t, 1, f.liveLeases(), "spare leases granted while the old one was tried are revoked")
		mustClose(t, k)
	})
}
