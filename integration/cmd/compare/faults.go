package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"go.uber.org/zap"
	"google.golang.org/grpc"

	"github.com/leasekeeper/leasekeeper/internal/test/testbed"
	"github.com/leasekeeper/leasekeeper/keeper"
	"github.com/leasekeeper/leasekeeper/statemachine"
)

// faultRun is one silent partition seen by the keeper and both anchors.
// Times count from the start of the partition, recoveries from its end;
// negative means it did not happen.
type faultRun struct {
	keeperSignal, sessionSignal, keepAliveSignal time.Duration
	keeperFailed                                 time.Duration
	keeperDeleted, sessionDeleted, kaDeleted     time.Duration
	keeperRecovery, loopRecovery                 time.Duration
}

// marks records when named things happened, every time they did.
type marks struct {
	mu sync.Mutex
	at map[string][]time.Time
}

func (m *marks) set(name string) { m.setAt(name, time.Now()) }

// setAt records that name happened at t.
func (m *marks) setAt(name string, t time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.at[name] = append(m.at[name], t)
}

// since returns how long after t0 name first happened at or after t0, or
// -1.
func (m *marks) since(name string, t0 time.Time) time.Duration {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, at := range m.at[name] {
		if !at.Before(t0) {
			return at.Sub(t0)
		}
	}
	return -1
}

// wait waits until every name happened at or after t0, at most timeout.
func (m *marks) wait(names []string, t0 time.Time, timeout time.Duration) {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		n := 0
		for _, name := range names {
			if m.since(name, t0) >= 0 {
				n++
			}
		}
		if n == len(names) {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func faultFigures(bin string, o options, r *report) error {
	c, stop, err := oneMember(bin)
	if err != nil {
		return err
	}
	defer stop()
	var runs []faultRun
	for i := range o.runs {
		progress("fault run %d/%d", i+1, o.runs)
		fr, err := oneFault(c, "direct", c.Endpoints(), o.ttl, i, o.runs)
		if err != nil {
			return err
		}
		runs = append(runs, fr)
	}
	r.add(faultSections(runs, o.ttl))
	if o.skipProxy {
		return nil
	}
	// The same partition behind an etcd gRPC proxy: the clients reach the
	// member through one proxy of the same binary, and the link between
	// it and the member stalls.
	dir, err := os.MkdirTemp("", "leasekeeper-compare-proxy")
	if err != nil {
		return err
	}
	defer func() { _ = os.RemoveAll(dir) }()
	gp, err := testbed.StartGRPCProxy(bin, filepath.Join(dir, "grpc-proxy.log"), c.Endpoints())
	if err != nil {
		return err
	}
	defer gp.Kill()
	var proxied []faultRun
	for i := range o.runs {
		progress("fault run %d/%d behind an etcd gRPC proxy", i+1, o.runs)
		fr, err := oneFault(c, "grpc-proxy", []string{gp.URL}, o.ttl, i, o.runs)
		if err != nil {
			return err
		}
		proxied = append(proxied, fr)
	}
	r.add(proxyFaultSection(proxied, o.ttl))
	return nil
}

// oneMember starts a one-member etcd in a temporary directory; stop stops
// it and removes the directory.
func oneMember(bin string) (c *testbed.Cluster, stop func(), err error) {
	dir, err := os.MkdirTemp("", "leasekeeper-compare")
	if err != nil {
		return nil, nil, err
	}
	if c, err = testbed.StartCluster(bin, dir, 1); err != nil {
		_ = os.RemoveAll(dir)
		return nil, nil, err
	}
	return c, func() {
		c.Close()
		_ = os.RemoveAll(dir)
	}, nil
}

func newClient(endpoints []string, opts ...grpc.DialOption) (*clientv3.Client, error) {
	return clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: 5 * time.Second, Logger: zap.NewNop(), DialOptions: opts})
}

