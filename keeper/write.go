package keeper

import (
	"context"
	"slices"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	lkerrors "github.com/leasekeeper/leasekeeper/errors"
)

// The registry's writes. Each RPC takes wmu on its own and reads the
// records it writes just before, so a long rewrite never holds wmu across
// more than one transaction and never writes a value that was replaced or a
// key that was deregistered meanwhile.

// refusal is a key etcd refused to write for good, and why.
type refusal struct {
	key string
	err error
}

// writePending writes the keys not yet written with lease v.id, bounded by
// v's timing and deadline: exclusive keys one transaction each, the others
// in transactions of at most MaxTxnOps keys. A key is marked written only
// if it still has the value that was written. An exclusive key another
// holder has is no error here: it is reported and retried by the backoff.
// Keys etcd refuses for good are held, reported and retried by the backoff
// while the others stay registered, unless no key at all is written with
// the lease: then the fault is not in the keys, and the refusal is
// returned.
func (r *registry) writePending(v leaseView) error {
	var exclusive, batch []string
	taken := map[string]bool{}
	r.mu.Lock()
	if r.lease != v.id {
		r.mu.Unlock()
		return nil
	}
	for key, rec := range r.keys.all() {
		switch {
		case !rec.toWrite():
		case rec.policy == Exclusive:
			exclusive = append(exclusive, key)
			taken[key] = rec.taken != nil
		default:
			batch = append(batch, key)
		}
	}
	r.mu.Unlock()
	slices.Sort(exclusive)
	slices.Sort(batch)
	for _, key := range exclusive {
		err := r.writeOne(v, key)
		switch {
		case err == nil, lkerrors.KindOf(err) == lkerrors.KeyTaken:
		case taken[key]:
			// Another holder had it: the keeper does not hold it either way,
			// so the failed try does not fail the attempt. The retry timer
			// tries again.
			r.k.logger().Debug("exclusive key held by another: try failed", zap.String("key", key), zap.Error(err))
			r.mu.Lock()
			r.scheduleRetryLocked(lkerrors.KindOf(err))
			r.mu.Unlock()
		default:
			return err
		}
	}
	var refused []refusal
	for chunk := range slices.Chunk(batch, r.k.cfg.MaxTxnOps) {
		ref, err := r.putChunk(v, chunk)
		refused = append(refused, ref...)
		if err != nil {
			return err
		}
	}
	return r.hold(v.id, refused)
}

// pending reports whether writePending with lease id would write a key.
func (r *registry) pending(id clientv3.LeaseID) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.lease != id {
		return false
	}
	for _, rec := range r.keys.all() {
		if rec.toWrite() {
			return true
		}
	}
	return false
}

// writeOne writes key by its policy if it is still pending, in one RPC.
func (r *registry) writeOne(v leaseView, key string) error {
	if err := r.wmu.lockLife(&r.k.life); err != nil {
		return r.classify(err)
	}
	defer r.wmu.unlock()
	r.mu.Lock()
	rec := r.keys.get(key)
	if rec == nil || !rec.pending || r.lease != v.id {
		r.mu.Unlock()
		return nil
	}
	p, policy := kv{key, rec.value}, rec.policy
	r.mu.Unlock()
	ctx, cancel := r.k.life.within(v.tm.call, v.deadline)
	defer cancel()
	return r.writeKey(ctx, v.id, p, policy)
}

// putChunk writes the keys of chunk in one transaction. When etcd refuses
// it for good it writes them one by one, so that one bad key cannot keep
// the others unregistered, and returns the keys refused.
func (r *registry) putChunk(v leaseView, chunk []string) ([]refusal, error) {
	err := r.put(v, chunk)
	switch {
	case err == nil:
		return nil, nil
	case !r.refused(err):
		return nil, err
	case len(chunk) == 1:
		return []refusal{{chunk[0], err}}, nil
	}
	var refused []refusal
	for _, key := range chunk {
		switch err := r.put(v, []string{key}); {
		case err == nil:
		case !r.refused(err):
			return refused, err
		default:
			refused = append(refused, refusal{key, err})
		}
	}
	return refused, nil
}

// refused reports whether err is etcd refusing a write for good, and not
// the keeper closing.
func (r *registry) refused(err error) bool {
	return permanent(err) && !r.k.life.closed()
}

