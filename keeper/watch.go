package keeper

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	lkerrors "github.com/leasekeeper/leasekeeper/errors"
)

// errWatchClosed: the watch ended without saying why.
var errWatchClosed = errors.New("keeper: watch closed")

// errCompacted: the history the watch needed is compacted; reading the
// keys again is all that can be done, and it can be done at once.
var errCompacted = errors.New("keeper: watch history compacted")

// fight counts the restores of one key in a row that another writer undid,
// so that two writers restoring one key against each other back off.
type fight struct {
	n    int
	last time.Time
}

// startWatchLocked starts the watcher, once, unless watching is off.
func (k *Keeper) startWatchLocked() {
	if k.watchOn || k.closed || k.cfg.DisableWatch || !k.b.watches() {
		return
	}
	k.watchOn = true
	k.wg.Add(1)
	go k.watchLoop()
}

// rewatchLocked tells the watcher to widen its range if key is outside it.
func (k *Keeper) rewatchLocked(key string) {
	if !k.watchOn || (key >= k.wrange[0] && key < k.wrange[1]) {
		return
	}
	select {
	case k.rewatch <- struct{}{}:
	default:
	}
}

// keyRangeLocked returns the smallest range holding every key.
func (k *Keeper) keyRangeLocked() (start, end string, ok bool) {
	for key := range k.keys {
		if !ok || key < start {
			start = key
		}
		if !ok || key >= end {
			end = key + "\x00"
		}
		ok = true
	}
	return start, end, ok
}

// watchLoop watches the keeper's keys until Close: it reads them, acts on
// what differs from what the keeper wrote, and watches from the revision it
// read. When the watch breaks (compaction, a lost leader, an error) it
// reads the keys again after a backoff, so no change goes unnoticed; when
// the key range changes it starts over at once.
func (k *Keeper) watchLoop() {
	defer k.wg.Done()
	fails := 0
	for {
		k.mu.Lock()
		start, end, ok := k.keyRangeLocked()
		k.wrange = [2]string{start, end}
		k.mu.Unlock()
		var err error
		if ok {
			err = k.watchOnce(start, end)
		} else {
			select {
			case <-k.ctx.Done():
			case <-k.rewatch:
			}
		}
		switch {
		case k.ctx.Err() != nil:
			return
		case err == nil:
			fails = 0
			continue
		case errors.Is(err, errCompacted):
			k.log.Info("key watch history compacted; reading the keys again", zap.Error(err))
			continue
		}
		fails++
		kind := lkerrors.KindOf(err)
		k.log.Info("key watch broken; reading the keys again", zap.String("kind", kind.String()), zap.Error(err))
		t := time.NewTimer(k.cfg.Backoff.delay(fails, kind, rand.Float64()))
		select {
		case <-k.ctx.Done():
			t.Stop()
			return
		case <-t.C:
		case <-k.rewatch:
			t.Stop()
		}
	}
}

// watchOnce reads [start, end), reconciles every key in it, then watches
// the range from the next revision. It returns nil when the range changed,
// else why the watch ended.
func (k *Keeper) watchOnce(start, end string) error {
	ctx, cancel := context.WithCancel(k.ctx)
	defer cancel()
	k.mu.Lock()
	tm := k.timing()
	keys := make([]string, 0, len(k.keys))
	for key := range k.keys {
		keys = append(keys, key)
	}
	k.mu.Unlock()
	gctx, gcancel := context.WithTimeout(ctx, tm.renewTimeout)
	rev, kvs, err := k.b.read(gctx, start, end)
	gcancel()
	if err != nil {
		return k.classify(err)
	}
	found := make(map[string]*mvccpb.KeyValue, len(kvs))
	for _, kv := range kvs {
		found[string(kv.Key)] = kv
	}
	slices.Sort(keys)
	for _, key := range keys {
		if key >= start && key < end {
			k.reconcile(key, found[key], rev)
		}
	}
	ch := k.b.watch(ctx, start, end, rev+1)
	for {
		select {
		case <-k.rewatch:
			return nil
		case resp, ok := <-ch:
			if !ok {
				return errWatchClosed
			}
			if resp.CompactRevision != 0 {
				return fmt.Errorf("%w: at revision %d", errCompacted, resp.CompactRevision)
			}
			if err := resp.Err(); err != nil {
				return k.classify(err)
			}
			for _, ev := range resp.Events {
				var obs *mvccpb.KeyValue
				if ev.Type == mvccpb.PUT {
					obs = ev.Kv
				}
				k.reconcile(string(ev.Kv.Key), obs, ev.Kv.ModRevision)
			}
		}
	}
}