// oneFault runs fault run number run of runs: the partition starts at a
// random point of the run-th of runs equal parts of the keeper's renewal
// cycle (stratified sampling), so that the runs cover the whole cycle and
// the median of the first signal is not left to the luck of the draw (with
// 7 points drawn from the whole cycle, one run in six would put the median
// past the third quarter of the cycle).
//
// The clients reach the member at endpoints: its fault proxy, or an etcd
// gRPC proxy in front of that; their keys are under cmp/<path>/<run>/.
func oneFault(c *testbed.Cluster, path string, endpoints []string, ttl time.Duration, run, runs int) (faultRun, error) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	proxy := c.Members[0].Proxy
	m := &marks{at: map[string][]time.Time{}}
	prefix := fmt.Sprintf("cmp/%s/%d/", path, run)
	kKey, sKey, aKey := prefix+"keeper", prefix+"session", prefix+"keepalive"

	obs, err := newClient(c.DirectEndpoints())
	if err != nil {
		return faultRun{}, err
	}
	defer func() { _ = obs.Close() }()
	wch := obs.Watch(ctx, prefix, clientv3.WithPrefix(), clientv3.WithCreatedNotify())
	<-wch // the watch is in place before anything is written
	go func() {
		for wr := range wch {
			for _, ev := range wr.Events {
				if ev.Type == mvccpb.DELETE {
					m.set("deleted " + string(ev.Kv.Key))
				}
			}
		}
	}()

	// The keeper.
	kcli, err := newClient(endpoints, testbed.ShortReconnect)
	if err != nil {
		return faultRun{}, err
	}
	defer func() { _ = kcli.Close() }()
	cfg := keeper.DefaultConfig()
	cfg.TTL = ttl
	cfg.Callbacks.OnTransition = func(t statemachine.Transition) { m.set(t.To.String()) }
	k, err := keeper.New(kcli, cfg)
	if err != nil {
		return faultRun{}, err
	}
	defer func() { _ = k.Close(context.Background()) }()
	if err := k.Register(ctx, kKey, "v"); err != nil {
		return faultRun{}, err
	}
	if err := k.Start(ctx); err != nil {
		return faultRun{}, err
	}

	// concurrency.Session, and the loop users write on it: on Done, a new
	// session and the key again.
	scli, err := newClient(endpoints, testbed.ShortReconnect)
	if err != nil {
		return faultRun{}, err
	}
	defer func() { _ = scli.Close() }()
	sess, err := concurrency.NewSession(scli, concurrency.WithTTL(int(ttl/time.Second)))
	if err != nil {
		return faultRun{}, err
	}
	if _, err := scli.Put(ctx, sKey, "v", clientv3.WithLease(sess.Lease())); err != nil {
		return faultRun{}, err
	}
	var loop sync.WaitGroup
	loop.Add(1)
	go func() {
		defer loop.Done()
		select {
		case <-sess.Done():
		case <-ctx.Done():
			return
		}
		m.set("session done")
		for ctx.Err() == nil {
			actx, acancel := context.WithTimeout(ctx, time.Second)
			s, err := concurrency.NewSession(scli, concurrency.WithTTL(int(ttl/time.Second)), concurrency.WithContext(ctx))
			if err == nil {
				_, err = scli.Put(actx, sKey, "v", clientv3.WithLease(s.Lease()))
				if err == nil {
					acancel()
					m.set("session back")
					<-ctx.Done()
					_ = s.Close()
					return
				}
				_ = s.Close()
			}
			acancel()
			time.Sleep(100 * time.Millisecond)
		}
	}()
	defer loop.Wait()
	defer cancel()

	// Lease.KeepAlive.
	acli, err := newClient(endpoints, testbed.ShortReconnect)
	if err != nil {
		return faultRun{}, err
	}
	defer func() { _ = acli.Close() }()
	g, err := acli.Grant(ctx, int64(ttl/time.Second))
	if err != nil {
		return faultRun{}, err
	}
	if _, err := acli.Put(ctx, aKey, "v", clientv3.WithLease(g.ID)); err != nil {
		return faultRun{}, err
	}
	ch, err := acli.KeepAlive(ctx, g.ID)
	if err != nil {
		return faultRun{}, err
	}
	go func() {
		for range ch {
		}
		m.set("keepalive closed")
	}()

	// Partition at a random point of the run-th part of the renewal cycle.
	last, cycle, err := renewalCycle(k, 4*ttl)
	if err != nil {
		return faultRun{}, err
	}
	time.Sleep(time.Until(last.Add(time.Duration((float64(run) + rand.Float64()) / float64(runs) * float64(cycle)))))
	t0 := time.Now()
	proxy.Stall()
	m.wait([]string{"failed", "session done", "keepalive closed", "deleted " + kKey, "deleted " + sKey, "deleted " + aKey}, t0, 4*ttl)
	proxy.Heal()
	t1 := time.Now()
	m.wait([]string{"healthy", "session back"}, t1, 20*time.Second)
	fr := faultRun{
		keeperSignal:    m.since("degraded", t0),
		sessionSignal:   m.since("session done", t0),
		keepAliveSignal: m.since("keepalive closed", t0),
		keeperFailed:    m.since("failed", t0),
		keeperDeleted:   m.since("deleted "+kKey, t0),
		sessionDeleted:  m.since("deleted "+sKey, t0),
		kaDeleted:       m.since("deleted "+aKey, t0),
		keeperRecovery:  m.since("healthy", t1),
		loopRecovery:    m.since("session back", t1),
	}
	return fr, nil
}

