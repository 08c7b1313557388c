package keeper

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/require"

	lkerrors "github.com/leasekeeper/leasekeeper/errors"
	"github.com/leasekeeper/leasekeeper/statemachine"
)

// TestPermissionRevokedWhileRunning: etcd refuses renewals once the user
// may no longer write the lease's keys. The keeper is Failed at once with
// PermissionDenied, tries no more than once per backoff cap while the
// permission stays revoked (the lease expiring on the server adds one
// immediate re-grant), and recovers by itself once it is granted back.
func TestPermissionRevokedWhileRunning(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake()
		obs := &AttemptLog{}
		var lost atomic.Int32
		k, rec := newTest(t, f, func(c *Config) {
			c.Observers = []Observer{obs}
			c.Callbacks.OnLost = func(statemachine.Transition) { lost.Add(1) }
		})
		startHealthy(t, k, "svc/a", "svc/b")

		f.setRefuse("svc/")
		revoked := time.Now()
		const window = 10 * time.Minute
		time.Sleep(window)
		if got := k.State(); got != statemachine.Failed {
			t.Fatalf("State() while revoked = %v, want failed", got)
		}
		if !errors.Is(k.Err(), lkerrors.ErrPermissionDenied) {
			t.Errorf("Err() = %v, want PermissionDenied", k.Err())
		}
		if got := lost.Load(); got != 1 {
			t.Errorf("OnLost calls = %d, want 1", got)
		}
		if at := rec.at(statemachine.Failed); at.Sub(revoked) > k.cfg.TTL/3+time.Second {
			t.Errorf("Failed %v after the revoke, want by the next renewal (%v)", at.Sub(revoked), k.cfg.TTL/3)
		}

		capDelay := k.cfg.Backoff.MaxDelay
		tries := obs.Since(revoked)
		if limit := int(window/capDelay) + 2; len(tries) > limit {
			t.Errorf("%d attempts in %v of revoked permission, want at most %d (one per %v cap)", len(tries), window, limit, capDelay)
		}
		if floor := int(window/(capDelay+capDelay/5)) - 2; len(tries) < floor {
			t.Errorf("%d attempts in %v, want at least %d: the keeper must keep trying", len(tries), window, floor)
		}
		if quick := checkPaced(t, tries, capDelay); quick > 1 {
			t.Errorf("%d attempts sooner than the cap, want at most the one re-grant after the lease expired", quick)
		}

		f.setRefuse("")
		granted := time.Now()
		for k.State() != statemachine.Healthy && time.Since(granted) < 2*capDelay {
			time.Sleep(100 * time.Millisecond)
		}
		if got := k.State(); got != statemachine.Healthy {
			t.Fatalf("State() %v after the permission came back = %v, want healthy", time.Since(granted), got)
		}
		for _, key := range []string{"svc/a", "svc/b"} {
			if v, ok := f.get(key); !ok || v.lease != k.LeaseID() {
				t.Errorf("%s = %+v (present %v), want it on lease %x", key, v, ok, k.LeaseID())
			}
		}
		mustClose(t, k)
	})
}

// TestPermissionRefusedAcrossDeadline: an attempt sent while the server
// refuses the keeper, and cut short by D with no answer (here the
// connection stalls around D), says nothing new of the server: the next
// attempt keeps the refusals' pace, one per backoff cap. It went at once
// before (seen in CI under load, where a refused renewal took 30 ms and
// the one after it started just before D): two attempts 30 ms apart.
func TestPermissionRefusedAcrossDeadline(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const capDelay = 500 * time.Millisecond
		f := newFake()
		obs := &AttemptLog{}
		k, _ := newTest(t, f, func(c *Config) {
			c.TTL = 3 * time.Second
			c.Backoff.BaseDelay, c.Backoff.MaxDelay = capDelay/10, capDelay
			c.Observers = []Observer{obs}
		})
		startHealthy(t, k, "svc/a")
		f.setRefuse("svc/")
		revoked := time.Now()
		time.Sleep(k.cfg.TTL / 2)
		require.Equal(t, statemachine.Failed, k.State())
		d := k.Deadline()
		// An attempt starts within any 1.3 caps (the backoff's jitter adds
		// at most a fifth): stall the connection from so long before D
		// until just after it, and one attempt is cut short by D.
		time.Sleep(time.Until(d.Add(-capDelay * 13 / 10)))
		f.setStalled(true)
		time.Sleep(time.Until(d.Add(10 * time.Millisecond)))
		f.setStalled(false)
		time.Sleep(5 * capDelay)
		synctest.Wait()

		tries := obs.Since(revoked)
		checkPaced(t, tries, capDelay)
		cut := 0
		for _, a := range tries {
			if a.Kind == lkerrors.Timeout {
				cut++
			}
		}
		require.Positive(t, cut, "no attempt was cut short by D: %v", tries)
		mustClose(t, k)
	})
}

// checkPaced fails the test for every attempt of tries that came sooner
// than capDelay after a failure, other than the re-grant after the server
// said the lease expired, and returns how many came so soon in all.
func checkPaced(t *testing.T, tries []Attempt, capDelay time.Duration) (quick int) {
	t.Helper()
	for i := 1; i < len(tries); i++ {
		prev := tries[i-1]
		if prev.Err == nil {
			continue // the renewal interval, not a retry
		}
		if gap := tries[i].At.Sub(prev.At); gap < capDelay {
			quick++
			if prev.Kind != lkerrors.LeaseExpired {
				t.Errorf("attempt %d (%s, %v) came %v after a %v failure, want at least the cap %v",
					i, tries[i].Op, tries[i].Kind, gap, prev.Kind, capDelay)
			}
		}
	}
	return quick
}

// TestPermissionDeniedAtStart: Start returns the classified error after
// one attempt, and the keeper goes on at the cap's pace in the background.
func TestPermissionDeniedAtStart(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake()
		obs := &AttemptLog{}
		k, _ := newTest(t, f, func(c *Config) { c.Observers = []Observer{obs} })
		f.setRefuse("svc/")
		if err := k.Register(context.Background(), "svc/a", "v"); err != nil {
			t.Fatal(err)
		}
		began := time.Now()
		if err := k.Start(context.Background()); !errors.Is(err, lkerrors.ErrPermissionDenied) {
			t.Fatalf("Start() = %v, want PermissionDenied", err)
		}
		if took := time.Since(began); took > time.Second {
			t.Errorf("Start took %v, want it to return at the first refusal", took)
		}
		time.Sleep(time.Minute)
		if n, limit := len(obs.Since(began)), int(time.Minute/k.cfg.Backoff.MaxDelay)+1; n > limit {
			t.Errorf("%d attempts in a minute, want at most %d", n, limit)
		}
		mustClose(t, k)
	})
}
