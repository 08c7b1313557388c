package keeper

import (
	"context"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	lkerrors "github.com/leasekeeper/leasekeeper/errors"
	"github.com/leasekeeper/leasekeeper/statemachine"
)

// Keeper keeps a set of keys registered in etcd under one lease. Its
// methods are safe for concurrent use.
type Keeper struct {
	cfg Config // as given, validated; timing derives from the granted TTL
	b   backend
	log *zap.Logger

	// ctx ends at Close and bounds every attempt; wg counts the goroutines
	// that attempts and the connection watcher run in.
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	// writeMu serializes writes of keys to etcd (attempts, Register,
	// Deregister) so that the registered set and etcd never disagree after
	// they return. Taken before mu, never while holding it.
	writeMu sync.Mutex

	// mu guards everything below.
	mu       sync.Mutex
	m        *statemachine.Machine
	started  bool
	starting bool // Start is waiting: attempts go on even without recovery
	closed   bool
	// The lease: ID, TTL granted, local deadline D; gone once the server
	// said it does not know it (the next attempt grants a new one).
	leaseID  clientv3.LeaseID
	ttl      time.Duration
	deadline time.Time
	gone     bool
	keys     map[string]string
	pending  map[string]bool // keys not yet known written with leaseID
	// Integrity of the keys: policies other than Restore, what the keeper
	// last wrote of each key, exclusive keys another holder has, restore
	// contests; the timer that retries taken and contested keys by the
	// backoff, and its count; the watcher and the range it watches.
	policies map[string]Policy
	own      map[string]owned
	taken    map[string]*KeyTakenError
	fights   map[string]fight
	integT   *time.Timer
	integN   int
	watchOn  bool
	rewatch  chan struct{}
	wrange   [2]string
	// Scheduling: the next attempt, the next deadline check, whether an
	// attempt is in flight, the failures since the last success.
	attemptT  *time.Timer
	attemptAt time.Time
	checkT    *time.Timer
	running   bool
	retries   int
	lastErr   error
	watching  bool      // a goroutine waits for the connection to be READY
	warnedAt  time.Time // last "renewal failing" warning, for sampling
	unwatch   context.CancelFunc
	progress  chan struct{} // closed and replaced after every attempt
	// Callback dispatch: transitions waiting, and the channel closed when
	// the dispatcher has drained them.
	queue       []queued
	dispatching bool
	drained     chan struct{}
}

// New returns a Keeper for cli in state Idle; it does nothing until Start.
// A nil client or a Config that fails Validate is an error.
func New(cli *clientv3.Client, cfg Config) (*Keeper, error) {
	if cli == nil {
		return nil, ErrNilClient
	}
	return newKeeper(newClientBackend(cli), cfg)
}

func newKeeper(b backend, cfg Config) (*Keeper, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	m, err := statemachine.New(cfg.DegradeAfter)
	if err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = zap.NewNop()
	}
	k := &Keeper{
		cfg:      cfg,
		b:        b,
		log:      log,
		m:        m,
		keys:     map[string]string{},
		pending:  map[string]bool{},
		policies: map[string]Policy{},
		own:      map[string]owned{},
		taken:    map[string]*KeyTakenError{},
		fights:   map[string]fight{},
		rewatch:  make(chan struct{}, 1),
		progress: make(chan struct{}),
		drained:  make(chan struct{}),
	}
	close(k.drained)
	k.ctx, k.cancel = context.WithCancel(context.Background())
	return k, nil
}

