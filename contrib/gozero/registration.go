package gozero

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/zeromicro/go-zero/core/discov"
	"github.com/zeromicro/go-zero/core/netx"
	"github.com/zeromicro/go-zero/core/proc"
	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/leasekeeper/leasekeeper/keeper"
)

// Option configures a Registration.
type Option func(*options)

type options struct {
	drain time.Duration
	cfg   keeper.Config
	start time.Duration
}

// TTL sets the lease TTL, 10s by default, as go-zero's discov.TimeToLive.
func TTL(ttl time.Duration) Option { return func(o *options) { o.cfg.TTL = ttl } }

// DrainDelay sets how long a drain waits, once the key is deleted and
// before the lease is revoked: 1s by default, go-zero's wrap-up time, after
// which its proc package stops the servers.
func DrainDelay(d time.Duration) Option { return func(o *options) { o.drain = d } }

// StartTimeout bounds how long Register waits for the first registration,
// 10s by default; the keeper goes on trying after it.
func StartTimeout(d time.Duration) Option { return func(o *options) { o.start = d } }

// Config sets the keeper's configuration, from which TTL then changes its
// own field. Callbacks, Logger and Observers go there. WatchKeys is always
// on: it is what puts back a key deleted behind the registration's back.
func Config(cfg keeper.Config) Option { return func(o *options) { o.cfg = cfg } }

// Registration is a server's key, kept by a keeper on a client of its own.
// Its methods are safe for concurrent use.
type Registration struct {
	cli   *clientv3.Client
	k     *keeper.Keeper
	key   string
	value string
	drain time.Duration

	once sync.Once
	err  error // of the drain
}

// Register registers listenOn under <c.Key>/<id> and returns once the
// keeper is Healthy, or with its error when the start timeout passes first
// (the keeper then goes on trying in the background). The registration
// drains on SIGTERM and SIGINT, in go-zero's wrap-up phase.
func Register(c discov.EtcdConf, listenOn string, opts ...Option) (*Registration, error) {
	if err := c.Validate(); err != nil {
		return nil, fmt.Errorf("gozero: %w", err)
	}
	o := options{drain: time.Second, cfg: keeper.DefaultConfig(), start: 10 * time.Second}
	o.cfg.TTL = time.Duration(discov.TimeToLive) * time.Second
	for _, opt := range opts {
		opt(&o)
	}
	o.cfg.WatchKeys = true
	switch {
	case o.drain < 0:
		return nil, fmt.Errorf("gozero: drain delay must not be negative, got %v", o.drain)
	case o.start <= 0:
		return nil, fmt.Errorf("gozero: start timeout must be positive, got %v", o.start)
	case listenOn == "":
		return nil, errors.New("gozero: empty listen address")
	}
	cli, err := newClient(c)
	if err != nil {
		return nil, err
	}
	k, err := keeper.New(cli, o.cfg)
	if err != nil {
		_ = cli.Close()
		return nil, err
	}
	id := c.ID
	if !c.HasID() {
		id = rand.Int64N(1<<62) + 1
	}
	r := &Registration{cli: cli, k: k, key: c.Key + "/" + strconv.FormatInt(id, 10), value: Address(listenOn), drain: o.drain}
	ctx, cancel := context.WithTimeout(context.Background(), o.start)
	defer cancel()
	if err := k.Register(ctx, r.key, r.value); err != nil {
		_ = r.Close()
		return nil, err
	}
	proc.AddWrapUpListener(func() { _ = r.Drain(context.Background()) })
	if err := k.Start(ctx); err != nil {
		return r, err
	}
	return r, nil
}

// newClient returns a client for c's hosts, with its account and TLS.
func newClient(c discov.EtcdConf) (*clientv3.Client, error) {
	cfg := clientv3.Config{Endpoints: c.Hosts, DialTimeout: 5 * time.Second, Logger: zap.NewNop()}
	if c.HasAccount() {
		cfg.Username, cfg.Password = c.User, c.Pass
	}
	if c.HasTLS() {
		info := transport.TLSInfo{CertFile: c.CertFile, KeyFile: c.CertKeyFile, TrustedCAFile: c.CACertFile}
		tc, err := info.ClientConfig()
		if err != nil {
			return nil, fmt.Errorf("gozero: %w", err)
		}
		tc.InsecureSkipVerify = c.InsecureSkipVerify
		cfg.TLS = tc
	} else if c.InsecureSkipVerify {
		cfg.TLS = &tls.Config{InsecureSkipVerify: true}
	}
	cli, err := clientv3.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("gozero: %w", err)
	}
	return cli, nil
}

// Address returns the address zrpc registers for listenOn: listenOn itself
// when it names a host, else that of the POD_IP environment variable, else
// the machine's internal IP, with listenOn's port.
func Address(listenOn string) string {
	host, port, ok := strings.Cut(listenOn, ":")
	if !ok || host != "" && host != "0.0.0.0" {
		return listenOn
	}
	ip := os.Getenv("POD_IP")
	if ip == "" {
		ip = netx.InternalIp()
	}
	if ip == "" {
		return listenOn
	}
	return ip + ":" + port
}

// Key returns the registered key, <key>/<id>.
func (r *Registration) Key() string { return r.key }

// Value returns the registered address.
func (r *Registration) Value() string { return r.value }

// Keeper returns the keeper behind the registration, for its state, the
// write gate and the health adapter.
func (r *Registration) Keeper() *keeper.Keeper { return r.k }

// Drain withdraws the registration (keeper.Keeper.Drain): the key is
// deleted, the drain delay passes, or ctx ends, while the server goes on
// serving, and the lease is revoked. It runs once; later calls return the
// first one's error.
func (r *Registration) Drain(ctx context.Context) error {
	r.once.Do(func() {
		r.err = r.k.Drain(ctx, r.drain, nil)
		if errors.Is(r.err, keeper.ErrClosed) {
			r.err = nil
		}
		if err := r.cli.Close(); r.err == nil && err != nil && !errors.Is(err, context.Canceled) {
			r.err = err
		}
	})
	return r.err
}

// Close revokes the lease at once, without a drain.
func (r *Registration) Close() error {
	if err := r.k.Close(context.Background()); err != nil {
		return err
	}
	return r.Drain(context.Background())
}

var errNoEtcd = errors.New("gozero: the server's Etcd config has no hosts or key")
