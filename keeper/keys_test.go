package keeper

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"testing/synctest"
	"time"

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
		time.Sleep(4 * time.Second)
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

// TestRefusedKeyDoesNotBlockOthers: a key etcd refuses for good is dropped
// when written with others; the rest of the registration stays healthy.
func TestRefusedKeyDoesNotBlockOthers(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake()
		f.refuse = "forbidden/"
		k, _ := newTest(t, f, nil)
		startHealthy(t, k, "svc/a", "forbidden/x", "svc/b")
		for _, key := range []string{"svc/a", "svc/b"} {
			if v, ok := f.get(key); !ok || v.lease != k.LeaseID() {
				t.Errorf("%s = %+v (present %v), want written", key, v, ok)
			}
		}
		if _, ok := f.get("forbidden/x"); ok {
			t.Errorf("forbidden/x written although refused")
		}
		k.mu.Lock()
		_, kept := k.keys["forbidden/x"]
		k.mu.Unlock()
		if kept {
			t.Errorf("forbidden/x still in the registration set, want dropped")
		}
		mustClose(t, k)
	})
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
		k.mu.Lock()
		n := len(k.keys)
		k.mu.Unlock()
		if n != 2 {
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
