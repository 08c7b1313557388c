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

	lkerrors "github.com/leasekeeper/leasekeeper/errors"
	"github.com/leasekeeper/leasekeeper/statemachine"
)

// TestExclusiveRetriesByBackoff: without a watch to say the key is free,
// a keeper whose exclusive key another holder has keeps trying by the
// backoff (and at its renewals), never overwrites the holder, and takes
// the key once the holder's lease is gone.
func TestExclusiveRetriesByBackoff(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake()
		ctx := context.Background()
		var mu sync.Mutex
		var events []KeyEvent
		a, _ := newTest(t, f, nil)
		b, _ := newTest(t, f, func(c *Config) {
			c.Callbacks.OnKeyEvent = func(ev KeyEvent) {
				mu.Lock()
				defer mu.Unlock()
				events = append(events, ev)
			}
		})
		for _, k := range []*Keeper{a, b} {
			if err := k.Register(ctx, "svc/leader", "v", WithPolicy(Exclusive)); err != nil {
				t.Fatal(err)
			}
			if err := k.Start(ctx); err != nil {
				t.Fatalf("Start() = %v", err)
			}
		}
		if _, err := a.Token("svc/leader"); err != nil {
			t.Fatalf("first keeper's Token = %v, want it to hold the key", err)
		}
		_, err := b.Token("svc/leader")
		var te *KeyTakenError
		if !errors.As(err, &te) || te.Holder != a.LeaseID() || lkerrors.KindOf(lkerrors.Classify(err)) != lkerrors.KeyTaken {
			t.Fatalf("second keeper's Token = %v, want KeyTakenError naming lease %x", err, a.LeaseID())
		}
		if err := b.Register(ctx, "svc/leader", "v", WithPolicy(Exclusive)); !errors.Is(err, ErrKeyTaken) {
			t.Errorf("Register of a taken key = %v, want ErrKeyTaken", err)
		}

		before := f.count("acquire")
		time.Sleep(time.Minute)
		tries := f.count("acquire") - before
		// The backoff (100ms doubling to 5s, jitter ±20%) and the renewals
		// (every 3.3s) each try: at most 6+60/4 and 18 in a minute.
		t.Logf("%d tries in a minute while the key was taken", tries)
		if tries < 12 || tries > 45 {
			t.Errorf("%d tries in a minute while the key was taken, want between 12 and 45", tries)
		}
		if v, _ := f.get("svc/leader"); v.lease != a.LeaseID() {
			t.Fatalf("svc/leader on lease %x, want the holder's %x untouched", v.lease, a.LeaseID())
		}

		mustClose(t, a) // revokes: the key is gone
		time.Sleep(6 * time.Second)
		tok, err := b.Token("svc/leader")
		if err != nil || tok.Lease != b.LeaseID() {
			t.Fatalf("after the holder closed: Token = %v, %v; want the second keeper to hold the key", tok, err)
		}
		synctest.Wait()
		mu.Lock()
		defer mu.Unlock()
		if n := len(events); n < 2 || events[0].Change != Taken || events[n-1].Change != Acquired || !events[n-1].Ours {
			t.Errorf("events = %+v, want taken first and acquired last", events)
		}
		mustClose(t, b)
	})
}

// TestTakenKeyTriesDoNotFailRenewals: a keeper whose exclusive key another
// holder has tries it at its renewals; a try that times out (its request
// reached a silent member) does not fail the renewal: the keeper does not
// hold the key either way, and stays Healthy.
func TestTakenKeyTriesDoNotFailRenewals(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake()
		ctx := context.Background()
		a, _ := newTest(t, f, nil)
		b, rec := newTest(t, f, nil)
		for _, k := range []*Keeper{a, b} {
			require.NoError(t, k.Register(ctx, "svc/"+fmt.Sprint(k == a), "v"))
			if err := k.Register(ctx, "svc/leader", "v", WithPolicy(Exclusive)); err != nil {
				require.ErrorIs(t, err, ErrKeyTaken)
			}
			require.NoError(t, k.Start(ctx))
		}
		f.setAcquireHang(true)
		before := f.count("acquire")
		time.Sleep(time.Minute)
		synctest.Wait()
		assert.Greater(t, f.count("acquire")-before, 10, "tries of the taken key in a minute")
		assert.Equal(t, []statemachine.State{statemachine.Idle, statemachine.Healthy}, rec.path())
		f.setAcquireHang(false)
		mustClose(t, a)
		time.Sleep(10 * time.Second)
		tok, err := b.Token("svc/leader")
		require.NoError(t, err, "the key is free once its holder closed")
		assert.Equal(t, b.LeaseID(), tok.Lease)
		mustClose(t, b)
	})
}
