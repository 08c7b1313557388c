package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/leasekeeper/leasekeeper/internal/test/testbed"
	"github.com/leasekeeper/leasekeeper/keeper"
	"github.com/leasekeeper/leasekeeper/statemachine"
)

// soak is one run: the cluster, the keepers and their clients, the
// observer that reads the members directly, and what the checks found.
type soak struct {
	o     options
	rng   *rand.Rand
	round []int // the faults left in this round, by index
	began time.Time
	c     *testbed.Cluster
	gp    *testbed.GRPCProxy // in front of every member's proxy, for the proxied keepers
	obs   *clientv3.Client   // straight to the members
	log   *zap.Logger        // the keepers' debug log, with -log
	cls   []*client
	subs  []*subject
	excl  map[string][]*subject // exclusive key -> the keepers contending for it
	chk   *checker
	stop  context.CancelFunc
	wg    sync.WaitGroup

	faults map[string]int
	heals  []time.Duration
	usage  []usage // at quiet points: after warm-up, then after each fault
}

// client is one etcd client of keepers, with a proxy of its own in front of
// each member's proxy: stalling those cuts this client off alone, stalling
// a member's proxy cuts the member off from every client.
type client struct {
	cli     *clientv3.Client
	proxies []*testbed.Proxy
}

// subject is one keeper, its keys, and what it reported.
type subject struct {
	i       int
	k       *keeper.Keeper
	cl      *client
	proxied bool   // its client goes through the gRPC proxy
	rkey    string // its restore key
	xkey    string // its exclusive key, if any

	mu sync.Mutex
	ts []statemachine.Transition
}

func (sub *subject) record(t statemachine.Transition) {
	sub.mu.Lock()
	defer sub.mu.Unlock()
	sub.ts = append(sub.ts, t)
}

// failedBetween reports whether the keeper entered Failed within [from, to].
func (sub *subject) failedBetween(from, to time.Time) bool {
	sub.mu.Lock()
	defer sub.mu.Unlock()
	for _, tr := range sub.ts {
		if tr.To == statemachine.Failed && !tr.At.Before(from) && !tr.At.After(to) {
			return true
		}
	}
	return false
}

