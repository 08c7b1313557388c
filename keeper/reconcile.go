package keeper

import (
	"math/rand/v2"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	lkerrors "github.com/leasekeeper/leasekeeper/errors"
)

// The registry's integrity: what it does with a change to one of its keys
// that the watch saw, by the key's policy, and the timer that retries the
// keys it could not write.

// reconcile acts on key as seen at rev: obs is its value then, nil when it
// did not exist. A key that still holds what the keeper wrote, or whose
// change the keeper's own later writes superseded, needs nothing; neither
// does one while the keeper holds no live lease (recovery writes every key
// again) or one a write is due for anyway. Otherwise the key's policy says
// what to do, and a KeyEvent says what happened.
func (r *registry) reconcile(key string, obs *mvccpb.KeyValue, rev int64) {
	if r.wmu.lockLife(&r.k.life) != nil {
		return
	}
	defer r.wmu.unlock()
	r.mu.Lock()
	defer r.mu.Unlock()
	rec := r.keys.get(key)
	if rec == nil || r.k.life.closed() {
		return
	}
	now := time.Now()
	v := r.k.loop.view(now)
	o := rec.own
	mine := o.lease != 0 && o.lease == v.id
	switch {
	case mine && obs != nil && obs.ModRevision <= o.rev, mine && obs == nil && rev <= o.rev:
		return // the keeper's own write, or older than it
	case v.id != 0 && obs != nil && clientv3.LeaseID(obs.Lease) == v.id && string(obs.Value) == rec.value:
		if !rec.pending {
			rec.own = owned{lease: v.id, rev: obs.ModRevision, create: obs.CreateRevision}
		}
		return
	case !v.live, rec.pending && rec.policy != Exclusive:
		return
	}
	ev := KeyEvent{Key: key, Change: Deleted, Policy: rec.policy, Revision: rev, At: now}
	if obs != nil {
		ev.Change, ev.Holder = Overwritten, clientv3.LeaseID(obs.Lease)
	}
	switch rec.policy {
	case ReportOnly:
		if o.lease == 0 && ((obs == nil && o.gone) || (obs != nil && obs.ModRevision == o.seen)) {
			return // reported already
		}
		rec.own = owned{seen: rev, gone: obs == nil}
		r.k.disp.push(ev)
	case Exclusive:
		r.exclusiveLocked(v, key, rec, obs, ev)
	default:
		r.restoreLocked(v, key, rec, ev)
	}
}

// restoreLocked writes key back, at once the first time and by the
// backoff while another writer keeps undoing it. Called with wmu and mu
// held; it releases mu while it writes.
func (r *registry) restoreLocked(v leaseView, key string, rec *record, ev KeyEvent) {
	f := rec.fight
	if time.Duration(ev.At.UnixNano()-f.last) > r.k.cfg.Backoff.MaxDelay {
		f.n = 0
	}
	f.n++
	f.last = ev.At.UnixNano()
	rec.fight, rec.pending, rec.own = f, true, owned{}
	if f.n > 1 {
		r.k.disp.push(ev)
		r.scheduleRetryLocked(lkerrors.Unknown)
		return
	}
	err := r.writeBackLocked(v, kv{key, rec.value}, Restore)
	if ev.Err = err; err == nil {
		ev.Ours, ev.Holder = true, v.id
	}
	r.k.disp.push(ev)
}

// exclusiveLocked acts on a change to an exclusive key: another holder's
// value is never overwritten; a deleted key is claimed at once. Called with
// wmu and mu held; it releases mu while it writes.
func (r *registry) exclusiveLocked(v leaseView, key string, rec *record, obs *mvccpb.KeyValue, ev KeyEvent) {
	held := rec.own.lease != 0
	rec.pending, rec.own = true, owned{}
	if obs != nil {
		te := &KeyTakenError{Key: key, Holder: ev.Holder, CreateRevision: obs.CreateRevision}
		prev := rec.taken
		rec.taken = te
		if !held {
			ev.Change = Taken
		}
		if held || prev == nil || prev.Holder != te.Holder {
			r.k.disp.push(ev)
		}
		r.scheduleRetryLocked(lkerrors.KeyTaken)
		return
	}
	if held {
		r.k.disp.push(ev)
	}
	_ = r.writeBackLocked(v, kv{key, rec.value}, Exclusive)
}

// writeBackLocked writes p by policy with lease v.id, bounded like an
// attempt, and tells the lease loop of a failure. Called with wmu and mu
// held; it releases mu while it writes.
func (r *registry) writeBackLocked(v leaseView, p kv, policy Policy) error {
	r.mu.Unlock()
	ctx, cancel := r.k.life.within(v.tm.call, v.deadline)
	err := r.writeKey(ctx, v.id, p, policy)
	cancel()
	if err != nil {
		r.k.loop.writeFailed(v.id, err)
	}
	r.mu.Lock()
	return err
}

// scheduleRetryLocked arms, unless it is armed, the timer that writes
// pending keys again by the backoff: keys etcd refused, exclusive keys
// another holder has, and restores another writer keeps undoing.
func (r *registry) scheduleRetryLocked(kind lkerrors.Kind) {
	if r.k.life.closed() || r.retryT != nil {
		return
	}
	r.retryN++
	r.retryT = time.AfterFunc(r.k.cfg.Backoff.delay(r.retryN, kind, rand.Float64()), r.retry)
}

// retry is the retry timer's function: it releases the keys held after a
// refusal and, while the lease is live, writes every pending key. Without
// a live lease the next successful attempt writes them.
func (r *registry) retry() {
	if !r.k.life.begin() {
		return
	}
	defer r.k.life.end()
	r.mu.Lock()
	r.retryT = nil
	due := false
	for _, rec := range r.keys.all() {
		rec.held = false
		due = due || rec.pending
	}
	v := r.k.loop.view(time.Now())
	r.mu.Unlock()
	if !due || !v.live {
		return
	}
	if err := r.writePending(v); err != nil {
		r.k.loop.writeFailed(v.id, err)
	}
}
