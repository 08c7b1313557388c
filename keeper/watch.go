package keeper

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.uber.org/zap"

	lkerrors "github.com/leasekeeper/leasekeeper/errors"
)

// errWatchClosed: the watch ended without saying why.
var errWatchClosed = errors.New("keeper: watch closed")

// errCompacted: the history the watch needed is compacted; reading the
// keys again is all that can be done, and it can be done at once.
var errCompacted = errors.New("keeper: watch history compacted")

// rewatchDelay gathers the keys registered outside the watched range in a
// burst (a thousand keepers starting) into one new watch.
const rewatchDelay = 20 * time.Millisecond

// keyWatch is one keeper's part in its hub's watch: from Start on, the
// hub watches the keeper's keys and hands each change to its registry.
// It has no goroutine of its own.
type keyWatch struct {
	k *Keeper // its registry, config and hub

	on atomic.Bool // joined the hub's watch
}

// start joins the hub's watch, once, unless watching is off.
func (w *keyWatch) start() {
	if !w.k.cfg.WatchKeys || !w.k.hub.watch.b.watches() {
		return
	}
	if w.k.life.closed() || !w.on.CompareAndSwap(false, true) {
		return
	}
	w.k.hub.watch.join(w)
}

// widen has the hub watch key too. The registry calls it with its lock
// held.
func (w *keyWatch) widen(key string) {
	if w.watching() {
		w.k.hub.watch.add(w, key)
	}
}

// forget tells the hub that the keeper no longer has key.
func (w *keyWatch) forget(key string) {
	if w.watching() {
		w.k.hub.watch.remove(w, key)
	}
}

func (w *keyWatch) watching() bool {
	return w.on.Load()
}

// kick tells a watch that waits out its backoff after a break that etcd
// answers again, so that it reads and watches the keys again at once. It
// never blocks.
func (w *keyWatch) kick() {
	if w.watching() {
		w.k.hub.watch.kick()
	}
}

// stop leaves the hub's watch; Close calls it.
func (w *keyWatch) stop() {
	if w.on.Swap(false) {
		w.k.hub.watch.leave(w)
	}
}

// reconcile hands one key as seen at rev to the keeper, unless it closed.
func (w *keyWatch) reconcile(key string, obs *mvccpb.KeyValue, rev int64) {
	if !w.k.life.begin() {
		return
	}
	defer w.k.life.end()
	w.k.reg.reconcile(key, obs, rev)
}

// watchHub is the one watch of a client's keepers: it watches the smallest
// key range holding every key of every keeper that joined, on one goroutine
// while any keeper is joined, and hands each change to the keepers that
// own the key. mu guards every field below it; the registries call add
// with their own lock held, so mu is taken after theirs, and the hub never
// calls a keeper while holding it.
type watchHub struct {
	b       backend
	calls   *callTiming   // the hub's unary round trips: they bound the read
	rewatch chan struct{} // a key outside the range was registered: wakes a hub that watches nothing
	wake    chan struct{} // an attempt succeeded: a broken watch need not wait out its backoff

	mu      sync.Mutex
	keepers []*keyWatch // joined, oldest first: the first one's config paces the watch
	owners  owners      // each key watched, and the keepers that registered it
	rng     [2]string
	outside bool               // a key outside rng was added since rng was set
	cut     context.CancelFunc // ends the running watch of rng; nil while none runs
	cancel  context.CancelFunc // ends the goroutine; nil while none runs
	done    chan struct{}      // closed when it ended
}

func newWatchHub(b backend, calls *callTiming) *watchHub {
	return &watchHub{b: b, calls: calls, rewatch: make(chan struct{}, 1), wake: make(chan struct{}, 1), owners: owners{one: map[string]*keyWatch{}}}
}

// join adds w's keys to the watch, and starts the watch for the first
// keeper.
func (h *watchHub) join(w *keyWatch) {
	h.mu.Lock()
	h.keepers = append(h.keepers, w)
	if h.cancel == nil {
		ctx, cancel := context.WithCancel(context.Background())
		h.cancel, h.done = cancel, make(chan struct{})
		go h.run(ctx, h.done)
	}
	h.mu.Unlock()
	// Keys registered from now on come through widen, as w is on.
	for _, key := range w.k.reg.allKeys() {
		h.add(w, key)
	}
}

