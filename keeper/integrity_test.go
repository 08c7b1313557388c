package keeper_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	lkerrors "github.com/leasekeeper/leasekeeper/errors"
	"github.com/leasekeeper/leasekeeper/internal/test/testbed"
	"github.com/leasekeeper/leasekeeper/keeper"
	"github.com/leasekeeper/leasekeeper/statemachine"
)

// keyEvents are a keeper's key events.
type keyEvents = recorded[keeper.KeyEvent]

// waitKeyEvent waits for an event on key with change c and returns it.
func waitKeyEvent(t *testing.T, r *keyEvents, key string, c keeper.Change, timeout time.Duration) keeper.KeyEvent {
	t.Helper()
	_, ev := r.waitFor(t, fmt.Sprintf("%v event for %s", c, key),
		func(ev keeper.KeyEvent) bool { return ev.Key == key && ev.Change == c }, timeout)
	return ev
}

// integrityKeeper starts a keeper on cli holding keys registered with
// policy, and returns it with its key events.
func integrityKeeper(t *testing.T, cli *clientv3.Client, policy keeper.Policy, keys ...string) (*keeper.Keeper, *keyEvents) {
	t.Helper()
	cfg := keeper.DefaultConfig()
	cfg.TTL = 5 * time.Second
	cfg.Backoff.MaxDelay = time.Second
	cfg.WatchKeys = true
	evs := newRecorded[keeper.KeyEvent]()
	cfg.Callbacks.OnKeyEvent = evs.record
	k, err := keeper.New(cli, cfg)
	if err != nil {
		t.Fatal(err)
	}
	closeAtEnd(t, k)
	for _, key := range keys {
		if err := k.Register(context.Background(), key, "mine-"+key, keeper.WithPolicy(policy)); err != nil {
			t.Fatalf("Register(%q) = %v", key, err)
		}
	}
	return k, evs
}

func startOrFail(t *testing.T, k *keeper.Keeper) {
	t.Helper()
	if err := k.Start(context.Background()); err != nil {
		t.Fatalf("Start() = %v", err)
	}
}

// wantMine fails the test unless key holds the keeper's value on its lease,
// and returns its mod revision.
func wantMine(t *testing.T, cli *clientv3.Client, k *keeper.Keeper, key string) int64 {
	t.Helper()
	resp, err := cli.Get(context.Background(), key)
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "mine-"+key || clientv3.LeaseID(resp.Kvs[0].Lease) != k.LeaseID() {
		t.Fatalf("%s = %v, want %q on lease %x", key, resp.Kvs, "mine-"+key, k.LeaseID())
	}
	return resp.Kvs[0].ModRevision
}

// TestIntegrityDeleteRestored: a key deleted behind the keeper's back is
// written back by the next write the cluster sees, one round trip after
// the watch event.
func TestIntegrityDeleteRestored(t *testing.T) {
	cli := startEtcd(t)
	k, evs := integrityKeeper(t, cli, keeper.Restore, "svc/a", "svc/b")
	startOrFail(t, k)
	del, err := cli.Delete(context.Background(), "svc/a")
	if err != nil || del.Deleted != 1 {
		t.Fatalf("delete = %v, %v", del, err)
	}
	began := time.Now()
	ev := waitKeyEvent(t, evs, "svc/a", keeper.Deleted, 5*time.Second)
	took := time.Since(began)
	if !ev.Ours || ev.Holder != k.LeaseID() || ev.Revision != del.Header.Revision || ev.Err != nil {
		t.Errorf("event = %+v, want ours on lease %x at revision %d", ev, k.LeaseID(), del.Header.Revision)
	}
	if rev := wantMine(t, cli, k, "svc/a"); rev != del.Header.Revision+1 {
		t.Errorf("restored at revision %d, want %d: the write right after the delete", rev, del.Header.Revision+1)
	}
	wantMine(t, cli, k, "svc/b")
	if got := k.State(); got != statemachine.Healthy {
		t.Errorf("State() = %v, want healthy", got)
	}
	t.Logf("deleted at revision %d, restored at %d, %v after the delete", del.Header.Revision, del.Header.Revision+1, took.Round(time.Microsecond))
}

