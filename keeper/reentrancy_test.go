package keeper

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/leasekeeper/leasekeeper/statemachine"
)

// hook installs call as one of the callbacks or observer methods.
type hook struct {
	name    string
	install func(c *Config, call func())
}

var hooks = []hook{
	{"OnTransition", func(c *Config, call func()) { c.Callbacks.OnTransition = func(statemachine.Transition) { call() } }},
	{"OnStopWrites", func(c *Config, call func()) { c.Callbacks.OnStopWrites = func(statemachine.Transition) { call() } }},
	{"OnResumeWrites", func(c *Config, call func()) { c.Callbacks.OnResumeWrites = func(statemachine.Transition) { call() } }},
	{"OnLost", func(c *Config, call func()) { c.Callbacks.OnLost = func(statemachine.Transition) { call() } }},
	{"OnKeyEvent", func(c *Config, call func()) { c.Callbacks.OnKeyEvent = func(KeyEvent) { call() } }},
	{"ObserveAttempt", func(c *Config, call func()) { c.Observers = []Observer{observerFuncs{attempt: call}} }},
	{"ObserveTransition", func(c *Config, call func()) { c.Observers = []Observer{observerFuncs{transition: call}} }},
}

// observerFuncs is an Observer made of two funcs; either may be nil.
type observerFuncs struct{ attempt, transition func() }

func (o observerFuncs) ObserveAttempt(string, time.Duration, error) {
	if o.attempt != nil {
		o.attempt()
	}
}

func (o observerFuncs) ObserveTransition(statemachine.Transition) {
	if o.transition != nil {
		o.transition()
	}
}

// publicMethods calls each public method of the keeper the way a service
// would from a callback. The error is what the method returned, for the
// methods that return one.
var publicMethods = []struct {
	name string
	call func(k *Keeper) error
}{
	{"Close", func(k *Keeper) error { return k.Close(context.Background()) }},
	{"Drain", func(k *Keeper) error { return k.Drain(context.Background(), 0, nil) }},
	{"Register", func(k *Keeper) error { return k.Register(context.Background(), "svc/new", "v") }},
	{"Deregister", func(k *Keeper) error { return k.Deregister(context.Background(), "svc/b") }},
	{"Start", func(k *Keeper) error { return k.Start(context.Background()) }},
	{"State", func(k *Keeper) error { _ = k.State(); return nil }},
	{"Writable", func(k *Keeper) error { _ = k.Writable(); return nil }},
	{"LeaseID", func(k *Keeper) error { _ = k.LeaseID(); return nil }},
	{"Deadline", func(k *Keeper) error { _ = k.Deadline(); return nil }},
	{"Err", func(k *Keeper) error { _ = k.Err(); return nil }},
	{"Keys", func(k *Keeper) error { _ = k.Keys(); return nil }},
	{"Token", func(k *Keeper) error { _, err := k.Token("svc/a"); return err }},
}

