package keeper

import (
	"cmp"
	"slices"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	lkerrors "github.com/leasekeeper/leasekeeper/errors"
)

// writePending writes the keys not yet written with lease id, in
// transactions of at most MaxTxnOps keys, each bounded by the renew timeout
// and the deadline. A key is marked written only if it still has the value
// that was written.
func (k *Keeper) writePending(id clientv3.LeaseID, deadline time.Time, tm timing) error {
	k.writeMu.Lock()
	defer k.writeMu.Unlock()
	k.mu.Lock()
	if k.leaseID != id || len(k.pending) == 0 {
		k.mu.Unlock()
		return nil
	}
	batch := make([]kv, 0, len(k.pending))
	for key := range k.pending {
		batch = append(batch, kv{key, k.keys[key]})
	}
	k.mu.Unlock()
	slices.SortFunc(batch, func(a, b kv) int { return cmp.Compare(a.key, b.key) })
	for chunk := range slices.Chunk(batch, k.cfg.MaxTxnOps) {
		written, err := k.putChunk(id, chunk, deadline, tm)
		k.mu.Lock()
		for _, p := range written {
			if v, ok := k.keys[p.key]; ok && v == p.value && k.leaseID == id {
				delete(k.pending, p.key)
			}
		}
		k.mu.Unlock()
		if err != nil {
			return err
		}
	}
	return nil
}

// putChunk writes chunk in one transaction. When etcd refuses it for good
// (permission, invalid argument), it writes the keys one by one so that one
// bad key cannot keep the others unregistered: keys refused for good are
// dropped from the set and logged, unless every key is refused, which says
// the fault is not in the keys and is returned as it is.
func (k *Keeper) putChunk(id clientv3.LeaseID, chunk []kv, deadline time.Time, tm timing) ([]kv, error) {
	err := k.put(id, chunk, deadline, tm)
	if err == nil {
		return chunk, nil
	}
	if lkerrors.IsRetryable(err) || len(chunk) == 1 {
		return nil, err
	}
	type refusal struct {
		kv
		err error
	}
	var written []kv
	var refused []refusal
	for _, p := range chunk {
		switch perr := k.put(id, []kv{p}, deadline, tm); {
		case perr == nil:
			written = append(written, p)
		case lkerrors.IsRetryable(perr):
			return written, perr
		default:
			refused = append(refused, refusal{p, perr})
		}
	}
	if len(written) == 0 {
		return nil, err
	}
	k.mu.Lock()
	for _, p := range refused {
		if v, ok := k.keys[p.key]; ok && v == p.value {
			delete(k.keys, p.key)
			delete(k.pending, p.key)
		}
	}
	k.mu.Unlock()
	for _, p := range refused {
		k.log.Error("key refused by etcd: dropped from the registration", zap.String("key", p.key),
			zap.String("kind", lkerrors.KindOf(p.err).String()), zap.Error(p.err))
	}
	return written, nil
}

func (k *Keeper) put(id clientv3.LeaseID, kvs []kv, deadline time.Time, tm timing) error {
	ctx, cancel := k.attemptCtx(tm, deadline)
	defer cancel()
	return k.classify(k.b.put(ctx, id, kvs))
}
