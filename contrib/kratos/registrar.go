package kratos

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/go-kratos/kratos/v2/registry"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/leasekeeper/leasekeeper/keeper"
)

// DefaultNamespace is the namespace of kratos's own etcd registry.
const DefaultNamespace = "/microservices"

// Option configures a Registrar or a Discovery.
type Option func(*options)

type options struct {
	namespace string
	drain     time.Duration
	cfg       keeper.Config
}

// Namespace sets the prefix of every key, DefaultNamespace by default. It
// must start with "/" and not end with one, as kratos's registry writes it.
func Namespace(ns string) Option { return func(o *options) { o.namespace = ns } }

// TTL sets the lease TTL, 15s by default, as in kratos's own registry.
func TTL(ttl time.Duration) Option { return func(o *options) { o.cfg.TTL = ttl } }

// DrainDelay sets how long Deregister waits, once the key is deleted and
// before the lease is revoked, for clients to stop picking the instance:
// 1s by default. kratos bounds Deregister by its registrar timeout (10s by
// default), which the delay must stay well within.
func DrainDelay(d time.Duration) Option { return func(o *options) { o.drain = d } }

// Config sets the keeper's configuration, from which TTL and the other
// options then change their own fields. Callbacks, Logger and Observers
// go there. WatchKeys is always on: it is what puts back a key deleted
// behind the registrar's back.
func Config(cfg keeper.Config) Option { return func(o *options) { o.cfg = cfg } }

func newOptions(opts []Option) (options, error) {
	o := options{namespace: DefaultNamespace, drain: time.Second, cfg: keeper.DefaultConfig()}
	o.cfg.TTL = 15 * time.Second
	for _, opt := range opts {
		opt(&o)
	}
	o.cfg.WatchKeys = true
	switch {
	case !strings.HasPrefix(o.namespace, "/") || strings.HasSuffix(o.namespace, "/"):
		return o, fmt.Errorf("kratos: namespace must start with / and not end with one, got %q", o.namespace)
	case o.drain < 0:
		return o, fmt.Errorf("kratos: drain delay must not be negative, got %v", o.drain)
	}
	return o, o.cfg.Validate()
}

// Registrar is a registry.Registrar backed by one keeper: the instances it
// registers share one lease. Its methods are safe for concurrent use.
type Registrar struct {
	k     *keeper.Keeper
	ns    string
	drain time.Duration

	mu      sync.Mutex // guards the fields below, and orders Start and Drain
	started bool
	keys    map[string]bool // the keys registered and not yet deregistered
}

var _ registry.Registrar = (*Registrar)(nil)

// New returns a Registrar that registers through a keeper on cli. The
// keeper starts with the first Register.
func New(cli *clientv3.Client, opts ...Option) (*Registrar, error) {
	o, err := newOptions(opts)
	if err != nil {
		return nil, err
	}
	k, err := keeper.New(cli, o.cfg)
	if err != nil {
		return nil, err
	}
	return &Registrar{k: k, ns: o.namespace, drain: o.drain, keys: make(map[string]bool)}, nil
}

// Keeper returns the keeper behind the registrar, for its state, the
// write gate and the health adapter. Do not Register keys on it under the
// registrar's namespace.
func (r *Registrar) Keeper() *keeper.Keeper { return r.k }

// Key returns the key kratos's etcd registry writes for si.
func Key(namespace string, si *registry.ServiceInstance) string {
	return namespace + "/" + si.Name + "/" + si.ID
}

// Register writes si under <namespace>/<name>/<id>, and on the first call
// starts the keeper: it returns once the keeper is Healthy, or with the
// keeper's error when ctx ends first (the keeper then goes on trying in
// the background, and the key is written once etcd answers).
func (r *Registrar) Register(ctx context.Context, si *registry.ServiceInstance) error {
	if err := check(si); err != nil {
		return err
	}
	value, err := json.Marshal(si)
	if err != nil {
		return fmt.Errorf("kratos: instance %s: %w", si, err)
	}
	key := Key(r.ns, si)
	r.mu.Lock()
	defer r.mu.Unlock()
	// The keeper keeps a key whose write failed but may be retried, and
	// writes it with the next attempt: Deregister must know it too.
	r.keys[key] = true
	if err := r.k.Register(ctx, key, string(value)); err != nil || r.started {
		return err
	}
	r.started = true
	return r.k.Start(ctx)
}

// Deregister removes si. The last instance registered drains the keeper
// (keeper.Keeper.Drain): its key is deleted, the registrar waits the drain
// delay, or until ctx ends, while the service goes on serving, and then
// revokes the lease; the registrar cannot register again after that.
// Another instance's key is only deleted, and an instance not registered
// (or deregistered already) is no error. The error says whether etcd saw
// the key go: unlike kratos's own registry, it is not nil when etcd could
// not be reached (the lease then expires on its own, within a TTL).
func (r *Registrar) Deregister(ctx context.Context, si *registry.ServiceInstance) error {
	if err := check(si); err != nil {
		return err
	}
	key := Key(r.ns, si)
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.keys[key] {
		// Never registered here, or deregistered already: kratos stops an
		// app once per signal, and once more when the code calls Stop.
		return nil
	}
	delete(r.keys, key)
	if len(r.keys) > 0 || !r.started {
		return r.k.Deregister(ctx, key)
	}
	return r.k.Drain(ctx, r.drain, nil)
}

// Close revokes the lease at once, without a drain, and stops the keeper.
// It is for a registrar whose instances were never deregistered.
// Close after a drain returns nil.
func (r *Registrar) Close(ctx context.Context) error { return r.k.Close(ctx) }

func check(si *registry.ServiceInstance) error {
	if si == nil {
		return errors.New("kratos: nil service instance")
	}
	if err := checkName(si.Name); err != nil {
		return err
	}
	if si.ID == "" || strings.Contains(si.ID, "/") {
		return fmt.Errorf("kratos: instance id must be non-empty and hold no /, got %q", si.ID)
	}
	return nil
}

// checkName checks a service name, which is one element of a key.
func checkName(name string) error {
	if name == "" || strings.Contains(name, "/") {
		return fmt.Errorf("kratos: service name must be non-empty and hold no /, got %q", name)
	}
	return nil
}
