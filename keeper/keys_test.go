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

	lkerrors "github.com/leasekeeper/leasekeeper/errors"
	"github.com/leasekeeper/leasekeeper/statemachine"
)

func TestRegisterAndDeregister(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake()
		k, _ := newTest(t, f, nil)
		ctx := context.Background()
		if err := k.Register(ctx, "", "v"); !errors.Is(err, ErrEmptyKey) {
			t.Errorf("Register(\"\") = %v, want ErrEmptyKey", err)
		}
		if err := k.Deregister(ctx, ""); !errors.Is(err, ErrEmptyKey) {
			t.Errorf("Deregister(\"\") = %v, want ErrEmptyKey", err)
		}
		startHealthy(t, k, "svc/a")
		id := k.LeaseID()
		if err := k.Register(ctx, "svc/b", "b"); err != nil {
			t.Fatalf("Register(svc/b) while healthy = %v", err)
		}
		if v, ok := f.get("svc/b"); !ok || v.lease != id || v.value != "b" {
			t.Errorf("svc/b = %+v (present %v), want b on lease %d at once", v, ok, id)
		}
		if err := k.Register(ctx, "svc/b", "b2"); err != nil {
			t.Fatalf("Register(svc/b) again = %v", err)
		}
		if v, _ := f.get("svc/b"); v.value != "b2" {
			t.Errorf("svc/b = %q after re-register, want b2", v.value)
		}
		if err := k.Deregister(ctx, "svc/b"); err != nil {
			t.Fatalf("Deregister(svc/b) = %v", err)
		}
		if _, ok := f.get("svc/b"); ok {
			t.Errorf("svc/b present after Deregister")
		}
		// A key etcd refuses for good is dropped; the others stay.
		f.setErr(rpctypes.ErrPermissionDenied)
		err := k.Register(ctx, "other/x", "x")
		if !errors.Is(err, lkerrors.ErrPermissionDenied) {
			t.Errorf("Register(other/x) = %v, want PermissionDenied", err)
		}
		f.setErr(nil)
		time.Sleep(time.Minute)
		synctest.Wait()
		if _, ok := f.get("other/x"); ok {
			t.Errorf("other/x written although refused")
		}
		if v, ok := f.get("svc/a"); !ok || v.lease != k.LeaseID() {
			t.Errorf("svc/a = %+v (present %v), want still registered", v, ok)
		}
		if got := k.State(); got != statemachine.Healthy {
			t.Errorf("State() = %v, want healthy", got)
		}
		mustClose(t, k)
	})
}

func TestRecoveryRewritesKeysInBatches(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake()
		k, _ := newTest(t, f, nil)
		keys := make([]string, 1000)
		for i := range keys {
			keys[i] = fmt.Sprintf("svc/%04d", i)
		}
		startHealthy(t, k, keys...)
		if got := f.count("put"); got != 8 {
			t.Errorf("puts for 1000 keys = %d, want 8 transactions of at most 128", got)
		}
		old := k.LeaseID()
		// Revoked behind the keeper's back: every key is gone.
		if err := f.revoke(context.Background(), old); err != nil {
			t.Fatal(err)
		}
		time.Sleep(5 * time.Second) // past the next renewal
		synctest.Wait()
		if got := k.State(); got != statemachine.Healthy {
			t.Fatalf("State() after external revoke = %v, want healthy", got)
		}
		id := k.LeaseID()
		if id == old {
			t.Fatalf("LeaseID() = %d, want a new lease", id)
		}
		for _, key := range keys {
			if v, ok := f.get(key); !ok || v.lease != id {
				t.Fatalf("%s = %+v (present %v), want on lease %d", key, v, ok, id)
			}
		}
		if got := f.count("put"); got != 16 {
			t.Errorf("puts after recovery = %d, want 16", got)
		}
		mustClose(t, k)
	})
}

// keyEventLog records a keeper's key events.
type keyEventLog struct {
	mu  sync.Mutex
	evs []KeyEvent
}

func (l *keyEventLog) record(ev KeyEvent) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.evs = append(l.evs, ev)
}

// changes returns the changes reported for key, in order.
func (l *keyEventLog) changes(key string) []Change {
	l.mu.Lock()
	defer l.mu.Unlock()
	var cs []Change
	for _, ev := range l.evs {
		if ev.Key == key {
			cs = append(cs, ev.Change)
		}
	}
	return cs
}