// reconcile acts on key as seen at rev: obs is its value then, nil when it
// did not exist. A key that still holds what the keeper wrote, or whose
// change the keeper's own later writes superseded, needs nothing; neither
// does one while the keeper holds no live lease (recovery writes every key
// again) or one a write is due for anyway. Otherwise the key's policy says
// what to do, and a KeyEvent says what happened.
func (k *Keeper) reconcile(key string, obs *mvccpb.KeyValue, rev int64) {
	k.writeMu.Lock()
	defer k.writeMu.Unlock()
	k.mu.Lock()
	defer k.mu.Unlock()
	value, registered := k.keys[key]
	o, policy, now := k.own[key], k.policyLocked(key), time.Now()
	mine := o.lease != 0 && o.lease == k.leaseID
	switch {
	case !registered || k.closed:
		return
	case mine && obs != nil && obs.ModRevision <= o.rev, mine && obs == nil && rev <= o.rev:
		return // the keeper's own write, or older than it
	case obs != nil && clientv3.LeaseID(obs.Lease) == k.leaseID && string(obs.Value) == value:
		if !k.pending[key] {
			k.own[key] = owned{lease: k.leaseID, rev: obs.ModRevision, create: obs.CreateRevision}
		}
		return
	case !k.liveLocked(now), k.pending[key] && policy != Exclusive:
		return
	}
	ev := KeyEvent{Key: key, Change: Deleted, Policy: policy, Revision: rev, At: now}
	if obs != nil {
		ev.Change, ev.Holder = Overwritten, clientv3.LeaseID(obs.Lease)
	}
	switch policy {
	case ReportOnly:
		if o.lease == 0 && ((obs == nil && o.gone) || (obs != nil && obs.ModRevision == o.seen)) {
			return // reported already
		}
		k.own[key] = owned{seen: rev, gone: obs == nil}
		k.keyEventLocked(ev)
	case Exclusive:
		k.exclusiveLocked(key, value, obs, ev)
	default:
		k.restoreLocked(key, value, ev)
	}
}

// restoreLocked writes key back, at once the first time and by the
// backoff while another writer keeps undoing it. Called with writeMu and
// mu held; it releases mu while it writes.
func (k *Keeper) restoreLocked(key, value string, ev KeyEvent) {
	f := k.fights[key]
	if ev.At.Sub(f.last) > k.cfg.Backoff.MaxDelay {
		f.n = 0
	}
	f.n++
	f.last = ev.At
	k.fights[key] = f
	k.pending[key] = true
	delete(k.own, key)
	if f.n > 1 {
		k.keyEventLocked(ev)
		k.scheduleIntegrityLocked(lkerrors.Unknown)
		return
	}
	id, err := k.writeBackLocked(kv{key, value}, Restore)
	if ev.Err = err; err == nil {
		ev.Ours, ev.Holder = true, id
	}
	k.keyEventLocked(ev)
}

// writeBackLocked writes p by policy with the lease held, bounded like an
// attempt, and acts on a failure. Called with writeMu and mu held; it
// releases mu while it writes. It returns the lease it wrote with.
func (k *Keeper) writeBackLocked(p kv, policy Policy) (clientv3.LeaseID, error) {
	id, deadline, tm := k.leaseID, k.deadline, k.timing()
	k.mu.Unlock()
	ctx, cancel := k.attemptCtx(tm, deadline)
	err := k.writeKey(ctx, id, p, policy)
	cancel()
	k.mu.Lock()
	if err != nil {
		k.writeFailedLocked(id, err)
	}
	return id, err
}

// writeFailedLocked acts on a write-back that failed: a lease the server
// no longer knows is lost (the keys are gone with it, and a new lease
// writes them all); anything else brings the next attempt forward.
func (k *Keeper) writeFailedLocked(id clientv3.LeaseID, err error) {
	switch {
	case lkerrors.KindOf(err) == lkerrors.LeaseExpired && id == k.leaseID && !k.gone && !k.closed:
		k.leaseLostLocked(err, time.Now())
	case lkerrors.KindOf(err) != lkerrors.KeyTaken:
		k.scheduleRetryLocked(lkerrors.KindOf(err))
	}
}

// exclusiveLocked acts on a change to an exclusive key: another holder's
// value is never overwritten; a deleted key is claimed at once. Called with
// writeMu and mu held; it releases mu while it writes.
func (k *Keeper) exclusiveLocked(key, value string, obs *mvccpb.KeyValue, ev KeyEvent) {
	_, held := k.own[key]
	k.pending[key] = true
	delete(k.own, key)
	if obs != nil {
		te := &KeyTakenError{Key: key, Holder: ev.Holder, CreateRevision: obs.CreateRevision}
		prev := k.taken[key]
		k.taken[key] = te
		if !held {
			ev.Change = Taken
		}
		if held || prev == nil || prev.Holder != te.Holder {
			k.keyEventLocked(ev)
		}
		k.scheduleIntegrityLocked(lkerrors.KeyTaken)
		return
	}
	if held {
		k.keyEventLocked(ev)
	}
	_, _ = k.writeBackLocked(kv{key, value}, Exclusive)
}

// scheduleIntegrityLocked arms, unless it is armed, the timer that writes
// pending keys again by the backoff: exclusive keys another holder has and
// restores another writer keeps undoing.
func (k *Keeper) scheduleIntegrityLocked(kind lkerrors.Kind) {
	if k.closed || k.integT != nil {
		return
	}
	k.integN++
	k.integT = time.AfterFunc(k.cfg.Backoff.delay(k.integN, kind, rand.Float64()), k.integrityRetry)
}

func (k *Keeper) integrityRetry() {
	k.mu.Lock()
	k.integT = nil
	if k.closed || k.running || !k.liveLocked(time.Now()) || len(k.pending) == 0 {
		k.mu.Unlock()
		return
	}
	id, deadline, tm := k.leaseID, k.deadline, k.timing()
	k.wg.Add(1)
	k.mu.Unlock()
	defer k.wg.Done()
	if err := k.writePending(id, deadline, tm); err != nil {
		k.mu.Lock()
		k.writeFailedLocked(id, err)
		k.mu.Unlock()
	}
}