// TestCallbacksMayCallEveryMethod calls every public method from every
// callback and observer method, once, while the keeper goes healthy ->
// degraded -> failed -> healthy and reports a refused key. Every call
// returns, at once in fake time (Register and Deregister may wait for an
// RPC, never for a callback); Close from any of them revokes the lease and
// leaves the keeper closed, and nothing deadlocks (synctest fails the test
// if the bubble's goroutines block for good).
func TestCallbacksMayCallEveryMethod(t *testing.T) {
	for _, h := range hooks {
		for _, m := range publicMethods {
			t.Run(h.name+"/"+m.name, func(t *testing.T) {
				synctest.Test(t, func(t *testing.T) {
					f := newFake()
					f.setRefuse("forbidden/")
					var (
						mu       sync.Mutex
						k        *Keeper
						fired    bool
						returned bool
						took     time.Duration
						callErr  error
						held     clientv3.LeaseID // the lease when Close was called
					)
					call := func() {
						mu.Lock()
						if fired {
							mu.Unlock()
							return
						}
						fired = true
						mu.Unlock()
						id := k.LeaseID()
						began := time.Now()
						err := m.call(k)
						mu.Lock()
						returned, took, callErr, held = true, time.Since(began), err, id
						mu.Unlock()
					}
					var err error
					k, err = newKeeper(f, func() Config {
						c := DefaultConfig()
						h.install(&c, call)
						return c
					}())
					require.NoError(t, err)
					ctx := context.Background()
					for _, key := range []string{"svc/a", "svc/b", "forbidden/x"} {
						require.NoError(t, k.Register(ctx, key, "v"))
					}
					if err := k.Start(ctx); err != nil {
						// Close or Drain from a callback during Start.
						require.True(t, errors.Is(err, ErrClosed) || errors.Is(err, ErrDraining), "Start() = %v", err)
					}
					// healthy -> degraded -> failed, then back.
					f.setRenewErr(rpctypes.ErrNoLeader)
					time.Sleep(20 * time.Second)
					f.setRenewErr(nil)
					time.Sleep(10 * time.Second)
					synctest.Wait()

					// Read under mu, and release it: the final Close calls the
					// hook again.
					mu.Lock()
					got := struct {
						fired, returned bool
						took            time.Duration
						err             error
						held            clientv3.LeaseID
					}{fired, returned, took, callErr, held}
					mu.Unlock()
					require.True(t, got.fired, "%s was never called", h.name)
					require.True(t, got.returned, "%s from %s never returned", m.name, h.name)
					if m.name == "Close" || m.name == "Drain" {
						assert.NoError(t, got.err)
						assert.Zero(t, got.took, "%s from %s took %v, want it to return at once", m.name, h.name, got.took)
						assert.Equal(t, statemachine.Closed, k.State())
						if got.held != 0 {
							assert.False(t, f.leaseAlive(got.held), "lease %x alive after Close from %s, want revoked", got.held, h.name)
						}
						_, ok := f.get("svc/a")
						assert.False(t, ok, "svc/a on the server after Close from %s", h.name)
						return
					}
					assert.LessOrEqual(t, got.took, time.Second, "%s from %s took %v, want at most one RPC's timeout", m.name, h.name, got.took)
					if got.err != nil && !errors.Is(got.err, ErrAlreadyStarted) && !errors.Is(got.err, ErrNotHeld) {
						t.Logf("%s from %s = %v", m.name, h.name, got.err)
					}
					assert.Equal(t, statemachine.Healthy, k.State(), "the keeper goes on after %s from %s", m.name, h.name)
					mustClose(t, k)
				})
			})
		}
	}
}

// TestCloseFromCallbackWaitsForNothingItCannot: Close from a callback
// returns at once while a later transition is still queued behind the
// callback, and that transition (to closed) is delivered once the
// callback returns.
func TestCloseFromCallbackWaitsForNothingItCannot(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake()
		var k *Keeper
		closed := make(chan error, 1)
		rec := &recorder{}
		k, _ = newTest(t, f, func(c *Config) {
			c.Callbacks.OnTransition = func(tr statemachine.Transition) {
				rec.record(tr)
				if tr.To == statemachine.Healthy {
					closed <- k.Close(context.Background())
				}
			}
		})
		require.NoError(t, k.Register(context.Background(), "svc/a", "v"))
		err := k.Start(context.Background())
		require.NoError(t, <-closed, "Close from OnTransition")
		if err != nil {
			require.ErrorIs(t, err, ErrClosed)
		}
		synctest.Wait()
		assert.Equal(t, []statemachine.State{statemachine.Idle, statemachine.Healthy, statemachine.Closed}, rec.path())
	})
}

// TestCloseHonoursItsContext: Close returns by its context's end even
// while a Register called with a context that never ends waits for a
// write that hangs: the write is bound to the keeper's life too.
func TestCloseHonoursItsContext(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake()
		k, _ := newTest(t, f, func(c *Config) { c.TTL = time.Minute })
		startHealthy(t, k, "svc/a")
		f.setPutHang(true)
		registered := make(chan error, 1)
		go func() { registered <- k.Register(context.Background(), "svc/b", "v") }()
		synctest.Wait()
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		began := time.Now()
		require.NoError(t, k.Close(ctx))
		assert.Zero(t, time.Since(began), "Close waited for a Register's write")
		assert.Error(t, <-registered, "Register canceled by Close")
	})
}

// TestClosedKeeperRefusesWork: after Close every method that does work
// says so, and the readers answer.
func TestClosedKeeperRefusesWork(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		k, _ := newTest(t, newFake(), nil)
		startHealthy(t, k, "svc/a")
		mustClose(t, k)
		for _, m := range publicMethods {
			err := m.call(k)
			switch m.name {
			case "Register", "Deregister", "Start", "Drain":
				assert.ErrorIs(t, err, ErrClosed, m.name)
			case "Token":
				assert.Error(t, err, m.name)
			default:
				assert.NoError(t, err, m.name)
			}
		}
		assert.Equal(t, statemachine.Closed, k.State())
		assert.Zero(t, k.LeaseID())
		assert.False(t, k.Writable())
		assert.Equal(t, fmt.Sprint(time.Time{}), fmt.Sprint(k.Deadline()))
	})
}