// renewalCycle waits for three renewals of k in a row, seen as its
// deadline moving, and returns when the last was seen and the time since
// the one before: the phase of k's renewal cycle, to within the poll and a
// round trip.
func renewalCycle(k *keeper.Keeper, limit time.Duration) (last time.Time, cycle time.Duration, err error) {
	end := time.Now().Add(limit)
	var seen []time.Time
	d := k.Deadline()
	for len(seen) < 3 {
		if time.Now().After(end) {
			return time.Time{}, 0, fmt.Errorf("the keeper renewed %d times in %s", len(seen), limit)
		}
		time.Sleep(2 * time.Millisecond)
		if nd := k.Deadline(); !nd.Equal(d) {
			d = nd
			seen = append(seen, time.Now())
		}
	}
	// The first renewals after Start join the keepers' renewal grid: the gap
	// before the first seen may be shorter than the cycle.
	return seen[2], seen[2].Sub(seen[1]), nil
}

// faultStats are the fault runs' figures, gathered per client.
type faultStats struct {
	keeperSig, sessSig, kaSig, keeperMargin, sessMargin, kaMargin, keeperRec, loopRec []time.Duration
	keeperAlwaysFirst                                                                 bool
}

func gather(runs []faultRun) faultStats {
	var keeperSig, sessSig, kaSig, keeperMargin, sessMargin, kaMargin, keeperRec, loopRec []time.Duration
	keeperAlwaysFirst := true
	for _, r := range runs {
		if r.keeperSignal >= 0 {
			keeperSig = append(keeperSig, r.keeperSignal)
		}
		if r.sessionSignal >= 0 {
			sessSig = append(sessSig, r.sessionSignal)
		}
		if r.keepAliveSignal >= 0 {
			kaSig = append(kaSig, r.keepAliveSignal)
		}
		if r.keeperDeleted >= 0 && r.keeperFailed >= 0 {
			keeperMargin = append(keeperMargin, r.keeperDeleted-r.keeperFailed)
			keeperAlwaysFirst = keeperAlwaysFirst && r.keeperFailed < r.keeperDeleted
		} else {
			keeperAlwaysFirst = false
		}
		if r.sessionDeleted >= 0 && r.sessionSignal >= 0 {
			sessMargin = append(sessMargin, r.sessionDeleted-r.sessionSignal)
		}
		if r.kaDeleted >= 0 && r.keepAliveSignal >= 0 {
			kaMargin = append(kaMargin, r.kaDeleted-r.keepAliveSignal)
		}
		if r.keeperRecovery >= 0 {
			keeperRec = append(keeperRec, r.keeperRecovery)
		}
		if r.loopRecovery >= 0 {
			loopRec = append(loopRec, r.loopRecovery)
		}
	}
	return faultStats{keeperSig, sessSig, kaSig, keeperMargin, sessMargin, kaMargin, keeperRec, loopRec, keeperAlwaysFirst}
}