func setUp(o options, bin, dir string) (*soak, error) {
	s := &soak{o: o, rng: rand.New(rand.NewPCG(o.seed, 0x5eed)), began: time.Now(),
		excl: map[string][]*subject{}, faults: map[string]int{}}
	var err error
	if o.logPath != "" {
		zc := zap.NewProductionConfig()
		zc.Level, zc.OutputPaths, zc.Sampling = zap.NewAtomicLevelAt(zap.DebugLevel), []string{o.logPath}, nil
		if s.log, err = zc.Build(); err != nil {
			return nil, err
		}
	}
	if s.c, err = testbed.StartCluster(bin, dir, 3); err != nil {
		return nil, err
	}
	if s.obs, err = clientv3.New(clientv3.Config{Endpoints: s.c.DirectEndpoints(), DialTimeout: 5 * time.Second,
		Logger: zap.NewNop()}); err != nil {
		s.tearDown()
		return nil, err
	}
	// One client per keeper, but the last o.shared keepers four to one;
	// the o.proxied keepers before them reach the cluster through one
	// etcd gRPC proxy, which reaches each member through its proxy, so
	// a member's faults are its upstream's.
	own := o.keepers - o.shared
	if o.proxied > 0 {
		var ups []string
		for _, m := range s.c.Members {
			ups = append(ups, m.Proxy.URL())
		}
		if s.gp, err = testbed.StartGRPCProxy(bin, filepath.Join(dir, "grpc-proxy.log"), ups); err != nil {
			s.tearDown()
			return nil, err
		}
	}
	for i := range own + o.shared/4 {
		cl, err := s.newClient(i >= own-o.proxied && i < own)
		if err != nil {
			s.tearDown()
			return nil, fmt.Errorf("client %d: %w", i, err)
		}
		s.cls = append(s.cls, cl)
	}
	for i := range o.keepers {
		cl := s.cls[min(i, own+(i-own)/4)]
		sub, err := s.newSubject(i, cl)
		if err != nil {
			s.tearDown()
			return nil, err
		}
		sub.proxied = i >= own-o.proxied && i < own
		s.subs = append(s.subs, sub)
		if sub.xkey != "" {
			s.excl[sub.xkey] = append(s.excl[sub.xkey], sub)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, len(s.subs))
	for _, sub := range s.subs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := sub.k.Start(ctx); err != nil {
				errs <- fmt.Errorf("keeper %d: Start() = %w", sub.i, err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		s.tearDown()
		return nil, err
	}
	s.chk = newChecker(s)
	cctx, stop := context.WithCancel(context.Background())
	s.stop = stop
	s.wg.Add(2)
	go func() { defer s.wg.Done(); s.chk.sample(cctx) }()
	go func() { defer s.wg.Done(); s.chk.watchDeletions(cctx) }()
	return s, nil
}

// newClient makes a client of the cluster built with default options,
// through proxies of its own: one in front of each member's proxy, or,
// viaGRPCProxy, one in front of the gRPC proxy.
func (s *soak) newClient(viaGRPCProxy bool) (*client, error) {
	cl := &client{}
	var eps []string
	addrs := make([]string, 0, len(s.c.Members))
	for _, m := range s.c.Members {
		addrs = append(addrs, m.Proxy.Addr())
	}
	if viaGRPCProxy {
		addrs = []string{strings.TrimPrefix(s.gp.URL, "http://")}
	}
	for _, addr := range addrs {
		p, err := testbed.NewProxy(addr)
		if err != nil {
			return nil, err
		}
		cl.proxies = append(cl.proxies, p)
		eps = append(eps, p.URL())
	}
	var err error
	cl.cli, err = clientv3.New(clientv3.Config{Endpoints: eps, Logger: zap.NewNop()})
	return cl, err
}

func (s *soak) newSubject(i int, cl *client) (*subject, error) {
	sub := &subject{i: i, cl: cl, rkey: fmt.Sprintf("soak/r/%03d", i)}
	if i < 40 {
		sub.xkey = fmt.Sprintf("soak/x/%02d", i/2)
	}
	cfg := keeper.DefaultConfig()
	cfg.TTL = s.o.ttl
	cfg.WatchKeys = true // the soak deletes, overwrites and takes keys behind the keepers' backs
	cfg.Callbacks.OnTransition = sub.record
	if s.log != nil {
		cfg.Logger = s.log.With(zap.Int("keeper", i))
	}
	var err error
	if sub.k, err = keeper.New(cl.cli, cfg); err != nil {
		return nil, err
	}
	ctx := context.Background()
	if err := sub.k.Register(ctx, sub.rkey, fmt.Sprintf("keeper %d", i)); err != nil {
		return nil, err
	}
	if sub.xkey != "" {
		if err := sub.k.Register(ctx, sub.xkey, fmt.Sprintf("keeper %d", i), keeper.WithPolicy(keeper.Exclusive)); err != nil {
			return nil, err
		}
	}
	return sub, nil
}

// tearDown closes everything setUp made, whatever it got to.
func (s *soak) tearDown() {
	if s.stop != nil {
		s.stop()
		s.wg.Wait()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, sub := range s.subs {
		_ = sub.k.Close(ctx)
	}
	for _, cl := range s.cls {
		if cl.cli != nil {
			_ = cl.cli.Close()
		}
		for _, p := range cl.proxies {
			p.Close()
		}
	}
	if s.obs != nil {
		_ = s.obs.Close()
	}
	if s.gp != nil {
		s.gp.Kill()
	}
	if s.c != nil {
		s.c.Close()
	}
}

// clusterKeys reads every key of the soak from the members, and the
// revision read; ok is false when the cluster cannot answer now.
func (s *soak) clusterKeys(ctx context.Context) (map[string]clientv3.LeaseID, int64, bool) {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	resp, err := s.obs.Get(ctx, "soak/", clientv3.WithPrefix())
	if err != nil {
		return nil, 0, false
	}
	keys := make(map[string]clientv3.LeaseID, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		keys[string(kv.Key)] = clientv3.LeaseID(kv.Lease)
	}
	return keys, resp.Header.Revision, true
}

// owners returns the keepers a key of the soak belongs to.
func (s *soak) owners(key string) []*subject {
	if strings.HasPrefix(key, "soak/x/") {
		return s.excl[key]
	}
	var i int
	if _, err := fmt.Sscanf(key, "soak/r/%d", &i); err != nil || i >= len(s.subs) {
		return nil
	}
	return []*subject{s.subs[i]}
}
