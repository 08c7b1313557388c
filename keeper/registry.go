package keeper

import (
	"context"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	lkerrors "github.com/leasekeeper/leasekeeper/errors"
)

// registry holds the registered keys, one record per key, writes them to
// etcd (write.go) and acts on changes the watch sees (reconcile.go).
//
// wmu serializes the registry's writes to etcd one RPC at a time, so that
// after Register, Deregister or a restore returns, the set and etcd agree,
// and none of them waits behind more than one transaction of a long
// rewrite; it is taken before mu. It is a channel, not a mutex, so that
// waiting for it honours a context. mu guards the records, the lease they
// are written with and the retry timer. The registry reads the lease loop
// under mu; the loop never takes mu while holding its own lock.
type registry struct {
	k *Keeper // whose parts it calls: the lease loop, the watch, the dispatcher

	wmu      writeLock
	mu       sync.Mutex
	keys     keySet
	lease    clientv3.LeaseID // the lease the records' written state refers to
	retryT   *time.Timer      // writes held and contested keys again by the backoff
	retryN   int              // retries since a held or contested key was last written
	draining bool             // Drain withdrew the keys: Register is refused
}

// record is one registered key: what to write, by which policy, and what
// the keeper knows of it in etcd.
type record struct {
	value   string
	policy  Policy
	pending bool           // not known written with the registry's lease
	held    bool           // refused: not written again until the retry timer fires
	own     owned          // what the keeper last wrote, or last reported of another writer
	taken   *KeyTakenError // an exclusive key another holder has
	refused error          // etcd refused the key for good; cleared once it is written
	fight   fight          // restores of it that another writer undid
}

// toWrite reports whether the key waits to be written with the registry's
// lease: pending, and not held back after a refusal.
func (rec *record) toWrite() bool { return rec.pending && !rec.held }

// owned is what the keeper knows of a key it wrote: the lease, the
// revision of its last write and the key's create revision. For a
// report-only key another writer changed, lease is 0 and seen (or gone, for
// a deletion) says which change was reported.
type owned struct {
	lease  clientv3.LeaseID
	rev    int64
	create int64
	seen   int64
	gone   bool
}

// fight counts the restores of one key in a row that another writer undid,
// so that two writers restoring one key against each other back off.
type fight struct {
	n    int
	last int64 // when it was last undone, in Unix nanoseconds
}

// kv is one registered key and its value.
type kv struct{ key, value string }

// register adds key or replaces its value and policy, and writes it at
// once while the lease is live. See Keeper.Register.
func (r *registry) register(ctx context.Context, key, value string, policy Policy) error {
	ctx, release, err := r.lockUndrained(ctx)
	if err != nil {
		return err
	}
	defer release()
	r.mu.Lock()
	old := r.keys.get(key)
	existed := old != nil
	var prev record
	if existed {
		prev = *old
	} else {
		old = r.keys.newRecord()
		r.keys.set(key, old)
	}
	rec := old
	rec.value, rec.policy, rec.pending = value, policy, true
	rec.refused, rec.held = nil, false
	if policy != Exclusive {
		rec.taken = nil
	}
	r.k.watch.widen(key)
	v := r.k.loop.view(time.Now())
	r.mu.Unlock()
	if !v.live {
		return nil
	}
	wctx, wcancel := boundCtx(ctx, v.tm.call, v.deadline)
	err = r.writeKey(wctx, v.id, kv{key, value}, policy)
	wcancel()

	switch kind := lkerrors.KindOf(err); {
	case err == nil, kind == lkerrors.KeyTaken:
	case policyOf(kind).permanent && !r.k.life.closed():
		// Refused at Register: the caller hears of it, and the key does not
		// join the set (or keeps its previous value).
		r.mu.Lock()
		if existed {
			*rec = prev
			rec.pending = true
		} else {
			r.keys.del(key)
			r.k.watch.forget(key)
		}
		r.mu.Unlock()
	default:
		r.k.loop.writeFailed(v.id, err)
	}
	return err
}

// deregister removes key and, while a lease is held, deletes it from etcd
// if it is still attached to that lease. See Keeper.Deregister.
func (r *registry) deregister(ctx context.Context, key string) error {
	ctx, release, err := r.lockWrites(ctx)
	if err != nil {
		return err
	}
	defer release()
	r.mu.Lock()
	existed := r.keys.get(key) != nil
	r.keys.del(key)
	r.k.watch.forget(key)
	v := r.k.loop.view(time.Now())
	r.mu.Unlock()
	if !existed || v.id == 0 {
		return nil
	}
	return r.del(ctx, v, v.id, key)
}

// withdraw empties the registry and deletes its keys from etcd, each from
// the lease it was written with, then moves the lease loop to Draining;
// see Keeper.Drain. It holds the write lock throughout, so that no
// Register slips in between. The error is the first delete's.
func (r *registry) withdraw(ctx context.Context) error {
	ctx, release, err := r.lockUndrained(ctx)
	if err != nil {
		return err
	}
	defer release()
	r.mu.Lock()
	r.draining = true
	written := make(map[string]clientv3.LeaseID, r.keys.len())
	for key, rec := range r.keys.all() {
		written[key] = rec.own.lease
		r.k.watch.forget(key)
	}
	r.keys.clear()
	stopTimer(&r.retryT)
	v := r.k.loop.view(time.Now())
	r.mu.Unlock()

	var first error
	for key, id := range written {
		if id == 0 {
			id = v.id
		}
		if id == 0 {
			continue
		}
		if err := r.del(ctx, v, id, key); err != nil {
			r.k.logger().Warn("drain: delete failed; the key goes with the lease", zap.String("key", key), zap.Error(err))
			if first == nil {
				first = err
			}
		}
	}
	r.k.loop.drain()
	return first
}

