package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	lkerrors "github.com/leasekeeper/leasekeeper/errors"
	"github.com/leasekeeper/leasekeeper/internal/demo"
	"github.com/leasekeeper/leasekeeper/internal/embedetcd"
	"github.com/leasekeeper/leasekeeper/internal/sidecar"
	"github.com/leasekeeper/leasekeeper/keeper"
	"github.com/leasekeeper/leasekeeper/keeper/metrics"
)

const closeTimeout = 5 * time.Second

// localName names the flag set of leasekeeper with no command.
const localName = "(no command)"

// cmdLocal holds a key on an embedded etcd until a signal.
func cmdLocal(ctx context.Context, sigs <-chan os.Signal, args []string, stdout, stderr io.Writer) (int, error) {
	fs := flag.NewFlagSet(localName, flag.ContinueOnError)
	var c common
	c.register(fs, 10*time.Second)
	host, _ := os.Hostname()
	key := fs.String("key", demo.Key, "key to register")
	value := fs.String("value", host, "value of the key")
	if err := parse(fs, args, stderr); err != nil {
		return 0, err
	}
	if err := c.validate(); err != nil {
		return 0, err
	}
	if fs.NArg() > 0 {
		return 0, usagef("unexpected argument %q", fs.Arg(0))
	}
	out, err := sidecar.NewOutput(c.logFormat, stdout, stderr)
	if err != nil {
		return 0, usagef("%v", err)
	}
	defer out.Sync()

	dir, err := os.MkdirTemp("", "leasekeeper-etcd")
	if err != nil {
		return 0, err
	}
	defer func() { _ = os.RemoveAll(dir) }()
	srv, err := embedetcd.Start(dir, 30*time.Second)
	if err != nil {
		return 0, err
	}
	defer srv.Stop()
	out.Event("embedded etcd serving; Ctrl-C to stop", "endpoint", srv.Endpoint, "data", dir)
	cli, err := newClient(clientv3.Config{Endpoints: []string{srv.Endpoint}, DialTimeout: 5 * time.Second})
	if err != nil {
		return 0, err
	}
	defer func() { _ = cli.Close() }()
	return hold(ctx, cli, c, out, sidecar.Options{Key: *key, Value: *value, Signals: sigs})
}

// cmdRun holds a key in a real cluster until a signal, or while the child
// runs.
func cmdRun(ctx context.Context, sigs <-chan os.Signal, args []string, stdout, stderr io.Writer) (int, error) {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	var c common
	var cl clusterFlags
	var inst instanceFlags
	c.register(fs, 10*time.Second)
	cl.register(fs)
	inst.register(fs)
	if err := parse(fs, args, stderr); err != nil {
		return 0, err
	}
	if err := c.validate(); err != nil {
		return 0, err
	}
	if err := cl.validate(); err != nil {
		return 0, err
	}
	key, value, err := inst.resolve()
	if err != nil {
		return 0, err
	}
	out, err := sidecar.NewOutput(c.logFormat, stdout, stderr)
	if err != nil {
		return 0, usagef("%v", err)
	}
	defer out.Sync()

	cfg := clientv3.Config{Endpoints: strings.Split(cl.endpoints, ","), DialTimeout: cl.dialTimeout, Username: cl.user}
	if info := cl.tlsInfo(); info != nil {
		if cfg.TLS, err = info.ClientConfig(); err != nil {
			return 0, usagef("tls: %v", err)
		}
	}
	if cl.user != "" {
		if cfg.Password, err = cl.password(); err != nil {
			return 0, usagef("-password-file: %v", err)
		}
	}
	cli, err := newClient(cfg)
	if err != nil {
		return 0, fmt.Errorf("etcd client: %w", lkerrors.Classify(err))
	}
	defer func() { _ = cli.Close() }()
	return hold(ctx, cli, c, out, sidecar.Options{Key: key, Value: value, Command: fs.Args(), Signals: sigs,
		KillTimeout: inst.killTimeout, Ready: inst.ready(), ReadyEvery: inst.readyEvery, ReadyFailures: inst.readyFailures})
}

// cmdDemo runs the outage demo on an embedded etcd.
func cmdDemo(ctx context.Context, args []string, stdout, stderr io.Writer) (int, error) {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	ttl := fs.Duration("ttl", 3*time.Second, "lease TTL")
	outage := fs.Duration("outage", 0, "how long etcd stays down (default twice the TTL)")
	if err := parse(fs, args, stderr); err != nil {
		return 0, err
	}
	if *outage == 0 {
		*outage = 2 * *ttl
	}
	cfg := keeper.DefaultConfig()
	cfg.TTL = *ttl
	if err := cfg.Validate(); err != nil {
		return 0, usagef("-ttl: %v", err)
	}
	if *outage <= *ttl {
		return 0, usagef("-outage (%s) must be longer than -ttl (%s)", *outage, *ttl)
	}
	ok, err := demo.Run(ctx, stdout, demo.Options{TTL: *ttl, Outage: *outage})
	if err != nil || !ok {
		return 1, err
	}
	return 0, nil
}

// newClient connects with gRPC's default dial options: the keeper asks
// the connection to reconnect at once while it is down, so it hears of
// etcd coming back without a shorter reconnect backoff.
func newClient(cfg clientv3.Config) (*clientv3.Client, error) {
	cfg.Logger = zap.NewNop()
	return clientv3.New(cfg)
}

// hold builds the keeper and runs the sidecar.
func hold(ctx context.Context, cli *clientv3.Client, c common, out *sidecar.Output, opts sidecar.Options) (int, error) {
	reg := prometheus.NewRegistry()
	m := metrics.New(reg)
	cfg := keeper.DefaultConfig()
	cfg.TTL = c.ttl
	cfg.WatchKeys = c.watchKeys
	cfg.Logger = out.Logger()
	cfg.Callbacks.OnTransition = out.OnTransition()
	cfg.Observers = []keeper.Observer{m}
	k, err := keeper.New(cli, cfg)
	if err != nil {
		return 0, err
	}
	m.Track(k)
	opts.Metrics = promhttp.HandlerFor(reg, promhttp.HandlerOpts{})
	opts.HealthAddr = c.healthAddr
	opts.StartTimeout = c.ttl
	opts.CloseTimeout = closeTimeout
	opts.DrainDelay = c.drainDelay
	if opts.KillTimeout == 0 {
		opts.KillTimeout = closeTimeout
	}
	return sidecar.Run(ctx, k, out, opts)
}
