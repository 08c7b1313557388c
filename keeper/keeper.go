package keeper

import (
	"context"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	lkerrors "github.com/leasekeeper/leasekeeper/errors"
	"github.com/leasekeeper/leasekeeper/statemachine"
)

// Keeper keeps a set of keys registered in etcd under one lease. Its
// methods are safe for concurrent use, and callbacks and observers may call
// any of them, Close included.
//
// A Keeper is a façade over four parts, each with its own lock or none:
// the hub it shares with the other keepers on its client (hub.go: one
// renewal stream in renewals.go, one key watch in watch.go), the lease loop
// (lease.go: the lease, its deadline, attempts and the state machine), the
// registry (registry.go: the keys and their writes) and the dispatcher
// (dispatch.go: callbacks and observers). The registry's lock is taken
// before the loop's and the hub's, the dispatcher's last. The last three
// parts live in the Keeper itself: a keeper is one allocation, not one per
// part, so a thousand keepers on a client are a thousand objects, not ten
// thousand small ones spread over the heap among the garbage of their start.
// Its Config is the hub's, shared with the keepers configured alike
// (joinHub), and the first key's record is in the registry: a keeper of
// one key is 568 bytes, which with the runtime's header of objects over
// 512 bytes fills the 576-byte size class exactly (TestKeeperSize).
type Keeper struct {
	hub   *hub
	cfg   *Config // shared by the parts, never changed; shared with the hub's keepers configured alike
	life  life
	disp  dispatcher
	loop  leaseLoop
	reg   registry
	watch keyWatch
}

// nopLogger is the logger of keepers configured without one.
var nopLogger = zap.NewNop()

// logger returns the configured logger, or nopLogger.
func (k *Keeper) logger() *zap.Logger {
	if k.cfg.Logger != nil {
		return k.cfg.Logger
	}
	return nopLogger
}

// New returns a Keeper for cli in state Idle; it does nothing until Start.
// A nil client or a Config that fails Validate is an error.
//
// The keepers on one client share its hub: one renewal stream carries the
// keepalives of all of them, and one watch their keys (see hub.go).
func New(cli *clientv3.Client, cfg Config) (*Keeper, error) {
	if cli == nil {
		return nil, ErrNilClient
	}
	return newKeeperOn(cli, func() backend { return newClientBackend(cli) }, cfg)
}

// newKeeper returns a Keeper over b, which is its own hub's key: the
// keepers made over one b share it.
func newKeeper(b backend, cfg Config) (*Keeper, error) {
	return newKeeperOn(b, func() backend { return b }, cfg)
}

