package keeper_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/leasekeeper/leasekeeper/internal/embedetcd"
	"github.com/leasekeeper/leasekeeper/keeper"
	"github.com/leasekeeper/leasekeeper/statemachine"
)

// startEtcd starts an embedded etcd for the test and returns a client.
func startEtcd(t testing.TB) *clientv3.Client {
	t.Helper()
	srv, err := embedetcd.Start(t.TempDir(), 30*time.Second)
	if err != nil {
		t.Fatalf("start etcd: %v", err)
	}
	t.Cleanup(srv.Stop)
	return newClient(t, clientv3.Config{Endpoints: []string{srv.Endpoint}})
}

// newClient returns a client with cfg, closed when the test ends.
func newClient(t testing.TB, cfg clientv3.Config) *clientv3.Client {
	t.Helper()
	cfg.DialTimeout, cfg.Logger = 5*time.Second, zap.NewNop()
	cli, err := clientv3.New(cfg)
	if err != nil {
		t.Fatalf("etcd client: %v", err)
	}
	t.Cleanup(func() { _ = cli.Close() })
	return cli
}

// closeAtEnd closes k when the test ends.
func closeAtEnd(t testing.TB, k *keeper.Keeper) {
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = k.Close(ctx)
	})
}

// recorded collects what a keeper reports to a callback (transitions, key
// events) and lets a test wait for one.
type recorded[T any] struct {
	mu    sync.Mutex
	items []T
	more  chan struct{}
}

func newRecorded[T any]() *recorded[T] { return &recorded[T]{more: make(chan struct{})} }

func (r *recorded[T]) record(x T) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.items = append(r.items, x)
	close(r.more)
	r.more = make(chan struct{})
}

// waitFor waits until an item matching match arrived and returns the first
// one and its index; what names it in the failure.
func (r *recorded[T]) waitFor(t *testing.T, what string, match func(T) bool, timeout time.Duration) (int, T) {
	t.Helper()
	deadline := time.After(timeout)
	for {
		r.mu.Lock()
		for i, x := range r.items {
			if match(x) {
				r.mu.Unlock()
				return i, x
			}
		}
		more := r.more
		r.mu.Unlock()
		select {
		case <-more:
		case <-deadline:
			r.mu.Lock()
			defer r.mu.Unlock()
			t.Fatalf("no %s within %v; got %+v", what, timeout, r.items)
		}
	}
}

// transitions are a keeper's transitions.
type transitions = recorded[statemachine.Transition]

func newTransitions() *transitions { return newRecorded[statemachine.Transition]() }

// waitTransition waits until a transition from -> to arrived and returns
// its index.
func waitTransition(t *testing.T, r *transitions, from, to statemachine.State, timeout time.Duration) int {
	t.Helper()
	i, _ := r.waitFor(t, fmt.Sprintf("transition %v -> %v", from, to),
		func(tr statemachine.Transition) bool { return tr.From == from && tr.To == to }, timeout)
	return i
}