// Register adds key with value to the registration set, with the options
// given (by default the Restore policy). While the keeper holds a live
// lease the key is written at once and Register returns the classified
// error of that write; otherwise it is written when Start or recovery
// writes every key. A key that etcd refuses for good (permission, invalid
// argument) is dropped from the set again; after a retryable error it
// stays and the next attempt writes it. An exclusive key another holder
// has stays registered and Register returns a *KeyTakenError: the keeper
// tries again by the backoff. Registering a key again replaces its value
// and policy. An empty key or a closed keeper is an error.
func (k *Keeper) Register(ctx context.Context, key, value string, opts ...KeyOption) error {
	var o keyOptions
	for _, opt := range opts {
		opt(&o)
	}
	if err := k.lockKey(key); err != nil {
		return err
	}
	defer k.writeMu.Unlock()
	prev, existed := k.keys[key]
	prevPolicy := k.policies[key]
	k.keys[key] = value
	k.setPolicyLocked(key, o.policy)
	k.pending[key] = true
	k.rewatchLocked(key)
	id, live := k.leaseID, k.liveLocked(time.Now())
	timeout := k.timing().renewTimeout
	k.mu.Unlock()
	if !live {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	err := k.writeKey(ctx, id, kv{key, value}, o.policy)

	k.mu.Lock()
	defer k.mu.Unlock()
	switch {
	case err == nil, lkerrors.KindOf(err) == lkerrors.KeyTaken:
	case !lkerrors.IsRetryable(err) && !k.closed:
		if existed {
			k.keys[key] = prev
			k.setPolicyLocked(key, prevPolicy)
		} else {
			k.forgetLocked(key)
		}
	default:
		k.scheduleRetryLocked(lkerrors.KindOf(err))
	}
	return err
}

// setPolicyLocked records key's policy.
func (k *Keeper) setPolicyLocked(key string, p Policy) {
	if p == Restore {
		delete(k.policies, key)
	} else {
		k.policies[key] = p
	}
	if p != Exclusive {
		delete(k.taken, key)
	}
}

// forgetLocked removes key and everything known of it.
func (k *Keeper) forgetLocked(key string) {
	delete(k.keys, key)
	delete(k.pending, key)
	delete(k.policies, key)
	delete(k.own, key)
	delete(k.taken, key)
	delete(k.fights, key)
}

// Deregister removes key from the registration set and, while the keeper
// holds a live lease, deletes it from etcd if it is still attached to that
// lease. Removing a key that is not registered is not an error.
func (k *Keeper) Deregister(ctx context.Context, key string) error {
	if err := k.lockKey(key); err != nil {
		return err
	}
	defer k.writeMu.Unlock()
	_, existed := k.keys[key]
	k.forgetLocked(key)
	id, held := k.leaseID, k.leaseID != 0 && !k.gone
	timeout := k.timing().renewTimeout
	k.mu.Unlock()
	if !existed || !held {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	return lkerrors.ClassifyConn(k.b.del(ctx, id, key), k.b.connState())
}

// lockKey checks key and takes writeMu, then mu, for Register and
// Deregister. On success it returns with both held: the caller releases mu,
// then writeMu once its write to etcd is done.
func (k *Keeper) lockKey(key string) error {
	if key == "" {
		return ErrEmptyKey
	}
	k.writeMu.Lock()
	k.mu.Lock()
	if k.closed {
		k.mu.Unlock()
		k.writeMu.Unlock()
		return ErrClosed
	}
	return nil
}

// Start grants a lease and writes every registered key, retrying with
// backoff, and returns nil once the keeper is Healthy. It returns the
// classified error of the last attempt when ctx ends first or when an
// attempt fails with an error retrying cannot fix; the keeper is then
// Failed and, unless recovery is disabled, goes on trying in the
// background. Start on a started or closed keeper is an error.
func (k *Keeper) Start(ctx context.Context) error {
	k.mu.Lock()
	switch {
	case k.closed:
		k.mu.Unlock()
		return ErrClosed
	case k.started:
		k.mu.Unlock()
		return ErrAlreadyStarted
	}
	k.started, k.starting = true, true
	k.scheduleLocked(0)
	k.startWatchLocked()
	k.mu.Unlock()

	for {
		k.mu.Lock()
		st, lastErr, progress := k.m.State(), k.lastErr, k.progress
		if st == statemachine.Healthy || st == statemachine.Closed || permanent(lastErr) {
			k.starting = false
			k.mu.Unlock()
			switch st {
			case statemachine.Healthy:
				return nil
			case statemachine.Closed:
				return ErrClosed
			}
			return lastErr
		}
		k.mu.Unlock()
		select {
		case <-progress:
		case <-ctx.Done():
			k.mu.Lock()
			k.starting = false
			if lastErr = k.lastErr; lastErr == nil {
				lastErr = lkerrors.ClassifyConn(ctx.Err(), k.b.connState())
			}
			if k.cfg.DisableRecovery && k.m.State() != statemachine.Healthy {
				k.stopTimer(&k.attemptT)
			}
			k.mu.Unlock()
			return lastErr
		}
	}
}

// State returns the keeper's state now. It is computed against the local
// deadline at the moment it is asked: after a process pause that delayed
// the keeper's timers it already says Failed once the deadline passed, never
// a stale Healthy.
func (k *Keeper) State() statemachine.State {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.checkTimeLocked(time.Now())
	return k.m.State()
}

// LeaseID returns the lease the keeper holds, or 0 when it holds none (before
// the first grant, after the server said the lease is gone, after Close).
func (k *Keeper) LeaseID() clientv3.LeaseID {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.gone || k.closed {
		return 0
	}
	return k.leaseID
}

// Deadline returns the local deadline: the earliest time the server may
// expire the lease, less the margin. It is zero when no lease is held.
func (k *Keeper) Deadline() time.Time {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.leaseID == 0 || k.gone || k.closed {
		return time.Time{}
	}
	return k.deadline
}

// Err returns the classified error of the last failed attempt since the last
// success, or nil.
func (k *Keeper) Err() error {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.lastErr
}

// Close stops renewing, reports the transition to Closed, and revokes the
// lease within ctx, which deletes every key attached to it at once. It
// waits, within ctx, for the callbacks already queued. It is idempotent: a
// second Close returns nil. The classified error is that of the revoke; a
// lease the server no longer knows is not an error.
func (k *Keeper) Close(ctx context.Context) error {
	k.mu.Lock()
	if k.closed {
		k.mu.Unlock()
		return nil
	}
	k.closed = true
	k.stopTimer(&k.attemptT)
	k.stopTimer(&k.checkT)
	k.stopTimer(&k.integT)
	k.cancel()
	k.stepLocked(statemachine.Close, nil, time.Now())
	id := k.leaseID
	if k.gone {
		id = 0
	}
	drained := k.drained
	k.mu.Unlock()

	// Attempts in flight end promptly: their context is canceled.
	k.wg.Wait()
	k.b.close()
	var err error
	if id != 0 {
		k.writeMu.Lock()
		err = k.b.revoke(ctx, id)
		k.writeMu.Unlock()
		if lkerrors.KindOf(err) == lkerrors.LeaseExpired {
			err = nil
		}
		err = lkerrors.ClassifyConn(err, k.b.connState())
	}
	select {
	case <-drained:
	case <-ctx.Done():
	}
	return err
}

// liveLocked reports whether the keeper holds a lease that is alive by the
// local deadline at now.
func (k *Keeper) liveLocked(now time.Time) bool {
	return k.leaseID != 0 && !k.gone && now.Before(k.deadline)
}

func (k *Keeper) stopTimer(t **time.Timer) {
	if *t != nil {
		(*t).Stop()
		*t = nil
	}
}