func faultSections(runs []faultRun, ttl time.Duration) string {
	g := gather(runs)
	sig := summarize(fractions(g.keeperSig, ttl))
	rec := summarize(seconds(g.keeperRec))
	out := "## 1. Time from a silent partition to the first signal\n\n" +
		"The proxy in front of the only member stalls every byte. Signal: the keeper's `degraded`; " +
		"`Session.Done()` closing; the `KeepAlive` channel closing. Fraction of the TTL, min / median / max.\n\n" +
		table([]string{"client", "first signal (× TTL)", "runs", "target"}, [][]string{
			{"leasekeeper", sig.format("", 2), fmt.Sprint(sig.n), fmt.Sprintf("median ≤ 0.35, max ≤ 0.5: %s", verdict(sig.n == len(runs) && sig.med <= 0.35 && sig.max <= 0.5))},
			{"concurrency.Session", summarize(fractions(g.sessSig, ttl)).format("", 2), fmt.Sprint(len(g.sessSig)), "(anchor)"},
			{"Lease.KeepAlive", summarize(fractions(g.kaSig, ttl)).format("", 2), fmt.Sprint(len(g.kaSig)), "(anchor)"},
		}) + "\n"
	out += "## 2. Failed before the server deletes the keys\n\n" +
		"Time from the client's \"registration lost\" signal (keeper: `failed`; anchors: as above) to the server " +
		"deleting its key, seen by a watcher on the member. Positive: the client knew first.\n\n" +
		table([]string{"client", "margin (s)", "runs", "target"}, [][]string{
			{"leasekeeper", summarize(seconds(g.keeperMargin)).format("s", 3), fmt.Sprint(len(g.keeperMargin)), fmt.Sprintf("positive in every run: %s", verdict(g.keeperAlwaysFirst))},
			{"concurrency.Session", summarize(seconds(g.sessMargin)).format("s", 3), fmt.Sprint(len(g.sessMargin)), "(anchor)"},
			{"Lease.KeepAlive", summarize(seconds(g.kaMargin)).format("s", 3), fmt.Sprint(len(g.kaMargin)), "(anchor)"},
		}) + "\n"
	out += "## 3. Recovery after etcd answers again\n\n" +
		"Time from the end of the partition to the key being back with a live lease: the keeper heals by " +
		"itself; the anchor is the loop users write (on `Done`, a new session and the key again).\n\n" +
		table([]string{"client", "recovery (s)", "runs", "target"}, [][]string{
			{"leasekeeper", rec.format("s", 3), fmt.Sprint(rec.n), fmt.Sprintf("median < 0.2 s: %s", verdict(rec.n > 0 && rec.med < 0.2))},
			{"Session + re-register loop", summarize(seconds(g.loopRec)).format("s", 3), fmt.Sprint(len(g.loopRec)), "(anchor)"},
		}) + "\n"
	return out
}

// proxyFaultSection gives the fault runs behind an etcd gRPC proxy: the
// first signal, the margin before the server deleted the key, and the
// recovery, for the keeper and both anchors.
func proxyFaultSection(runs []faultRun, ttl time.Duration) string {
	g := gather(runs)
	row := func(name string, sig, margin, rec []time.Duration, target string) []string {
		return []string{name, summarize(fractions(sig, ttl)).format("", 2), summarize(seconds(margin)).format("s", 3),
			summarize(seconds(rec)).format("s", 3), fmt.Sprint(len(runs)), target}
	}
	return "## 3b. The same partition behind an etcd gRPC proxy\n\n" +
		"The clients reach the member through one `etcd grpc-proxy start` of the same binary, and the link between " +
		"the proxy and the member stalls every byte, as in figures 1 to 3 (the keeper's signal is `degraded`, " +
		"its margin counts from `failed`). The proxy answers keepalives from its own renewals and goes silent " +
		"while its link is stalled. Each run's partition starts after the keeper's third renewal through the proxy.\n\n" +
		table([]string{"client", "first signal (× TTL)", "margin (s)", "recovery (s)", "runs", "target"}, [][]string{
			row("leasekeeper", g.keeperSig, g.keeperMargin, g.keeperRec,
				fmt.Sprintf("failed before the server deletes the key in every run: %s", verdict(g.keeperAlwaysFirst && len(g.keeperMargin) == len(runs)))),
			row("concurrency.Session", g.sessSig, g.sessMargin, g.loopRec, "(anchor; recovery: the re-register loop)"),
			row("Lease.KeepAlive", g.kaSig, g.kaMargin, nil, "(anchor)"),
		}) + "\n"
}