// put writes those of keys that are still pending, with their current
// values, in one transaction, and records them.
func (r *registry) put(v leaseView, keys []string) error {
	if err := r.wmu.lockLife(&r.k.life); err != nil {
		return r.classify(err)
	}
	defer r.wmu.unlock()
	r.mu.Lock()
	kvs := make([]kv, 0, len(keys))
	for _, key := range keys {
		if rec := r.keys.get(key); rec != nil && rec.toWrite() && r.lease == v.id {
			kvs = append(kvs, kv{key, rec.value})
		}
	}
	r.mu.Unlock()
	if len(kvs) == 0 {
		return nil
	}
	ctx, cancel := r.k.life.within(v.tm.call, v.deadline)
	defer cancel()
	sent := time.Now()
	res, err := r.k.hub.b.put(ctx, v.id, kvs)
	if err != nil {
		return r.classify(err)
	}
	r.k.hub.calls.sample(sent)
	r.mu.Lock()
	defer r.mu.Unlock()
	now := time.Now()
	for i, p := range kvs {
		if _, healed := r.recordLocked(v.id, p, res.rev, res.create[i]); healed {
			r.k.disp.push(KeyEvent{Key: p.key, Change: Acquired, Policy: r.keys.get(p.key).policy, Ours: true, Holder: v.id, Revision: res.rev, At: now})
		}
	}
	return nil
}

// hold acts on the keys refused while writing with lease id: unless no key
// is written with it (the refusal is then returned), each is held until
// the retry timer, and reported once.
func (r *registry) hold(id clientv3.LeaseID, refused []refusal) error {
	if len(refused) == 0 {
		return nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	written := false
	for _, rec := range r.keys.all() {
		if !rec.pending && rec.own.lease == id {
			written = true
			break
		}
	}
	if !written {
		return refused[0].err
	}
	now := time.Now()
	for _, f := range refused {
		rec := r.keys.get(f.key)
		if rec == nil || !rec.pending {
			continue
		}
		if rec.refused == nil {
			r.k.disp.push(KeyEvent{Key: f.key, Change: Refused, Policy: rec.policy, Err: f.err, At: now})
		}
		rec.refused, rec.held = f.err, true
	}
	r.scheduleRetryLocked(lkerrors.KindOf(refused[0].err))
	return nil
}

// recordLocked marks p written with lease id at revision rev, if the key
// still has that value and the registry that lease. It reports whether it
// did, and whether the key had been refused before.
func (r *registry) recordLocked(id clientv3.LeaseID, p kv, rev, create int64) (ok, healed bool) {
	rec := r.keys.get(p.key)
	if rec == nil || rec.value != p.value || r.lease != id {
		return false, false
	}
	healed = rec.refused != nil
	rec.pending, rec.refused, rec.held = false, nil, false
	rec.own = owned{lease: id, rev: rev, create: create}
	if healed {
		r.retryN = 0
	}
	return true, healed
}

// writeKey writes one key by its policy within ctx and records it. An
// exclusive key another holder has is left alone and reported with a
// *KeyTakenError, classified. Called with wmu held.
func (r *registry) writeKey(ctx context.Context, id clientv3.LeaseID, p kv, policy Policy) error {
	now := time.Now()
	if policy != Exclusive {
		res, err := r.k.hub.b.put(ctx, id, []kv{p})
		if err != nil {
			return r.classify(err)
		}
		r.k.hub.calls.sample(now)
		r.mu.Lock()
		defer r.mu.Unlock()
		if _, healed := r.recordLocked(id, p, res.rev, res.create[0]); healed {
			r.k.disp.push(KeyEvent{Key: p.key, Change: Acquired, Policy: policy, Ours: true, Holder: id, Revision: res.rev, At: now})
		}
		return nil
	}
	res, err := r.k.hub.b.acquire(ctx, id, p)
	if err != nil {
		return r.classify(err)
	}
	r.k.hub.calls.sample(now)
	r.mu.Lock()
	defer r.mu.Unlock()
	rec := r.keys.get(p.key)
	if rec == nil {
		return nil
	}
	wasTaken, held := rec.taken != nil, rec.own.lease != 0
	if res.ok {
		if ok, healed := r.recordLocked(id, p, res.rev, res.create); ok {
			rec.taken = nil
			r.retryN = 0
			if wasTaken || !held || healed {
				r.k.disp.push(KeyEvent{Key: p.key, Change: Acquired, Policy: Exclusive, Ours: true, Holder: id, Revision: res.rev, At: now})
			}
		}
		return nil
	}
	te := &KeyTakenError{Key: p.key, Holder: res.holder, CreateRevision: res.create}
	if rec.policy == Exclusive {
		prev := rec.taken
		rec.taken, rec.own = te, owned{}
		if prev == nil || prev.Holder != te.Holder {
			r.k.disp.push(KeyEvent{Key: p.key, Change: Taken, Policy: Exclusive, Holder: res.holder, Revision: res.rev, At: now})
		}
		r.scheduleRetryLocked(lkerrors.KeyTaken)
	}
	return lkerrors.Classify(te)
}

func (r *registry) classify(err error) error {
	return lkerrors.ClassifyConn(err, r.k.hub.b.connState())
}
