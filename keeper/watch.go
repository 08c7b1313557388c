package keeper

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.uber.org/zap"

	lkerrors "github.com/leasekeeper/leasekeeper/errors"
)

// errWatchClosed: the watch ended without saying why.
var errWatchClosed = errors.New("keeper: watch closed")

// errCompacted: the history the watch needed is compacted; reading the
// keys again is all that can be done, and it can be done at once.
var errCompacted = errors.New("keeper: watch history compacted")

// keyWatch watches, from Start on, the smallest key range holding every
// registered key, and hands each change to the registry. It runs one
// goroutine until Close. mu guards on and rng; the registry calls widen
// with its own lock held, so mu is taken after the registry's.
type keyWatch struct {
	cfg     Config
	b       backend
	log     *zap.Logger
	life    *life
	reg     *registry
	rewatch chan struct{} // a key outside the range was registered
	wake    chan struct{} // an attempt succeeded: a broken watch need not wait out its backoff

	mu  sync.Mutex
	on  bool
	rng [2]string
}

func newKeyWatch(cfg Config, b backend, log *zap.Logger, l *life) *keyWatch {
	return &keyWatch{cfg: cfg, b: b, log: log, life: l, rewatch: make(chan struct{}, 1), wake: make(chan struct{}, 1)}
}

// start starts the watch, once, unless watching is off.
func (w *keyWatch) start() {
	if w.cfg.DisableWatch || !w.b.watches() {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.on || !w.life.begin() {
		return
	}
	w.on = true
	go w.run()
}

// widen tells the watch to widen its range if key is outside it.
func (w *keyWatch) widen(key string) {
	w.mu.Lock()
	inside := !w.on || (key >= w.rng[0] && key < w.rng[1])
	w.mu.Unlock()
	if inside {
		return
	}
	select {
	case w.rewatch <- struct{}{}:
	default:
	}
}

// kick tells a watch that waits out its backoff after a break that etcd
// answers again, so that it reads and watches the keys again at once. It
// never blocks.
func (w *keyWatch) kick() {
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// run watches the keeper's keys until Close: it reads them, has the
// registry act on what differs from what the keeper wrote, and watches
// from the revision it read. When the watch breaks (compaction, a lost
// leader, an error) it reads the keys again after a backoff, or as soon as
// an attempt succeeds, so no change goes unnoticed; when the key range
// changes it starts over at once.
func (w *keyWatch) run() {
	defer w.life.end()
	ctx := w.life.ctx
	fails := 0
	for {
		start, end, ok := w.reg.keyRange()
		w.mu.Lock()
		w.rng = [2]string{start, end}
		w.mu.Unlock()
		var err error
		if ok {
			err = w.once(start, end)
		} else {
			select {
			case <-ctx.Done():
			case <-w.rewatch:
			}
		}
		switch {
		case ctx.Err() != nil:
			return
		case err == nil:
			fails = 0
			continue
		case errors.Is(err, errCompacted):
			w.log.Info("key watch history compacted; reading the keys again", zap.Error(err))
			continue
		}
		fails++
		kind := lkerrors.KindOf(err)
		w.log.Info("key watch broken; reading the keys again", zap.String("kind", kind.String()), zap.Error(err))
		select {
		case <-w.wake: // an old success: wait for one after the break
		default:
		}
		t := time.NewTimer(w.cfg.Backoff.delay(fails, kind, rand.Float64()))
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		case <-w.rewatch:
			t.Stop()
		case <-w.wake:
			t.Stop()
		}
	}
}

// once reads [start, end), reconciles every key in it, then watches the
// range from the next revision. It returns nil when the range changed,
// else why the watch ended.
func (w *keyWatch) once(start, end string) error {
	ctx, cancel := context.WithCancel(w.life.ctx)
	defer cancel()
	tm := w.reg.loop.view(time.Now()).tm
	gctx, gcancel := context.WithTimeout(ctx, tm.renewTimeout)
	rev, kvs, err := w.b.read(gctx, start, end)
	gcancel()
	if err != nil {
		return w.reg.classify(err)
	}
	found := make(map[string]*mvccpb.KeyValue, len(kvs))
	for _, kv := range kvs {
		found[string(kv.Key)] = kv
	}
	for _, key := range w.reg.keysIn(start, end) {
		w.reg.reconcile(key, found[key], rev)
	}
	ch := w.b.watch(ctx, start, end, rev+1)
	for {
		select {
		case <-w.rewatch:
			return nil
		case resp, ok := <-ch:
			if !ok {
				return errWatchClosed
			}
			if resp.CompactRevision != 0 {
				return fmt.Errorf("%w: at revision %d", errCompacted, resp.CompactRevision)
			}
			if err := resp.Err(); err != nil {
				return w.reg.classify(err)
			}
			for _, ev := range resp.Events {
				var obs *mvccpb.KeyValue
				if ev.Type == mvccpb.PUT {
					obs = ev.Kv
				}
				w.reg.reconcile(string(ev.Kv.Key), obs, ev.Kv.ModRevision)
			}
		}
	}
}