// leave removes w and its keys from the watch. The keys it deregistered
// before are gone already (forget).
func (h *watchHub) leave(w *keyWatch) {
	keys := w.k.reg.allKeys()
	h.mu.Lock()
	defer h.mu.Unlock()
	h.keepers = slices.DeleteFunc(h.keepers, func(x *keyWatch) bool { return x == w })
	for _, key := range keys {
		h.owners.remove(key, w)
	}
}

// add has the watch cover key for w.
func (h *watchHub) add(w *keyWatch, key string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.owners.add(key, w) {
		return
	}
	if key >= h.rng[0] && key < h.rng[1] {
		return
	}
	if !h.outside && h.cut != nil {
		time.AfterFunc(rewatchDelay, h.cut)
	}
	h.outside = true
	select {
	case h.rewatch <- struct{}{}:
	default:
	}
}

// remove stops handing key's changes to w.
func (h *watchHub) remove(w *keyWatch, key string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.owners.remove(key, w)
}

func (h *watchHub) kick() {
	select {
	case h.wake <- struct{}{}:
	default:
	}
}

// close ends the watch and waits, within ctx, for its goroutine.
func (h *watchHub) close(ctx context.Context) error {
	h.mu.Lock()
	cancel, done := h.cancel, h.done
	h.cancel = nil
	h.mu.Unlock()
	if cancel == nil {
		return nil
	}
	cancel()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// pace returns the config of the oldest keeper joined, whose backoff and
// renew timeout pace the watch, and its logger.
func (h *watchHub) pace() (Config, *zap.Logger) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.keepers) == 0 {
		return DefaultConfig(), nopLogger
	}
	return *h.keepers[0].k.cfg, h.keepers[0].k.logger()
}

// keyRange returns the smallest range [start, end) holding every key
// watched, and makes it the watched range.
func (h *watchHub) keyRange() (start, end string, ok bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for key := range h.owners.one {
		if !ok || key < start {
			start = key
		}
		if !ok || key >= end {
			end = key + "\x00"
		}
		ok = true
	}
	h.rng, h.outside = [2]string{start, end}, false
	return start, end, ok
}

// widened reports whether a key outside the watched range was added.
func (h *watchHub) widened() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.outside
}

// ownersOf returns the keepers that own key.
func (h *watchHub) ownersOf(key string) []*keyWatch {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.owners.of(key)
}

// run watches the keepers' keys until close: it reads them, has each
// keeper act on what differs from what it wrote, and watches from the
// revision it read. When the watch breaks (compaction, a lost leader, an
// error) it reads the keys again after a backoff, or as soon as an attempt
// succeeds, so no change goes unnoticed; when the key range changes it
// starts over.
func (h *watchHub) run(ctx context.Context, done chan struct{}) {
	defer close(done)
	fails := 0
	for {
		start, end, ok := h.keyRange()
		var err error
		if ok {
			err = h.once(ctx, start, end)
		} else {
			select {
			case <-ctx.Done():
			case <-h.rewatch:
			}
		}
		switch {
		case ctx.Err() != nil:
			return
		case err == nil:
			fails = 0
			continue
		case errors.Is(err, errCompacted):
			_, log := h.pace()
			log.Info("key watch history compacted; reading the keys again", zap.Error(err))
			continue
		}
		fails++
		cfg, log := h.pace()
		kind := lkerrors.KindOf(err)
		log.Info("key watch broken; reading the keys again", zap.String("kind", kind.String()), zap.Error(err))
		select {
		case <-h.wake: // an old success: wait for one after the break
		default:
		}
		t := time.NewTimer(cfg.Backoff.delay(fails, kind, rand.Float64()))
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		case <-h.rewatch:
			t.Stop()
		case <-h.wake:
			t.Stop()
		}
	}
}