// TestIntegrityOverwrite: a key written by another client is restored or
// only reported, by its policy.
func TestIntegrityOverwrite(t *testing.T) {
	cli := startEtcd(t)
	for _, tc := range []struct {
		name   string
		policy keeper.Policy
	}{
		{"restore", keeper.Restore},
		{"report only", keeper.ReportOnly},
	} {
		t.Run(tc.name, func(t *testing.T) {
			key := "svc/" + strings.ReplaceAll(tc.name, " ", "-")
			k, evs := integrityKeeper(t, cli, tc.policy, key)
			startOrFail(t, k)
			before, err := k.Token(key)
			if err != nil {
				t.Fatalf("Token(%q) = %v", key, err)
			}
			lease, err := cli.Grant(context.Background(), 30)
			if err != nil {
				t.Fatal(err)
			}
			put, err := cli.Put(context.Background(), key, "theirs", clientv3.WithLease(lease.ID))
			if err != nil {
				t.Fatal(err)
			}
			ev := waitKeyEvent(t, evs, key, keeper.Overwritten, 5*time.Second)
			if ev.Revision != put.Header.Revision || ev.Policy != tc.policy {
				t.Errorf("event = %+v, want revision %d, policy %v", ev, put.Header.Revision, tc.policy)
			}
			switch tc.policy {
			case keeper.Restore:
				if !ev.Ours || ev.Holder != k.LeaseID() {
					t.Errorf("event = %+v, want the keeper to win", ev)
				}
				wantMine(t, cli, k, key)
				after, err := k.Token(key)
				if err != nil || after.Revision != before.Revision {
					t.Errorf("Token after restore = %v, %v; want revision %d kept (the key was never absent)", after, err, before.Revision)
				}
			case keeper.ReportOnly:
				if ev.Ours || ev.Holder != lease.ID {
					t.Errorf("event = %+v, want the other writer (lease %x) to keep it", ev, lease.ID)
				}
				if v, l, _ := keyLease(t, cli, key); v != "theirs" || l != lease.ID {
					t.Errorf("%s = %q on %x, want theirs left alone", key, v, l)
				}
				if _, err := k.Token(key); !errors.Is(err, keeper.ErrNotHeld) {
					t.Errorf("Token after a reported overwrite = %v, want ErrNotHeld", err)
				}
			}
		})
	}
}

// TestIntegrityExclusiveRace: two keepers race for one exclusive key.
// Exactly one holds it at any time, the other reports ErrKeyTaken without
// overwriting it, and takes it over (with a higher fencing token) once the
// holder lets go.
func TestIntegrityExclusiveRace(t *testing.T) {
	cli := startEtcd(t)
	const key = "svc/leader"
	var ks [2]*keeper.Keeper
	var evs [2]*keyEvents
	for i := range ks {
		ks[i], evs[i] = integrityKeeper(t, cli, keeper.Exclusive, key)
	}
	var wg sync.WaitGroup
	for _, k := range ks {
		wg.Go(func() { startOrFail(t, k) })
	}
	wg.Wait()

	// Sample both tokens while the race settles and a while after.
	holder := -1
	for end := time.Now().Add(2 * time.Second); time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
		var held []int
		for i, k := range ks {
			if _, err := k.Token(key); err == nil {
				held = append(held, i)
			}
		}
		if len(held) > 1 {
			t.Fatalf("both keepers hold %s", key)
		}
		if len(held) == 1 {
			holder = held[0]
		}
	}
	if holder < 0 {
		t.Fatalf("no keeper holds %s", key)
	}
	win, lose := ks[holder], ks[1-holder]
	tok, _ := win.Token(key)
	_, err := lose.Token(key)
	var te *keeper.KeyTakenError
	if !errors.Is(err, keeper.ErrKeyTaken) || !errors.As(err, &te) || te.Holder != win.LeaseID() {
		t.Fatalf("loser's Token = %v, want ErrKeyTaken naming lease %x", err, win.LeaseID())
	}
	if lkerrors.KindOf(lkerrors.Classify(err)) != lkerrors.KeyTaken {
		t.Errorf("KindOf(%v) = %v, want key taken", err, lkerrors.KindOf(err))
	}
	waitKeyEvent(t, evs[1-holder], key, keeper.Taken, time.Second)
	if err := lose.Register(context.Background(), key, "mine-"+key, keeper.WithPolicy(keeper.Exclusive)); !errors.Is(err, keeper.ErrKeyTaken) {
		t.Errorf("Register of the taken key = %v, want ErrKeyTaken", err)
	}
	if v, l, _ := keyLease(t, cli, key); l != win.LeaseID() || v != "mine-"+key {
		t.Errorf("%s on lease %x, want the holder's %x", key, l, win.LeaseID())
	}

	// The holder lets go: the other takes over at once, with a higher token.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := win.Close(ctx); err != nil {
		t.Fatal(err)
	}
	ev := waitKeyEvent(t, evs[1-holder], key, keeper.Acquired, 5*time.Second)
	next, err := lose.Token(key)
	if err != nil || !ev.Ours || next.Lease != lose.LeaseID() || next.Revision <= tok.Revision {
		t.Errorf("after the holder closed: event %+v, Token = %v, %v; want the other to hold it with revision above %d", ev, next, err, tok.Revision)
	}
	t.Logf("holder token %v; after it closed the other acquired with %v", tok, next)
}