// del deletes key if it is still attached to lease id, within the renew
// timeout of v, and classifies the error.
func (r *registry) del(ctx context.Context, v leaseView, id clientv3.LeaseID, key string) error {
	ctx, cancel := context.WithTimeout(ctx, v.tm.call)
	defer cancel()
	return lkerrors.ClassifyConn(r.k.hub.b.del(ctx, id, key), r.k.hub.b.connState())
}

// lockWrites binds a caller's ctx to the keeper's life, so that Close
// cancels what the caller waits for, and takes the write lock within it;
// release undoes both.
func (r *registry) lockWrites(ctx context.Context) (context.Context, func(), error) {
	ctx, cancel := r.k.life.bound(ctx)
	if err := r.wmu.lock(ctx); err != nil {
		cancel()
		return nil, nil, r.classify(err)
	}
	return ctx, func() {
		r.wmu.unlock()
		cancel()
	}, nil
}

// lockUndrained is lockWrites for the calls that add keys: once Drain
// withdrew them it refuses with ErrDraining. draining changes only under
// the write lock, so the answer holds until release.
func (r *registry) lockUndrained(ctx context.Context) (context.Context, func(), error) {
	ctx, release, err := r.lockWrites(ctx)
	if err != nil {
		return nil, nil, err
	}
	r.mu.Lock()
	draining := r.draining
	r.mu.Unlock()
	if draining {
		release()
		return nil, nil, ErrDraining
	}
	return ctx, release, nil
}

// rebase makes id the lease every key is to be written with: all are
// pending again, and keys held after a refusal get one more try.
func (r *registry) rebase(id clientv3.LeaseID) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.lease = id
	for _, rec := range r.keys.all() {
		rec.pending, rec.held = true, false
	}
}

// token returns key's fencing token. See Keeper.Token.
func (r *registry) token(key string) (Token, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	rec := r.keys.get(key)
	switch {
	case rec == nil:
		return Token{}, ErrNotRegistered
	case rec.taken != nil:
		return Token{}, rec.taken
	case rec.refused != nil:
		return Token{}, rec.refused
	}
	v := r.k.loop.view(time.Now())
	if !v.live || rec.pending || rec.own.lease != v.id {
		return Token{}, ErrNotHeld
	}
	return Token{Lease: v.id, Revision: rec.own.create}, nil
}

// len returns the number of registered keys.
func (r *registry) len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.keys.len()
}

// allKeys returns the registered keys.
func (r *registry) allKeys() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	keys := make([]string, 0, r.keys.len())
	for key := range r.keys.all() {
		keys = append(keys, key)
	}
	return keys
}

// close stops the retry timer.
func (r *registry) close() {
	r.mu.Lock()
	defer r.mu.Unlock()
	stopTimer(&r.retryT)
}

// writeLock is a lock whose waiting honours a context. The lock passes to
// the waiters in turn, so that a rewrite that takes it for every
// transaction does not starve a Register; it makes a channel only per
// waiter, so an idle keeper keeps none.
type writeLock struct {
	mu         sync.Mutex
	held       bool
	head, tail *lockWaiter // the waiters, in turn
}

// lockWaiter is one caller waiting for a writeLock.
type lockWaiter struct {
	turn chan struct{} // closed when the lock passes to it
	next *lockWaiter
}

// lock takes the lock, or returns ctx's error if ctx ends first.
func (w *writeLock) lock(ctx context.Context) error {
	w.mu.Lock()
	if !w.held {
		w.held = true
		w.mu.Unlock()
		return nil
	}
	return w.waitLocked(ctx)
}

// lockLife takes the lock, or returns context.Canceled if the keeper's
// life ends first. Unlike lock(l.ctx()) it leaves the life's Done channel
// unmade: a context of its own hears of the end while it waits.
func (w *writeLock) lockLife(l *life) error {
	w.mu.Lock()
	if !w.held {
		w.held = true
		w.mu.Unlock()
		return nil
	}
	ctx, cancel := l.bound(context.Background())
	defer cancel()
	return w.waitLocked(ctx)
}

// waitLocked waits, with mu held and the lock held by another, for the
// lock to pass to the caller, or ctx to end. It unlocks mu.
func (w *writeLock) waitLocked(ctx context.Context) error {
	me := &lockWaiter{turn: make(chan struct{})}
	if w.tail == nil {
		w.head = me
	} else {
		w.tail.next = me
	}
	w.tail = me
	w.mu.Unlock()
	select {
	case <-me.turn:
		return nil
	case <-ctx.Done():
	}
	w.mu.Lock()
	if w.removeLocked(me) {
		w.mu.Unlock()
		return ctx.Err()
	}
	w.mu.Unlock()
	w.unlock() // the lock passed to us meanwhile: pass it on
	return ctx.Err()
}

func (w *writeLock) unlock() {
	w.mu.Lock()
	defer w.mu.Unlock()
	x := w.head
	if x == nil {
		w.held = false
		return
	}
	if w.head = x.next; w.head == nil {
		w.tail = nil
	}
	close(x.turn)
}

// removeLocked takes me out of the line; it reports false if the lock
// passed to me already.
func (w *writeLock) removeLocked(me *lockWaiter) bool {
	var prev *lockWaiter
	for x := w.head; x != nil; prev, x = x, x.next {
		if x != me {
			continue
		}
		if prev == nil {
			w.head = x.next
		} else {
			prev.next = x.next
		}
		if w.tail == x {
			w.tail = prev
		}
		return true
	}
	return false
}