// TestRefusedKeyIsRetried: a key etcd refuses for good while the keeper
// writes its keys (at Start, or again on a new lease after a permission
// was revoked) does not keep the others unregistered, stays registered,
// is retried no faster than once per backoff cap, and is written once the
// permission comes back.
func TestRefusedKeyIsRetried(t *testing.T) {
	for _, tc := range []struct {
		name   string
		revoke func(t *testing.T, f *fakeBackend, k *Keeper)
	}{
		{"refused at start", func(t *testing.T, f *fakeBackend, k *Keeper) {
			f.setRefuse("forbidden/")
			startHealthy(t, k, "svc/a", "forbidden/x", "svc/b")
		}},
		{"refused on a new lease", func(t *testing.T, f *fakeBackend, k *Keeper) {
			startHealthy(t, k, "svc/a", "forbidden/x", "svc/b")
			// etcd v3.7 then refuses to renew the lease: it expires, and
			// the keeper writes every key on a new one.
			f.setRefuse("forbidden/")
			old := k.LeaseID()
			time.Sleep(20 * time.Second)
			synctest.Wait()
			require.NotEqual(t, old, k.LeaseID(), "the keeper should hold a new lease")
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				f := newFake()
				evs := &keyEventLog{}
				k, _ := newTest(t, f, func(c *Config) { c.Callbacks.OnKeyEvent = evs.record })
				tc.revoke(t, f, k)
				synctest.Wait()
				require.Equal(t, statemachine.Healthy, k.State())
				for _, key := range []string{"svc/a", "svc/b"} {
					v, ok := f.get(key)
					assert.True(t, ok && v.lease == k.LeaseID(), "%s = %+v (present %v), want on lease %x", key, v, ok, k.LeaseID())
				}
				_, ok := f.get("forbidden/x")
				assert.False(t, ok, "forbidden/x written although refused")
				assert.Equal(t, 3, k.Keys(), "the refused key stays registered")
				_, err := k.Token("forbidden/x")
				assert.ErrorIs(t, err, lkerrors.ErrPermissionDenied)
				assert.Equal(t, []Change{Refused}, evs.changes("forbidden/x"))

				before := f.count("put")
				time.Sleep(time.Minute)
				tries := f.count("put") - before
				assert.LessOrEqual(t, tries, 60/5+1, "tries of the refused key in a minute, want at most one per backoff cap")
				assert.GreaterOrEqual(t, tries, 60/6-1, "tries of the refused key in a minute, want it retried")
				assert.Equal(t, statemachine.Healthy, k.State())

				f.setRefuse("")
				time.Sleep(6 * time.Second)
				synctest.Wait()
				v, ok := f.get("forbidden/x")
				assert.True(t, ok && v.lease == k.LeaseID(), "forbidden/x = %+v (present %v) after the permission came back, want on lease %x", v, ok, k.LeaseID())
				tok, err := k.Token("forbidden/x")
				assert.NoError(t, err)
				assert.Equal(t, k.LeaseID(), tok.Lease)
				assert.Equal(t, []Change{Refused, Acquired}, evs.changes("forbidden/x"))
				mustClose(t, k)
			})
		})
	}
}

// TestAllKeysRefusedIsPermanent: when every key is refused the fault is not
// in the keys: Start reports it and nothing is dropped.
func TestAllKeysRefusedIsPermanent(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake()
		f.refuse = "svc/"
		k, _ := newTest(t, f, nil)
		ctx := context.Background()
		for _, key := range []string{"svc/a", "svc/b"} {
			if err := k.Register(ctx, key, "v"); err != nil {
				t.Fatal(err)
			}
		}
		if err := k.Start(ctx); !errors.Is(err, lkerrors.ErrPermissionDenied) {
			t.Errorf("Start() = %v, want PermissionDenied", err)
		}
		if n := k.Keys(); n != 2 {
			t.Errorf("registered keys = %d, want 2 (none dropped)", n)
		}
		mustClose(t, k)
	})
}

func TestDeregisterOnlyDeletesOwnKey(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake()
		k, _ := newTest(t, f, nil)
		startHealthy(t, k, "svc/a")
		// Another writer took the key over with its own lease.
		other, _, _ := f.grant(context.Background(), 60)
		if _, err := f.put(context.Background(), other, []kv{{"svc/a", "theirs"}}); err != nil {
			t.Fatal(err)
		}
		if err := k.Deregister(context.Background(), "svc/a"); err != nil {
			t.Fatalf("Deregister = %v", err)
		}
		if v, ok := f.get("svc/a"); !ok || v.value != "theirs" {
			t.Errorf("svc/a = %+v (present %v), want the other writer's value kept", v, ok)
		}
		mustClose(t, k)
	})
}

// TestRegisterDoesNotQueueBehindRewrite: while every key is written again
// on a new lease, one transaction after another, Register and Deregister
// wait for at most the transaction in flight, not for the whole re-write,
// and what they wrote stays written.
func TestRegisterDoesNotQueueBehindRewrite(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake()
		k, rec := newTest(t, f, nil)
		keys := make([]string, 1280)
		for i := range keys {
			keys[i] = fmt.Sprintf("svc/%04d", i)
		}
		startHealthy(t, k, keys...)
		const perCall = 20 * time.Millisecond
		f.setLatency(perCall) // 10 transactions, 200ms of re-write
		require.NoError(t, f.revoke(context.Background(), k.LeaseID()))
		// The next renewal finds the lease gone and grants a new one at
		// once; the re-write follows.
		for k.State() == statemachine.Healthy {
			time.Sleep(time.Millisecond)
		}
		time.Sleep(perCall + perCall/2)
		require.True(t, k.Deadline().After(time.Now()), "a new lease is held")
		require.NotEqual(t, statemachine.Healthy, k.State(), "the re-write has begun, not ended")
		began := time.Now()
		require.NoError(t, k.Register(context.Background(), "svc/new", "v"))
		regTook := time.Since(began)
		began = time.Now()
		require.NoError(t, k.Deregister(context.Background(), "svc/0000"))
		deregTook := time.Since(began)
		assert.LessOrEqual(t, regTook, 2*perCall, "Register waited behind the re-write")
		assert.LessOrEqual(t, deregTook, 2*perCall, "Deregister waited behind the re-write")
		time.Sleep(time.Second)
		synctest.Wait()
		require.Equal(t, statemachine.Healthy, k.State())
		healed := rec.at(statemachine.Healthy)
		for _, tr := range rec.transitions() {
			if tr.To == statemachine.Healthy {
				healed = tr.At
			}
		}
		assert.Greater(t, healed.Sub(began), 4*perCall, "the re-write went on after Register returned")
		v, ok := f.get("svc/new")
		assert.True(t, ok && v.lease == k.LeaseID(), "svc/new = %+v (present %v), want on the new lease", v, ok)
		_, ok = f.get("svc/0000")
		assert.False(t, ok, "svc/0000 written again by the re-write after Deregister")
		assert.Equal(t, len(keys), k.Keys())
		mustClose(t, k)
	})
}