// TestIntegrityRestoreContestBacksOff: two keepers restoring one key
// against each other slow down by the backoff instead of writing it as
// fast as the cluster allows.
func TestIntegrityRestoreContestBacksOff(t *testing.T) {
	cli := startEtcd(t)
	const key = "svc/contested"
	a, _ := integrityKeeper(t, cli, keeper.Restore, key)
	startOrFail(t, a)
	first := wantMine(t, cli, a, key)
	b, _ := integrityKeeper(t, cli, keeper.Restore, key)
	startOrFail(t, b)
	time.Sleep(3 * time.Second)
	resp, err := cli.Get(context.Background(), key)
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("get = %v, %v", resp, err)
	}
	writes := resp.Kvs[0].ModRevision - first
	// Each keeper restores at once the first time, then at most once per
	// backoff step (100ms doubling to the 1s cap): well under 30 writes in
	// 3s; an unchecked contest writes thousands.
	if writes > 30 {
		t.Errorf("%d writes of %s in 3s of contest, want the backoff to pace them", writes, key)
	}
	t.Logf("%d writes of %s in 3s of contest", writes, key)
}

// TestIntegrityCompactedWhileCutOff: while the keeper is cut off, its keys
// are changed and the history compacted. Its watch cannot resume from
// where it stopped; it reads the keys again and puts them right.
func TestIntegrityCompactedWhileCutOff(t *testing.T) {
	direct := startEtcd(t)
	proxy, err := testbed.NewProxy(strings.TrimPrefix(direct.Endpoints()[0], "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer proxy.Close()
	cli := newClient(t, clientv3.Config{Endpoints: []string{proxy.URL()}})
	k, evs := integrityKeeper(t, cli, keeper.Restore, "svc/a", "svc/b", "svc/c")
	startOrFail(t, k)

	proxy.Refuse()
	ctx := context.Background()
	if _, err := direct.Delete(ctx, "svc/a"); err != nil {
		t.Fatal(err)
	}
	if _, err := direct.Put(ctx, "svc/b", "theirs"); err != nil {
		t.Fatal(err)
	}
	var last *clientv3.PutResponse
	for range 10 {
		if last, err = direct.Put(ctx, "other/noise", "x"); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := direct.Compact(ctx, last.Header.Revision); err != nil {
		t.Fatal(err)
	}
	if err := proxy.Accept(); err != nil {
		t.Fatal(err)
	}

	del := waitKeyEvent(t, evs, "svc/a", keeper.Deleted, 10*time.Second)
	over := waitKeyEvent(t, evs, "svc/b", keeper.Overwritten, 10*time.Second)
	for _, ev := range []keeper.KeyEvent{del, over} {
		if !ev.Ours || ev.Revision < last.Header.Revision {
			t.Errorf("event %+v: want restored, seen by reading the keys at or after the compaction (%d)", ev, last.Header.Revision)
		}
	}
	for _, key := range []string{"svc/a", "svc/b", "svc/c"} {
		wantMine(t, direct, k, key)
	}
}
