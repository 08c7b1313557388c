package keeper

import (
	"cmp"
	"context"
	"slices"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	lkerrors "github.com/leasekeeper/leasekeeper/errors"
)

// written is one key a write put on the lease, with the revision of the
// write and the key's create revision.
type written struct {
	kv
	rev, create int64
}

// writePending writes the keys not yet written with lease id: exclusive
// keys one transaction each, the others in transactions of at most
// MaxTxnOps keys. Each is bounded by the renew timeout and the deadline. A
// key is marked written only if it still has the value that was written.
// An exclusive key another holder has is not an error here: it is reported
// and retried by the backoff.
func (k *Keeper) writePending(id clientv3.LeaseID, deadline time.Time, tm timing) error {
	k.writeMu.Lock()
	defer k.writeMu.Unlock()
	k.mu.Lock()
	if k.leaseID != id || len(k.pending) == 0 {
		k.mu.Unlock()
		return nil
	}
	var batch, exclusive []kv
	for key := range k.pending {
		p := kv{key, k.keys[key]}
		if k.policyLocked(key) == Exclusive {
			exclusive = append(exclusive, p)
		} else {
			batch = append(batch, p)
		}
	}
	k.mu.Unlock()
	byKey := func(a, b kv) int { return cmp.Compare(a.key, b.key) }
	slices.SortFunc(batch, byKey)
	slices.SortFunc(exclusive, byKey)
	for _, p := range exclusive {
		ctx, cancel := k.attemptCtx(tm, deadline)
		err := k.writeKey(ctx, id, p, Exclusive)
		cancel()
		if err != nil && lkerrors.KindOf(err) != lkerrors.KeyTaken {
			return err
		}
	}
	for chunk := range slices.Chunk(batch, k.cfg.MaxTxnOps) {
		ws, err := k.putChunk(id, chunk, deadline, tm)
		k.mu.Lock()
		for _, w := range ws {
			k.recordLocked(id, w)
		}
		k.mu.Unlock()
		if err != nil {
			return err
		}
	}
	return nil
}

// recordLocked marks w written with lease id, if the key still has that
// value and the keeper that lease.
func (k *Keeper) recordLocked(id clientv3.LeaseID, w written) bool {
	if v, ok := k.keys[w.key]; !ok || v != w.value || k.leaseID != id {
		return false
	}
	delete(k.pending, w.key)
	k.own[w.key] = owned{lease: id, rev: w.rev, create: w.create}
	return true
}

// writeKey writes one key by its policy within ctx and records it. An
// exclusive key another holder has is left alone and reported with a
// *KeyTakenError, classified. Called with writeMu held.
func (k *Keeper) writeKey(ctx context.Context, id clientv3.LeaseID, p kv, policy Policy) error {
	if policy != Exclusive {
		r, err := k.b.put(ctx, id, []kv{p})
		if err != nil {
			return k.classify(err)
		}
		k.mu.Lock()
		k.recordLocked(id, written{p, r.rev, r.create[0]})
		k.mu.Unlock()
		return nil
	}
	r, err := k.b.acquire(ctx, id, p)
	if err != nil {
		return k.classify(err)
	}
	now := time.Now()
	k.mu.Lock()
	defer k.mu.Unlock()
	_, wasTaken := k.taken[p.key]
	_, held := k.own[p.key]
	if r.ok {
		if k.recordLocked(id, written{p, r.rev, r.create}) {
			delete(k.taken, p.key)
			k.integN = 0
			if wasTaken || !held {
				k.keyEventLocked(KeyEvent{Key: p.key, Change: Acquired, Policy: Exclusive, Ours: true, Holder: id, Revision: r.rev, At: now})
			}
		}
		return nil
	}
	te := &KeyTakenError{Key: p.key, Holder: r.holder, CreateRevision: r.create}
	if _, ok := k.keys[p.key]; ok && k.policyLocked(p.key) == Exclusive {
		prev := k.taken[p.key]
		k.taken[p.key] = te
		delete(k.own, p.key)
		if prev == nil || prev.Holder != te.Holder {
			k.keyEventLocked(KeyEvent{Key: p.key, Change: Taken, Policy: Exclusive, Holder: r.holder, Revision: r.rev, At: now})
		}
		k.scheduleIntegrityLocked(lkerrors.KeyTaken)
	}
	return lkerrors.Classify(te)
}

// putChunk writes chunk in one transaction. When etcd refuses it for good
// (permission, invalid argument), it writes the keys one by one so that one
// bad key cannot keep the others unregistered: keys refused for good are
// dropped from the set and logged, unless every key is refused, which says
// the fault is not in the keys and is returned as it is.
func (k *Keeper) putChunk(id clientv3.LeaseID, chunk []kv, deadline time.Time, tm timing) ([]written, error) {
	ws, err := k.put(id, chunk, deadline, tm)
	if err == nil {
		return ws, nil
	}
	if lkerrors.IsRetryable(err) || len(chunk) == 1 {
		return nil, err
	}
	type refusal struct {
		kv
		err error
	}
	var done []written
	var refused []refusal
	for _, p := range chunk {
		switch w, perr := k.put(id, []kv{p}, deadline, tm); {
		case perr == nil:
			done = append(done, w...)
		case lkerrors.IsRetryable(perr):
			return done, perr
		default:
			refused = append(refused, refusal{p, perr})
		}
	}
	if len(done) == 0 {
		return nil, err
	}
	k.mu.Lock()
	for _, p := range refused {
		if v, ok := k.keys[p.key]; ok && v == p.value {
			k.forgetLocked(p.key)
		}
	}
	k.mu.Unlock()
	for _, p := range refused {
		k.log.Error("key refused by etcd: dropped from the registration", zap.String("key", p.key),
			zap.String("kind", lkerrors.KindOf(p.err).String()), zap.Error(p.err))
	}
	return done, nil
}

func (k *Keeper) put(id clientv3.LeaseID, kvs []kv, deadline time.Time, tm timing) ([]written, error) {
	ctx, cancel := k.attemptCtx(tm, deadline)
	defer cancel()
	r, err := k.b.put(ctx, id, kvs)
	if err != nil {
		return nil, k.classify(err)
	}
	ws := make([]written, len(kvs))
	for i, p := range kvs {
		ws[i] = written{p, r.rev, r.create[i]}
	}
	return ws, nil
}
