package keeper

import (
	"context"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"

	"github.com/leasekeeper/leasekeeper/statemachine"
)

// callLog records which write callbacks ran.
type callLog struct {
	mu    sync.Mutex
	calls []string
}

func (c *callLog) add(name string) func(statemachine.Transition) {
	return func(t statemachine.Transition) {
		c.mu.Lock()
		defer c.mu.Unlock()
		c.calls = append(c.calls, name+" "+t.From.String()+"->"+t.To.String())
	}
}

func (c *callLog) get() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.calls...)
}

// TestDrainInOrder: the keys go first, then the keeper is Draining with
// writes open while the service serves out the delay, then stop runs,
// then the lease is revoked.
func TestDrainInOrder(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake()
		calls := &callLog{}
		k, rec := newTest(t, f, func(c *Config) {
			c.Callbacks.OnStopWrites = calls.add("stop")
			c.Callbacks.OnResumeWrites = calls.add("resume")
		})
		startHealthy(t, k, "svc/a", "svc/b")
		id := k.LeaseID()
		var stopped time.Time
		began := time.Now()
		done := make(chan error, 1)
		go func() {
			done <- k.Drain(context.Background(), 5*time.Second, func() { stopped = time.Now() })
		}()
		time.Sleep(time.Second)
		for _, key := range []string{"svc/a", "svc/b"} {
			_, ok := f.get(key)
			assert.False(t, ok, "%s still on the server during the drain", key)
		}
		assert.Equal(t, statemachine.Draining, k.State())
		assert.True(t, k.Writable(), "a planned drain keeps writes open")
		assert.True(t, f.leaseAlive(id), "the lease is held until the drain ends")
		assert.Zero(t, k.Keys())
		assert.ErrorIs(t, k.Register(context.Background(), "svc/c", "v"), ErrDraining)
		assert.ErrorIs(t, k.Drain(context.Background(), 0, nil), ErrDraining)
		assert.ErrorIs(t, k.Start(context.Background()), ErrDraining)
		// Renewals go on, and failures no longer move the state.
		f.setRenewErr(rpctypes.ErrNoLeader)
		time.Sleep(3 * time.Second)
		assert.Equal(t, statemachine.Draining, k.State())

		require.NoError(t, <-done)
		assert.Equal(t, 5*time.Second, stopped.Sub(began), "stop runs once the delay is over")
		assert.False(t, f.leaseAlive(id), "the lease is revoked at the end")
		assert.Equal(t, statemachine.Closed, k.State())
		synctest.Wait()
		assert.Equal(t, []statemachine.State{statemachine.Idle, statemachine.Healthy, statemachine.Draining, statemachine.Closed}, rec.path())
		assert.Equal(t, []string{"resume idle->healthy", "stop draining->closed"}, calls.get(),
			"entering Draining from Healthy stops no writes")
	})
}

// TestDrainContextSkipsTheDelay: ending the drain's context skips what is
// left of the delay; stop still runs and the lease is still revoked.
func TestDrainContextSkipsTheDelay(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake()
		k, _ := newTest(t, f, nil)
		startHealthy(t, k, "svc/a")
		id := k.LeaseID()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		began := time.Now()
		stopCalled := false
		require.NoError(t, k.Drain(ctx, time.Hour, func() { stopCalled = true }))
		assert.Equal(t, 2*time.Second, time.Since(began))
		assert.True(t, stopCalled)
		assert.False(t, f.leaseAlive(id))
	})
}

// TestDrainWhileEtcdIsAway: the deletes and the revoke fail, Drain says
// so, and the keeper is closed all the same; from Failed, a drain opens
// writes again.
func TestDrainWhileEtcdIsAway(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake()
		calls := &callLog{}
		k, _ := newTest(t, f, func(c *Config) { c.Callbacks.OnResumeWrites = calls.add("resume") })
		startHealthy(t, k, "svc/a")
		f.setDown(true)
		time.Sleep(20 * time.Second)
		require.Equal(t, statemachine.Failed, k.State())
		err := k.Drain(context.Background(), time.Second, nil)
		assert.Error(t, err)
		assert.Equal(t, statemachine.Closed, k.State())
		synctest.Wait()
		assert.Contains(t, calls.get(), "resume failed->draining")
	})
}

// TestDrainBeforeStartAndAfterClose: a keeper never started drains at once
// and closes; a closed one refuses.
func TestDrainBeforeStartAndAfterClose(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake()
		k, _ := newTest(t, f, nil)
		require.NoError(t, k.Register(context.Background(), "svc/a", "v"))
		require.NoError(t, k.Drain(context.Background(), 0, nil))
		assert.Equal(t, statemachine.Closed, k.State())
		assert.Zero(t, f.count("grant"), "nothing was granted")
		assert.ErrorIs(t, k.Drain(context.Background(), 0, nil), ErrClosed)
	})
}