// once reads [start, end), has the owners reconcile every key in it, then
// watches the range from the next revision. It returns nil when the range
// changed, else why the watch ended.
func (h *watchHub) once(ctx context.Context, start, end string) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	cfg, _ := h.pace()
	// Bounded as the keepers' unary calls are, by the round trips the path
	// showed (callTiming.timeout), never below the renew timeout: over a
	// far link, or a gRPC proxy whose leg to etcd is slow, a read bounded
	// by the renew timeout alone would time out every time, and the watch
	// never start.
	gctx, gcancel := context.WithTimeout(ctx, max(cfg.timingFor(0).renewTimeout, h.calls.timeout()))
	sent := time.Now()
	rev, kvs, err := h.b.read(gctx, start, end)
	gcancel()
	if err != nil {
		return lkerrors.ClassifyConn(err, h.b.connState())
	}
	// How long a call takes, not a leg of the path: the read may have
	// waited out the break it follows.
	h.calls.take(sent, false)
	found := make(map[string]*mvccpb.KeyValue, len(kvs))
	for _, kv := range kvs {
		found[string(kv.Key)] = kv
	}
	h.mu.Lock()
	type owned struct {
		key string
		ws  []*keyWatch
	}
	all := make([]owned, 0, len(h.owners.one))
	for key := range h.owners.one {
		if key >= start && key < end {
			all = append(all, owned{key, h.owners.of(key)})
		}
	}
	h.mu.Unlock()
	slices.SortFunc(all, func(a, b owned) int { return strings.Compare(a.key, b.key) })
	for _, o := range all {
		for _, w := range o.ws {
			w.reconcile(o.key, found[o.key], rev)
		}
	}
	if h.cutOnWiden(cancel) {
		// Gather the keys registered in the same burst.
		t := time.NewTimer(rewatchDelay)
		defer t.Stop()
		select {
		case <-ctx.Done():
		case <-t.C:
		}
		return nil
	}
	defer h.cutOnWiden(nil)
	st, err := h.b.watch(ctx, start, end, rev+1)
	for err == nil {
		var resp *pb.WatchResponse
		if resp, err = st.recv(); resp != nil && resp.CompactRevision != 0 {
			return fmt.Errorf("%w: at revision %d", errCompacted, resp.CompactRevision)
		}
		if err != nil {
			break
		}
		for _, ev := range resp.Events {
			var obs *mvccpb.KeyValue
			if ev.Type == mvccpb.PUT {
				obs = ev.Kv
			}
			key := string(ev.Kv.Key)
			for _, w := range h.ownersOf(key) {
				w.reconcile(key, obs, ev.Kv.ModRevision)
			}
		}
	}
	if ctx.Err() != nil && h.widened() {
		return nil // cut to watch a wider range
	}
	if errors.Is(err, io.EOF) {
		err = errWatchClosed
	}
	return lkerrors.ClassifyConn(err, h.b.connState())
}

// cutOnWiden makes cut what ends the watch running when a key outside its
// range is added, and reports whether one was added already; nil says no
// watch runs. The watch is cut rewatchDelay after the first such key, so
// that the keys registered in one burst come into one new watch.
func (h *watchHub) cutOnWiden(cut context.CancelFunc) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.cut = cut
	return cut != nil && h.outside
}

// owners maps each watched key to the keepers that registered it: its
// first owner in one map, and further owners, where keepers share a key,
// in a second. Most keys have one owner, which then costs one map entry.
type owners struct {
	one  map[string]*keyWatch
	more map[string][]*keyWatch // the owners after the first; only keys in one
}

// add adds w as an owner of key; it reports false if w was one already.
func (o *owners) add(key string, w *keyWatch) bool {
	first, ok := o.one[key]
	switch {
	case !ok:
		o.one[key] = w
		return true
	case first == w || slices.Contains(o.more[key], w):
		return false
	}
	if o.more == nil {
		o.more = map[string][]*keyWatch{}
	}
	o.more[key] = append(o.more[key], w)
	return true
}

// remove drops w as an owner of key, if it is one.
func (o *owners) remove(key string, w *keyWatch) {
	rest := o.more[key]
	if o.one[key] == w {
		if len(rest) == 0 {
			delete(o.one, key)
			return
		}
		o.one[key], rest = rest[0], rest[1:]
	} else if i := slices.Index(rest, w); i >= 0 {
		rest = slices.Delete(rest, i, i+1)
	}
	if len(rest) == 0 {
		delete(o.more, key)
	} else {
		o.more[key] = rest
	}
}

// of returns the owners of key, in the order they were added.
func (o *owners) of(key string) []*keyWatch {
	first, ok := o.one[key]
	if !ok {
		return nil
	}
	return append([]*keyWatch{first}, o.more[key]...)
}