// newKeeperOn returns a Keeper on the hub of key, created over newBackend
// if it has none yet.
func newKeeperOn(key any, newBackend func() backend, cfg Config) (*Keeper, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	h, shared := joinHub(key, newBackend, &cfg)
	k := &Keeper{hub: h, cfg: shared}
	k.disp.init(k)
	if err := k.loop.init(k); err != nil {
		_ = h.leave(context.Background(), shared)
		return nil, err
	}
	k.reg.k, k.watch.k = k, k
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
// and policy: that is how an instance updates its metadata. An empty key or
// a closed keeper is an error.
//
// The write is bounded by ctx, by the renew timeout and by Close, and
// waits for at most one transaction of a rewrite of every key in flight.
func (k *Keeper) Register(ctx context.Context, key, value string, opts ...KeyOption) error {
	var o keyOptions
	for _, opt := range opts {
		opt(&o)
	}
	if key == "" {
		return ErrEmptyKey
	}
	if !k.life.begin() {
		return ErrClosed
	}
	defer k.life.end()
	return k.reg.register(ctx, key, value, o.policy)
}

// Deregister removes key from the registration set and, while the keeper
// holds a lease, deletes it from etcd if it is still attached to that
// lease. Removing a key that is not registered is not an error.
func (k *Keeper) Deregister(ctx context.Context, key string) error {
	if key == "" {
		return ErrEmptyKey
	}
	if !k.life.begin() {
		return ErrClosed
	}
	defer k.life.end()
	return k.reg.deregister(ctx, key)
}

// Start grants a lease and writes every registered key, retrying with
// backoff, and returns nil once the keeper is Healthy. It returns the
// classified error of the last attempt when ctx ends first or when an
// attempt fails with an error retrying cannot fix; the keeper is then
// Failed and, unless recovery is disabled, goes on trying in the
// background. Start on a started or closed keeper is an error.
func (k *Keeper) Start(ctx context.Context) error {
	if k.life.closed() {
		return ErrClosed
	}
	if k.reg.len() == 0 {
		k.logger().Warn("keeper started with no registered key: a key attached to LeaseID() by hand is lost " +
			"at the first new lease and never written back; register every key with Register")
	}
	k.watch.start()
	return k.loop.start(ctx)
}

// State returns the keeper's state now. It only reads: it is computed
// against the local deadline at the moment it is asked, so after a process
// pause that delayed the keeper's timers it already says Failed once the
// deadline passed, never a stale Healthy, while the timers, once they fire,
// move the state and report the transition.
func (k *Keeper) State() statemachine.State {
	return k.loop.state()
}

// Writable reports whether the service may accept writes now: the keeper is
// Healthy, or Draining, since a planned drain is not a registration at
// risk. It is as cheap as State.
func (k *Keeper) Writable() bool {
	return writable(k.State())
}

// writable says whether a keeper in state s lets writes through.
func writable(s statemachine.State) bool {
	return s == statemachine.Healthy || s == statemachine.Draining
}

// LeaseID returns the lease the keeper holds, or 0 when it holds none (before
// the first grant, after the server said the lease is gone, after Close).
// It changes when the keeper grants a new lease. Do not attach keys to it
// by hand (clientv3.WithLease(k.LeaseID())): a key the keeper does not know
// goes with the old lease and is never written back, while the keeper,
// whose own keys are all written, stays Healthy. Register every key.
func (k *Keeper) LeaseID() clientv3.LeaseID {
	return k.loop.leaseID()
}

// Deadline returns the local deadline: the earliest time the server may
// expire the lease, less the margin. It is zero when no lease is held.
func (k *Keeper) Deadline() time.Time {
	return k.loop.deadline()
}

// Err returns the classified error of the last failed attempt since the last
// success, or nil.
func (k *Keeper) Err() error {
	return k.loop.err()
}

// Keys returns the number of registered keys.
func (k *Keeper) Keys() int {
	return k.reg.len()
}

// Close stops renewing, reports the transition to Closed, and revokes the
// lease, which deletes every key attached to it at once. It is idempotent:
// a second Close returns nil at once. The classified error is that of the
// revoke (a lease the server no longer knows is not an error), or of ctx
// ending first.
//
// Close waits, within ctx, for the keeper's work in flight (attempts,
// watches, Register and Deregister), which ends promptly since Close
// cancels it, then for the revoke, then for the callbacks and observers
// already queued, the transition to Closed among them. Called from a
// callback or an observer it cannot wait for that one, nor for those queued
// after it, which run once it returns; it still revokes the lease before
// returning.
func (k *Keeper) Close(ctx context.Context) error {
	if !k.life.close() {
		return nil
	}
	id := k.loop.close()
	k.reg.close()
	k.watch.stop()
	err := k.life.wait(ctx)
	switch {
	case err != nil:
		err = lkerrors.ClassifyConn(err, k.hub.b.connState())
	case id != 0:
		err = k.hub.b.revoke(ctx, id)
		if lkerrors.KindOf(err) == lkerrors.LeaseExpired {
			err = nil
		}
		err = lkerrors.ClassifyConn(err, k.hub.b.connState())
	}
	if herr := k.hub.leave(ctx, k.cfg); err == nil && herr != nil {
		err = lkerrors.Classify(herr)
	}
	k.disp.wait(ctx)
	return err
}