// newEtcdKeeper returns a keeper with the given TTL on cli and the recorder
// of its transitions.
func newEtcdKeeper(t *testing.T, cli *clientv3.Client, ttl time.Duration) (*keeper.Keeper, *transitions) {
	t.Helper()
	cfg := keeper.DefaultConfig()
	cfg.TTL = ttl
	rec := newTransitions()
	cfg.Callbacks.OnTransition = rec.record
	k, err := keeper.New(cli, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return k, rec
}

func keyLease(t *testing.T, cli *clientv3.Client, key string) (string, clientv3.LeaseID, bool) {
	t.Helper()
	resp, err := cli.Get(context.Background(), key)
	if err != nil {
		t.Fatalf("get %s: %v", key, err)
	}
	if len(resp.Kvs) == 0 {
		return "", 0, false
	}
	return string(resp.Kvs[0].Value), clientv3.LeaseID(resp.Kvs[0].Lease), true
}

func TestEtcdRegisterRenewClose(t *testing.T) {
	cli := startEtcd(t)
	ctx := context.Background()
	k, rec := newEtcdKeeper(t, cli, 2*time.Second)
	if err := k.Register(ctx, "svc/a", "10.0.0.1:80"); err != nil {
		t.Fatal(err)
	}
	if err := k.Start(ctx); err != nil {
		t.Fatalf("Start() = %v", err)
	}
	id := k.LeaseID()
	if v, l, ok := keyLease(t, cli, "svc/a"); !ok || v != "10.0.0.1:80" || l != id {
		t.Fatalf("svc/a = %q on lease %x (present %v), want 10.0.0.1:80 on %x", v, l, ok, id)
	}
	if err := k.Register(ctx, "svc/b", "b"); err != nil {
		t.Fatal(err)
	}
	if _, l, ok := keyLease(t, cli, "svc/b"); !ok || l != id {
		t.Fatalf("svc/b on lease %x (present %v), want written at once on %x", l, ok, id)
	}

	// Outlive the TTL twice: the keys must not be deleted meanwhile.
	wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	for wr := range cli.Watch(wctx, "svc/", clientv3.WithPrefix()) {
		for _, ev := range wr.Events {
			t.Errorf("event %v on %s while the keeper renews", ev.Type, ev.Kv.Key)
		}
	}
	ttl, err := cli.TimeToLive(ctx, id)
	if err != nil || ttl.TTL <= 0 {
		t.Fatalf("TimeToLive(%x) = %v, %v; want the lease alive", id, ttl, err)
	}
	if got := k.State(); got != statemachine.Healthy {
		t.Errorf("State() = %v, want healthy", got)
	}

	if err := k.Close(ctx); err != nil {
		t.Fatalf("Close() = %v", err)
	}
	for _, key := range []string{"svc/a", "svc/b"} {
		if _, _, ok := keyLease(t, cli, key); ok {
			t.Errorf("%s present right after Close, want deleted at once", key)
		}
	}
	waitTransition(t, rec, statemachine.Healthy, statemachine.Closed, 5*time.Second)
}

func TestEtcdExternalRevokeHeals(t *testing.T) {
	cli := startEtcd(t)
	ctx := context.Background()
	k, rec := newEtcdKeeper(t, cli, 3*time.Second)
	defer func() { _ = k.Close(ctx) }()
	keys := []string{"svc/x/1", "svc/x/2", "svc/x/3"}
	for _, key := range keys {
		if err := k.Register(ctx, key, "v"); err != nil {
			t.Fatal(err)
		}
	}
	if err := k.Start(ctx); err != nil {
		t.Fatal(err)
	}
	old := k.LeaseID()
	if _, err := cli.Revoke(ctx, old); err != nil {
		t.Fatalf("external revoke: %v", err)
	}
	lost := waitTransition(t, rec, statemachine.Healthy, statemachine.Failed, 5*time.Second)
	healed := waitTransition(t, rec, statemachine.Failed, statemachine.Healthy, 5*time.Second)
	if healed < lost {
		t.Fatalf("healed at transition %d before lost at %d", healed, lost)
	}
	id := k.LeaseID()
	if id == old || id == 0 {
		t.Fatalf("LeaseID() = %x, want a new lease (old %x)", id, old)
	}
	for _, key := range keys {
		if _, l, ok := keyLease(t, cli, key); !ok || l != id {
			t.Errorf("%s on lease %x (present %v), want re-written on %x", key, l, ok, id)
		}
	}
}

// TestEtcdCloseFromCallbacks: a service that shuts down from a callback
// or an observer calls Close there, with a context that never ends. Close
// returns at once, the lease is revoked (its keys deleted), and the keeper
// is closed; the callbacks queued after it still run.
func TestEtcdCloseFromCallbacks(t *testing.T) {
	cli := startEtcd(t)
	for _, tc := range []struct {
		name    string
		install func(c *keeper.Config, call func())
		trigger func(t *testing.T, k *keeper.Keeper)
	}{
		{"OnResumeWrites at start",
			func(c *keeper.Config, call func()) {
				c.Callbacks.OnResumeWrites = func(statemachine.Transition) { call() }
			},
			func(*testing.T, *keeper.Keeper) {}},
		{"ObserveAttempt",
			func(c *keeper.Config, call func()) { c.Observers = []keeper.Observer{attemptHook(call)} },
			func(*testing.T, *keeper.Keeper) {}},
		{"OnKeyEvent after a delete behind its back",
			func(c *keeper.Config, call func()) {
				c.WatchKeys = true
				c.Callbacks.OnKeyEvent = func(keeper.KeyEvent) { call() }
			},
			func(t *testing.T, k *keeper.Keeper) {
				if _, err := cli.Delete(context.Background(), "svc/close/"+t.Name()+"/a"); err != nil {
					t.Fatal(err)
				}
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			prefix := "svc/close/" + t.Name() + "/"
			var k *keeper.Keeper
			type outcome struct {
				err   error
				took  time.Duration
				lease clientv3.LeaseID
			}
			done := make(chan outcome, 1)
			var once sync.Once
			cfg := keeper.DefaultConfig()
			cfg.TTL = 3 * time.Second
			rec := newTransitions()
			cfg.Callbacks.OnTransition = rec.record
			tc.install(&cfg, func() {
				once.Do(func() {
					id := k.LeaseID()
					began := time.Now()
					err := k.Close(context.Background())
					done <- outcome{err, time.Since(began), id}
				})
			})
			var err error
			if k, err = keeper.New(cli, cfg); err != nil {
				t.Fatal(err)
			}
			closeAtEnd(t, k)
			for _, key := range []string{"a", "b"} {
				if err := k.Register(context.Background(), prefix+key, "v"); err != nil {
					t.Fatal(err)
				}
			}
			if err := k.Start(context.Background()); err != nil && !errors.Is(err, keeper.ErrClosed) {
				t.Fatalf("Start() = %v", err)
			}
			tc.trigger(t, k)
			var o outcome
			select {
			case o = <-done:
			case <-time.After(10 * time.Second):
				t.Fatalf("Close from %s did not return in 10s", tc.name)
			}
			if o.err != nil || o.took > time.Second {
				t.Errorf("Close from %s = %v after %v, want nil at once", tc.name, o.err, o.took)
			}
			if got := k.State(); got != statemachine.Closed {
				t.Errorf("State() = %v, want closed", got)
			}
			if o.lease != 0 {
				ttl, err := cli.TimeToLive(context.Background(), o.lease)
				if err != nil || ttl.TTL > 0 {
					t.Errorf("TimeToLive(%x) = %v, %v; want the lease revoked", o.lease, ttl, err)
				}
			}
			for _, key := range []string{"a", "b"} {
				if _, _, ok := keyLease(t, cli, prefix+key); ok {
					t.Errorf("%s present after Close from %s, want deleted", prefix+key, tc.name)
				}
			}
			// From idle when the first attempt's report came before its
			// transition, else from healthy.
			rec.waitFor(t, "transition to closed", func(tr statemachine.Transition) bool { return tr.To == statemachine.Closed }, 5*time.Second)
			t.Logf("Close from %s returned in %v", tc.name, o.took.Round(time.Microsecond))
		})
	}
}

// attemptHook is an Observer that calls a func at every attempt.
type attemptHook func()

func (h attemptHook) ObserveAttempt(string, time.Duration, error) { h() }
func (attemptHook) ObserveTransition(statemachine.Transition)     {}

// TestEtcdWatchRestoresKeys: on a real etcd the keeper's watch puts back a
// key deleted or overwritten behind its back, whether the key was
// registered before Start or after it outside the range watched until
// then (the hub watches the wider range from then on), and after etcd
// compacted the history the watch was at.
func TestEtcdWatchRestoresKeys(t *testing.T) {
	cli := startEtcd(t)
	ctx := context.Background()
	cfg := keeper.DefaultConfig()
	cfg.TTL = 3 * time.Second
	cfg.WatchKeys = true
	events := make(chan keeper.KeyEvent, 16)
	cfg.Callbacks.OnKeyEvent = func(ev keeper.KeyEvent) { events <- ev }
	k, err := keeper.New(cli, cfg)
	require.NoError(t, err)
	defer func() { _ = k.Close(ctx) }()
	require.NoError(t, k.Register(ctx, "svc/m", "m"))
	require.NoError(t, k.Start(ctx))
	// Outside [svc/m, svc/m\x00): the hub widens its watch.
	require.NoError(t, k.Register(ctx, "svc/a", "a"))
	require.NoError(t, k.Register(ctx, "svc/z", "z"))
	restored := func(key, value string) {
		t.Helper()
		timeout := time.After(5 * time.Second)
		for ours := false; !ours; {
			select {
			case ev := <-events:
				require.Equal(t, key, ev.Key, "event %+v", ev)
				ours = ev.Ours
			case <-timeout:
				t.Fatalf("no key event saying %s is restored", key)
			}
		}
		v, l, ok := keyLease(t, cli, key)
		assert.True(t, ok, "%s absent", key)
		assert.Equal(t, value, v)
		assert.Equal(t, k.LeaseID(), l)
	}
	// Deleted before or after the widened watch starts, the key is put
	// back: a new watch reads its range first.
	_, err = cli.Delete(ctx, "svc/z")
	require.NoError(t, err)
	restored("svc/z", "z")
	_, err = cli.Put(ctx, "svc/a", "theirs")
	require.NoError(t, err)
	restored("svc/a", "a")
	// Compact past the watch's revision, then delete again.
	resp, err := cli.Get(ctx, "svc/m")
	require.NoError(t, err)
	_, err = cli.Compact(ctx, resp.Header.Revision)
	require.NoError(t, err)
	_, err = cli.Delete(ctx, "svc/m")
	require.NoError(t, err)
	restored("svc/m", "m")
	assert.Equal(t, statemachine.Healthy, k.State())
}
