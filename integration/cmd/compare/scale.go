package main

import (
	"context"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/leasekeeper/leasekeeper/internal/test/testbed"
	"github.com/leasekeeper/leasekeeper/keeper"
	"github.com/leasekeeper/leasekeeper/statemachine"
)

// usage is what this process, and the etcd member it talks to, use at a
// moment.
type usage struct {
	cpu        time.Duration
	server     time.Duration // the member's CPU
	goroutines int
	heap       uint64
	stacks     uint64
	bytes      int64
	// Behind an etcd gRPC proxy (cost's front): the proxy's CPU, the
	// bytes between it and the member, and the times a holder lost its
	// lease's health on its own (a keeper leaving Healthy, a KeepAlive
	// channel closing before its context ended).
	proxy    time.Duration
	upBytes  int64
	episodes int64
	calls    string // requests sent in the window, by method (calls.since)
	setup    string // requests sent from the holders' start to the window
	// phases are the two phases both summed into this one (abba).
	phases []usage
}

// episodes counts the holders' episodes in this process (usage.episodes).
var episodes atomic.Int64

// countEpisode is the cost keepers' OnTransition: it counts the times a
// keeper leaves Healthy. A callback, not an Observer, so that the keepers
// report nothing per renewal, as the default config does not.
func countEpisode(t statemachine.Transition) {
	if t.From == statemachine.Healthy {
		episodes.Add(1)
	}
}

// front is what a cost child runs in front of the member, if anything:
// an etcd gRPC proxy, with a counting proxy between it and the member.
type front struct {
	gp *testbed.GRPCProxy
	up *testbed.Proxy
}

// add adds the front's figures at this moment to u.
func (f front) add(u *usage) {
	if f.gp == nil {
		return
	}
	u.proxy, _ = f.gp.CPU()
	u.upBytes = f.up.Bytes()
}

// measure takes the process's figures now. Its heap is the bytes of live
// objects after two garbage collections: the buffers gRPC keeps in
// sync.Pools for reuse, which the runtime frees over two collections, are
// not what a lease holds, and how many are there depends only on how many
// messages were in flight at once a moment before.
func measure(p *testbed.Proxy, serverPid int) usage {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	cpu := time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	u := usage{cpu: cpu, goroutines: runtime.NumGoroutine(), heap: ms.HeapAlloc, stacks: ms.StackInuse}
	if p != nil {
		u.bytes = p.Bytes()
	}
	if serverPid != 0 {
		u.server, _ = testbed.ProcessCPU(serverPid)
	}
	return u
}

func scaleFigures(bin string, o options, r *report) error {
	progress("renewal cost: %d keepers and %d KeepAlive leases on one client, %s each", o.leases, o.leases, o.scaleFor)
	kc, ac, err := abba(bin, 1, o.leases, o.scaleFor, "keepers", "keepalives", "")
	if err != nil {
		return err
	}
	progress("renewal cost: %d KeepAlive leases on contexts never canceled, on one client for %s", o.leases, o.scaleFor)
	tc, err := phase(bin, 1, o.leases, o.scaleFor, "keepalives-uncanceled", "")
	if err != nil {
		return err
	}
	progress("fleet cost: %d clients with one keeper each and %d with one KeepAlive lease each, %s each", o.fleet, o.fleet, o.scaleFor)
	kf, af, err := abba(bin, o.fleet, 1, o.scaleFor, "keepers", "keepalives", "")
	if err != nil {
		return err
	}
	progress("fleet cost: %d clients with one keeper each, watching its key, for %s", o.fleet, o.scaleFor)
	kw, err := phase(bin, o.fleet, 1, o.scaleFor, "keepers-watching", "")
	if err != nil {
		return err
	}
	var kp, ap usage
	if !o.skipProxy {
		progress("fleet behind an etcd gRPC proxy: %d clients with one keeper each and with one KeepAlive lease each, %s each", o.fleet, o.proxyFor)
		if kp, ap, err = abba(bin, o.fleet, 1, o.proxyFor, "keepers", "keepalives", bin); err != nil {
			return err
		}
	}
	row := func(name string, u usage) []string {
		return []string{name, fmt.Sprintf("%.2f", u.cpu.Seconds()), fmt.Sprintf("%.2f", u.server.Seconds()),
			fmt.Sprintf("%.0f", float64(u.bytes)/1024), fmt.Sprint(u.goroutines), fmt.Sprintf("%.1f", float64(u.heap)/(1<<20)),
			fmt.Sprintf("%.1f", float64(u.stacks)/(1<<20))}
	}
	header := []string{"client", "client CPU (s)", "etcd CPU (s)", "bytes (KiB)", "goroutines", "heap (MiB)", "goroutine stacks (MiB)"}
	r.add(fmt.Sprintf("## 4. Cost of renewing leases for %s\n\n", o.scaleFor) +
		"TTL 10 s, one key per lease, side by side in one run, each phase in a process of its own and against an etcd member of its own " +
		"(so that none inherits what another left in the Go runtime). The keepers and `KeepAlive` are each measured twice, " +
		"in the order keepers, `KeepAlive`, `KeepAlive`, keepers, for half the time each, so that neither gains from its place; " +
		"their rows sum the two phases (and average goroutines and heap). Client CPU is that " +
		"process's user+system time and etcd CPU the member process's (from /proc); bytes are counted both " +
		"ways in a proxy; goroutines, heap (the bytes of live objects after two collections, so that the buffers gRPC pools " +
		"for reuse are not counted) and goroutine stacks are the increase over the idle clients, " +
		"measured after one lease of the same kind was held and stopped on them (what the process does once is not a lease's cost). " +
		"The keepers do not watch their keys and have no observer (the default: an `OnTransition` callback counts " +
		"their episodes); the `KeepAlive` variant drains each channel in a " +
		"goroutine and stops by canceling its context, as users do.\n\n" +
		fmt.Sprintf("### %d leases on one client\n\n", o.leases) +
		table(header, [][]string{row("leasekeeper", kc), row("Lease.KeepAlive", ac), row("Lease.KeepAlive, context never canceled", tc)}) +
		fmt.Sprintf("\nTarget, client CPU, etcd CPU, bytes and heap no more than `KeepAlive`'s (the second row): "+
			"client CPU %s, etcd CPU %s, bytes %s, heap %s.\n\n",
			noMore(kc, ac, cpuOf, "s"), noMore(kc, ac, serverOf, "s"), noMore(kc, ac, bytesOf, "KiB"), noMore(kc, ac, heapOf, "MiB")) +
		fmt.Sprintf("A `KeepAlive` on a context that is never canceled (the third row) can be stopped only by revoking the lease "+
			"or closing the client, and costs etcd's client one goroutine per lease less, the one that would close it with "+
			"its context: beside it the keepers' client CPU is %s, etcd CPU %s, bytes %s and heap %s.\n\n",
			compared(cpuOf(kc), cpuOf(tc), "s"), compared(serverOf(kc), serverOf(tc), "s"),
			compared(bytesOf(kc), bytesOf(tc), "KiB"), compared(heapOf(kc), heapOf(tc), "MiB")) +
		requests(o.leases, []named{{"leasekeeper", kc}, {"Lease.KeepAlive", ac}, {"Lease.KeepAlive, context never canceled", tc}}) +
		heapNote(kc, ac) +
		fmt.Sprintf("### A fleet: %d clients with one lease each\n\n", o.fleet) +
		table(header, [][]string{row("leasekeeper", kf), row("Lease.KeepAlive", af), row("leasekeeper, WatchKeys", kw)}) +
		fmt.Sprintf("\nTarget, etcd CPU, bytes, and heap and goroutines per client no more than `KeepAlive`'s: etcd CPU %s, "+
			"bytes %s, heap %s (%.1f against %.1f KiB a client), goroutines %s (%.0f against %.0f a client).\n\n",
			noMore(kf, af, serverOf, "s"), noMore(kf, af, bytesOf, "KiB"),
			noMore(kf, af, heapOf, "MiB"), float64(kf.heap)/1024/float64(o.fleet), float64(af.heap)/1024/float64(o.fleet),
			verdict(kf.goroutines <= af.goroutines), float64(kf.goroutines)/float64(o.fleet), float64(af.goroutines)/float64(o.fleet)) +
		fmt.Sprintf("With `WatchKeys` (the third row) each client also watches its keeper's key on a Watch stream of its own, "+
			"which `KeepAlive` does not: %.1f KiB and %.0f goroutines a client.\n\n",
			float64(kw.heap)/1024/float64(o.fleet), float64(kw.goroutines)/float64(o.fleet)) +
		requests(o.fleet, []named{{"leasekeeper", kf}, {"Lease.KeepAlive", af}, {"leasekeeper, WatchKeys", kw}}) +
		proxyFleet(o, kp, ap))

	c, stop, err := oneMember(bin)
	if err != nil {
		return err
	}
	defer stop()
	target := strings.TrimPrefix(c.Members[0].ClientURL, "http://")
	progress("re-write of %d keys", o.keys)
	first, again, longest, calls, err := rewrite(c, o)
	if err != nil {
		return err
	}
	r.add(fmt.Sprintf("## 5. Writing %d keys\n\n", o.keys) +
		fmt.Sprintf("Keys are written %d to a transaction, each under the write lock on its own, so that Register "+
			"and Deregister wait for one transaction of a re-write, never for all of it. During the re-write "+
			"another goroutine registers and deregisters a key of its own, one call after the other.\n\n", keeper.DefaultConfig().MaxTxnOps) +
		table([]string{"step", "time", "target"}, [][]string{
			{"Start: grant and write every key", first.Round(time.Millisecond).String(), ""},
			{"after an external revoke: from `failed` to `healthy` (re-grant, re-write)", again.Round(time.Millisecond).String(), fmt.Sprintf("under 1 s: %s", verdict(again < time.Second))},
			{fmt.Sprintf("longest Register or Deregister during that re-write (%d calls)", calls), longest.Round(time.Microsecond).String(),
				fmt.Sprintf("a small part of the re-write, under a quarter: %s", verdict(calls > 0 && longest < again/4))},
		}))

	progress("idle footprint of %d keepers", o.keepers)
	g, h, err := footprint(target, o, false)
	if err != nil {
		return err
	}
	gw, hw, err := footprint(target, o, true)
	if err != nil {
		return err
	}
	r.add(fmt.Sprintf("## 6. Idle footprint of %d keepers on one client\n\n", o.keepers) +
		"Renewals cost an alarm in the hub's timers, not a goroutine, and the keepers of one client share one watch of their " +
		"keys when they watch them: an idle keeper has no goroutine, with its key watched (WatchKeys) or not (the default).\n\n" +
		table([]string{"per keeper", "value", "target"}, [][]string{
			{"goroutines (the default)", fmt.Sprintf("%.4f", g), fmt.Sprintf("no goroutine per idle keeper: %s", verdict(g < 0.01))},
			{"heap (the default)", fmt.Sprintf("%.0f bytes", h), ""},
			{"goroutines, watching its key (WatchKeys)", fmt.Sprintf("%.4f", gw), fmt.Sprintf("no goroutine per idle keeper: %s", verdict(gw < 0.01))},
			{"heap, watching its key (WatchKeys)", fmt.Sprintf("%.0f bytes", hw), ""},
		}))
	return nil
}

// startKeepers starts n keepers with one key each on cli, 32 at a time,
// watching their keys or not, each with its config changed by setup(i),
// if set.
func startKeepers(cli *clientv3.Client, n int, ttl time.Duration, prefix string, watch bool, setup func(i int, cfg *keeper.Config)) ([]*keeper.Keeper, error) {
	ks := make([]*keeper.Keeper, n)
	errs := make(chan error, n)
	var wg sync.WaitGroup
	sem := make(chan struct{}, 32)
	for i := range ks {
		cfg := keeper.DefaultConfig()
		cfg.TTL = ttl
		cfg.WatchKeys = watch
		if setup != nil {
			setup(i, &cfg)
		}
		k, err := keeper.New(cli, cfg)
		if err != nil {
			return nil, err
		}
		ks[i] = k
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			if err := k.Register(ctx, fmt.Sprintf("%s%06d", prefix, i), "v"); err != nil {
				errs <- err
				return
			}
			if err := k.Start(ctx); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	return ks, <-errs
}

func closeKeepers(ks []*keeper.Keeper) {
	for _, k := range ks {
		if k != nil {
			_ = k.Close(context.Background())
		}
	}
}

// holder starts n leases of TTL 10 s, one key each, on cli, and returns
// what stops them.
type holder func(cli *clientv3.Client, prefix string, n int) (stop func(), err error)

func keepers(cli *clientv3.Client, prefix string, n int) (func(), error) {
	return holdKeepers(cli, prefix, n, false)
}

// keepersWatching holds n keepers that watch their keys (WatchKeys).
func keepersWatching(cli *clientv3.Client, prefix string, n int) (func(), error) {
	return holdKeepers(cli, prefix, n, true)
}

func holdKeepers(cli *clientv3.Client, prefix string, n int, watch bool) (func(), error) {
	count := func(_ int, cfg *keeper.Config) { cfg.Callbacks.OnTransition = countEpisode }
	ks, err := startKeepers(cli, n, 10*time.Second, prefix+"keeper/", watch, count)
	return func() { closeKeepers(ks) }, err
}

func keepAlives(cli *clientv3.Client, prefix string, n int) (func(), error) {
	ctx, cancel := context.WithCancel(context.Background())
	return holdKeepAlives(ctx, cancel, cli, prefix, n)
}

// holdKeepAlives grants n leases of TTL 10 s on cli, puts a key with
// each, and keeps each alive with KeepAlive on ctx, draining its channel in
// a goroutine. stop cancels ctx, if cancel is set, and waits for those
// goroutines; then it revokes the leases, as a service that shuts down
// cleanly does, so that none expires during the next phase's window.
func holdKeepAlives(ctx context.Context, cancel context.CancelFunc, cli *clientv3.Client, prefix string, n int) (func(), error) {
	var wg sync.WaitGroup
	var ids []clientv3.LeaseID
	stop := func() {
		if cancel != nil {
			cancel()
			wg.Wait()
		}
		for _, id := range ids {
			rctx, rcancel := context.WithTimeout(context.Background(), 5*time.Second)
			_, _ = cli.Revoke(rctx, id)
			rcancel()
		}
	}
	for i := range n {
		g, err := cli.Grant(ctx, 10)
		if err != nil {
			return stop, err
		}
		ids = append(ids, g.ID)
		if _, err := cli.Put(ctx, fmt.Sprintf("%ska/%06d", prefix, i), "v", clientv3.WithLease(g.ID)); err != nil {
			return stop, err
		}
		ch, err := cli.KeepAlive(ctx, g.ID)
		if err != nil {
			return stop, err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range ch {
			}
			if ctx.Err() == nil {
				episodes.Add(1) // the lease was lost
			}
		}()
	}
	return stop, nil
}

// holders are the holders a cost child runs, by name.
var holders = map[string]holder{"keepers": keepers, "keepers-watching": keepersWatching, "keepalives": keepAlives, "keepalives-uncanceled": keepAlivesUncanceled}

// abba measures kinds a and b side by side in the order a, b, b, a, each
// phase for half of d on an etcd member of its own, so that neither gains
// from going first or last (a member's CPU falls over its first minutes),
// and returns each kind's figures over its two phases: CPU, bytes,
// episodes and requests summed (over d in all), goroutines, heap and
// stacks averaged.
func abba(bin string, clients, n int, d time.Duration, a, b, etcdBin string) (ua, ub usage, err error) {
	var us [4]usage
	for i, kind := range []string{a, b, b, a} {
		progress("  phase %d of 4: %s for %s", i+1, kind, d/2)
		if us[i], err = phase(bin, clients, n, d/2, kind, etcdBin); err != nil {
			return usage{}, usage{}, err
		}
	}
	return both(us[0], us[3]), both(us[1], us[2]), nil
}

// both is the figures of two phases of one kind, as abba gives them.
func both(x, y usage) usage {
	return usage{
		cpu:        x.cpu + y.cpu,
		server:     x.server + y.server,
		goroutines: (x.goroutines + y.goroutines) / 2,
		heap:       (x.heap + y.heap) / 2,
		stacks:     (x.stacks + y.stacks) / 2,
		bytes:      x.bytes + y.bytes,
		proxy:      x.proxy + y.proxy,
		upBytes:    x.upBytes + y.upBytes,
		episodes:   x.episodes + y.episodes,
		calls:      addCounts(x.calls, y.calls),
		setup:      addCounts(x.setup, y.setup),
		phases:     []usage{x, y},
	}
}

// noMore is the verdict on the target that figure f of k, the keepers,
// is no more than a's, KeepAlive's, where each is two phases summed (or
// averaged) by both: met if it is no more; else met within the run's noise
// if k exceeds a by no more than either holder's figure differs between
// its own two phases (what the figure varies by between two runs of the
// same thing, on this machine, in this run), which is said with both
// differences; else missed. A target where both do the same work by
// construction (what etcd does for a fleet behind a gRPC proxy, which
// renews every lease upstream on its own schedule whatever its clients
// send) would otherwise be met or missed by the noise alone.
func noMore(k, a usage, f func(usage) float64, unit string) string {
	if f(k) <= f(a) {
		return verdict(true)
	}
	spread := 0.0
	for _, u := range []usage{k, a} {
		if len(u.phases) == 2 {
			spread = max(spread, math.Abs(f(u.phases[0])-f(u.phases[1])))
		}
	}
	if f(k)-f(a) <= spread {
		return fmt.Sprintf("met within the run's noise (more by %.2f %s, where the two phases of one holder differ by up to %.2f %s)",
			f(k)-f(a), unit, spread, unit)
	}
	return verdict(false)
}

// The figures noMore compares.
func cpuOf(u usage) float64     { return u.cpu.Seconds() }
func serverOf(u usage) float64  { return u.server.Seconds() }
func proxyOf(u usage) float64   { return u.proxy.Seconds() }
func bytesOf(u usage) float64   { return float64(u.bytes) / 1024 }
func upBytesOf(u usage) float64 { return float64(u.upBytes) / 1024 }
func heapOf(u usage) float64    { return float64(u.heap) / (1 << 20) }

// addCounts adds two lists of requests by method, as since writes them.
func addCounts(x, y string) string {
	sum := map[string]int64{}
	for _, f := range append(strings.Fields(x), strings.Fields(y)...) {
		m, n, ok := strings.Cut(f, "=")
		var v int64
		if _, err := fmt.Sscan(n, &v); ok && err == nil {
			sum[m] += v
		}
	}
	return since(nil, sum)
}

// phase runs costIn on an etcd member of its own, started for it, so that
// no phase pays for what an earlier one left in the member (its database,
// its runtime's heap).
func phase(bin string, clients, n int, d time.Duration, kind, etcdBin string) (usage, error) {
	c, stop, err := oneMember(bin)
	if err != nil {
		return usage{}, err
	}
	defer stop()
	m := c.Members[0]
	return costIn(strings.TrimPrefix(m.ClientURL, "http://"), m, clients, n, d, kind, etcdBin)
}

// costIn runs cost in a process of its own (this command again, with
// -cost), so that no phase inherits what another left in the runtime: the
// goroutine descriptors the runtime keeps for reuse, once allocated, would
// otherwise be free for the phase after the one that made them, and its
// heap would look smaller than it is.
//
// With etcdBin set, the clients reach the member through an etcd gRPC
// proxy of that binary, which the child runs.
func costIn(target string, m *testbed.Member, clients, n int, d time.Duration, kind, etcdBin string) (usage, error) {
	cmd := exec.Command(os.Args[0], "-cost", kind, "-cost-target", target, "-cost-pid", strconv.Itoa(m.Pid()),
		"-cost-clients", strconv.Itoa(clients), "-cost-leases", strconv.Itoa(n), "-scale-for", d.String(),
		"-cost-etcd", etcdBin)
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		return usage{}, fmt.Errorf("cost of %d %s on %d clients: %w", n, kind, clients, err)
	}
	var u usage
	var cpu, server, proxy int64
	lines := strings.Split(string(out), "\n")
	if len(lines) < 3 {
		return usage{}, fmt.Errorf("cost of %d %s: reading %q: want three lines", n, kind, out)
	}
	u.calls, u.setup = lines[1], lines[2]
	if _, err := fmt.Sscan(lines[0], &cpu, &server, &u.goroutines, &u.heap, &u.stacks, &u.bytes,
		&proxy, &u.upBytes, &u.episodes); err != nil {
		return usage{}, fmt.Errorf("cost of %d %s: reading %q: %w", n, kind, out, err)
	}
	u.cpu, u.server, u.proxy = time.Duration(cpu), time.Duration(server), time.Duration(proxy)
	return u, nil
}

// costChild is the process costIn runs: it prints cost's figures on
// stdout.
func costChild(o options) error {
	start, ok := holders[o.cost]
	if !ok {
		return fmt.Errorf("no holder %q", o.cost)
	}
	costKind = o.cost
	u, err := cost(o.costTarget, o.costPid, o.costClients, o.costLeases, o.scaleFor, start, o.costEtcd)
	if err != nil {
		return err
	}
	fmt.Println(int64(u.cpu), int64(u.server), u.goroutines, u.heap, u.stacks, u.bytes, int64(u.proxy), u.upBytes, u.episodes)
	fmt.Println(u.calls)
	fmt.Println(u.setup)
	return nil
}

// keepAlivesUncanceled holds n leases as keepAlives does, but each
// KeepAlive on a context that is never canceled: etcd's client then runs
// no goroutine of its own per lease to close it, and the leases end only
// when they are revoked (at stop).
func keepAlivesUncanceled(cli *clientv3.Client, prefix string, n int) (func(), error) {
	return holdKeepAlives(context.Background(), nil, cli, prefix, n)
}

// cost measures clients clients, each with n leases held by start, for d,
// through one counting proxy in front of target (the member process
// serverPid), or, with etcdBin set, in front of an etcd gRPC proxy of
// that binary in front of a counting proxy in front of target.
func cost(target string, serverPid, clients, n int, d time.Duration, start holder, etcdBin string) (usage, error) {
	var f front
	if etcdBin != "" {
		up, err := testbed.NewProxy(target)
		if err != nil {
			return usage{}, err
		}
		defer up.Close()
		dir, err := os.MkdirTemp("", "leasekeeper-compare-proxy")
		if err != nil {
			return usage{}, err
		}
		defer func() { _ = os.RemoveAll(dir) }()
		gp, err := testbed.StartGRPCProxy(etcdBin, filepath.Join(dir, "grpc-proxy.log"), []string{up.URL()})
		if err != nil {
			return usage{}, err
		}
		defer gp.Kill()
		f = front{gp: gp, up: up}
		target = strings.TrimPrefix(gp.URL, "http://")
	}
	p, err := testbed.NewProxy(target)
	if err != nil {
		return usage{}, err
	}
	defer p.Close()
	clis := make([]*clientv3.Client, clients)
	defer func() {
		for _, cli := range clis {
			if cli != nil {
				_ = cli.Close()
			}
		}
	}()
	for i := range clis {
		if clis[i], err = newClient([]string{p.URL()}, counted.options()...); err != nil {
			return usage{}, err
		}
		if _, err := clis[i].Get(context.Background(), "warm-up"); err != nil {
			return usage{}, err
		}
	}
	// One lease held and stopped first on the first client, so that what
	// the process does once (protobuf's tables of the messages it sends
	// for the first time, gRPC's first stream of a kind) is not counted as
	// the leases' cost.
	stop, err := start(clis[0], "cost/warm-up/", 1)
	if stop != nil {
		stop()
	}
	if err != nil {
		return usage{}, err
	}
	idle := measure(p, serverPid)
	atStart := counted.snapshot()
	var stops []func()
	defer func() {
		for _, stop := range stops {
			stop()
		}
	}()
	for i, cli := range clis {
		stop, err := start(cli, fmt.Sprintf("cost/%d/", i), n)
		stops = append(stops, stop)
		if err != nil {
			return usage{}, err
		}
	}
	// Behind a gRPC proxy, a keeper learns in its first TTLs that the path
	// holds keepalives (path.go), with a probe or two: the window begins
	// after that, and the requests of the start are counted apart.
	settle := settleDirect
	if f.gp != nil {
		settle = settleProxy
	}
	time.Sleep(settle)
	before := counted.snapshot()
	u := window(p, serverPid, f, idle, d)
	u.calls, u.setup = since(before, counted.snapshot()), since(atStart, before)
	return u, nil
}

// counted counts the requests of a cost child's clients.
var counted calls

// settleDirect is how long the setup settles before a window: more than
// the renewal interval of a TTL of 10 s, so that every lease was renewed
// once and every client opened its renewal stream before the window.
// settleProxy is as long behind a gRPC proxy: three TTLs of 10 s, so that
// every keeper learned the proxy's schedule.
const (
	settleDirect = 5 * time.Second
	settleProxy  = 30 * time.Second
)

// window measures the cost of d of steady state, from now: CPU and bytes
// over d, goroutines and heap above idle at its end.
func window(p *testbed.Proxy, serverPid int, f front, idle usage, d time.Duration) usage {
	start := measure(p, serverPid)
	f.add(&start)
	eps := episodes.Load()
	stopProfile := profileWindow()
	time.Sleep(d)
	stopProfile()
	end := measure(p, serverPid)
	f.add(&end)
	return usage{
		cpu:        end.cpu - start.cpu,
		server:     end.server - start.server,
		bytes:      end.bytes - start.bytes,
		proxy:      end.proxy - start.proxy,
		upBytes:    end.upBytes - start.upBytes,
		episodes:   episodes.Load() - eps,
		goroutines: end.goroutines - idle.goroutines,
		heap:       end.heap - min(end.heap, idle.heap),
		stacks:     end.stacks - min(end.stacks, idle.stacks),
	}
}

// rewrite times Start with o.keys keys, then the re-grant and re-write
// after an external revoke. Meanwhile another goroutine registers and
// deregisters a key of its own, one call after the other, and the longest
// of those calls while the re-write runs is returned: with the keys written
// one transaction at a time, it waits for one transaction, not the re-write.
func rewrite(c *testbed.Cluster, o options) (first, again, longest time.Duration, calls int, err error) {
	cli, err := newClient(c.Endpoints())
	if err != nil {
		return 0, 0, 0, 0, err
	}
	defer func() { _ = cli.Close() }()
	marks := &marks{at: map[string][]time.Time{}}
	cfg := keeper.DefaultConfig()
	// The transition's own time: callbacks may run late under load.
	cfg.Callbacks.OnTransition = func(t statemachine.Transition) { marks.setAt(t.To.String(), t.At) }
	k, err := keeper.New(cli, cfg)
	if err != nil {
		return 0, 0, 0, 0, err
	}
	defer func() { _ = k.Close(context.Background()) }()
	ctx := context.Background()
	for i := range o.keys {
		if err := k.Register(ctx, fmt.Sprintf("rewrite/%06d", i), "v"); err != nil {
			return 0, 0, 0, 0, err
		}
	}
	t0 := time.Now()
	if err := k.Start(ctx); err != nil {
		return 0, 0, 0, 0, err
	}
	first = time.Since(t0)

	// The other caller, from the revoke until the keeper is healthy again.
	type call struct{ start, end time.Time }
	var (
		mu  sync.Mutex
		log []call
	)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			began := time.Now()
			if i%2 == 0 {
				_ = k.Register(ctx, "rewrite/~other", "v")
			} else {
				_ = k.Deregister(ctx, "rewrite/~other")
			}
			mu.Lock()
			log = append(log, call{began, time.Now()})
			mu.Unlock()
		}
	}()
	t1 := time.Now()
	if _, err := cli.Revoke(ctx, k.LeaseID()); err != nil {
		close(stop)
		wg.Wait()
		return 0, 0, 0, 0, err
	}
	marks.wait([]string{"failed"}, t1, 30*time.Second)
	failed := marks.since("failed", t1)
	marks.wait([]string{"healthy"}, t1.Add(failed), 30*time.Second)
	healthy := failed + marks.since("healthy", t1.Add(failed))
	close(stop)
	wg.Wait()
	if failed < 0 || healthy < 0 {
		return 0, 0, 0, 0, fmt.Errorf("re-write: failed after %v, healthy after %v", failed, healthy)
	}
	// The calls that overlapped the re-write, from the grant (at failed) to
	// healthy.
	from, to := t1.Add(failed), t1.Add(healthy)
	for _, c := range log {
		if c.end.After(from) && c.start.Before(to) {
			calls++
			longest = max(longest, c.end.Sub(c.start))
		}
	}
	return first, healthy - failed, longest, calls, nil
}

// footprint returns goroutines and heap bytes per idle keeper.
func footprint(target string, o options, watch bool) (float64, float64, error) {
	cli, err := newClient([]string{"http://" + target})
	if err != nil {
		return 0, 0, err
	}
	defer func() { _ = cli.Close() }()
	if _, err := cli.Get(context.Background(), "warm-up"); err != nil {
		return 0, 0, err
	}
	idle := measure(nil, 0)
	ks, err := startKeepers(cli, o.keepers, time.Minute, "idle/", watch, nil)
	defer closeKeepers(ks)
	if err != nil {
		return 0, 0, err
	}
	time.Sleep(time.Second) // let the callback dispatchers finish
	u := measure(nil, 0)
	n := float64(o.keepers)
	return float64(u.goroutines-idle.goroutines) / n, float64(u.heap-min(u.heap, idle.heap)) / n, nil
}

// compared says how a figure of the keepers' compares with another's.
func compared(ours, theirs float64, unit string) string {
	rel := "more than"
	if ours <= theirs {
		rel = "no more than"
	}
	return fmt.Sprintf("%s its (%.2f against %.2f %s)", rel, ours, theirs, unit)
}

// heapNote says why the keepers' heap is larger than KeepAlive's, when it
// is.
func heapNote(kc, ac usage) string {
	if kc.heap <= ac.heap {
		return ""
	}
	return "Heap: each keeper keeps its own state in the heap (one object with its lease, its deadline, its state " +
		"machine, its first key and its callbacks' queue; figure 6 gives the bytes per idle keeper), where " +
		"the cost of a `KeepAlive` lease is mostly its goroutines, whose stacks are outside the heap " +
		"(the last column).\n\n"
}

// proxyFleet is the fleet's figure behind an etcd gRPC proxy: k for the
// keepers, a for KeepAlive.
func proxyFleet(o options, k, a usage) string {
	if o.skipProxy {
		return ""
	}
	row := func(name string, u usage) []string {
		return []string{name, fmt.Sprint(u.episodes), fmt.Sprintf("%.2f", u.server.Seconds()), fmt.Sprintf("%.2f", u.proxy.Seconds()),
			fmt.Sprintf("%.0f", float64(u.upBytes)/1024), fmt.Sprintf("%.0f", float64(u.bytes)/1024), fmt.Sprintf("%.2f", u.cpu.Seconds())}
	}
	header := []string{"client", "false episodes", "etcd CPU (s)", "proxy CPU (s)", "bytes proxy–etcd (KiB)", "bytes clients–proxy (KiB)", "client CPU (s)"}
	return fmt.Sprintf("\n### The fleet behind one etcd gRPC proxy, for %s\n\n", o.proxyFor) +
		fmt.Sprintf("The same %d clients with one lease each (TTL 10 s), each reaching the member through one `etcd grpc-proxy start` "+
			"of the same etcd binary, which runs one keepalive of its own per lease upstream and answers the clients' on its schedule. "+
			"False episodes are a keeper leaving Healthy, or a `KeepAlive` channel closing before its context ended, with nothing "+
			"wrong; the proxy's CPU is its process's, and bytes are counted on both of its sides.\n\n", o.fleet) +
		table(header, [][]string{row("leasekeeper", k), row("Lease.KeepAlive", a)}) +
		fmt.Sprintf("\nTarget, 0 false episodes, and etcd CPU, proxy CPU and bytes on both sides no more than `KeepAlive`'s: "+
			"episodes %s, etcd CPU %s, proxy CPU %s, bytes proxy–etcd %s, bytes clients–proxy %s.\n",
			verdict(k.episodes == 0), noMore(k, a, serverOf, "s"), noMore(k, a, proxyOf, "s"),
			noMore(k, a, upBytesOf, "KiB"), noMore(k, a, bytesOf, "KiB")) +
		fmt.Sprintf("\nEach row's window begins %s after its clients started, when every keeper has learned that the path holds "+
			"keepalives; from the start to then the keepers sent, per lease: %s; `KeepAlive`: %s.\n\n",
			settleProxy, perLease(k.setup, o.fleet), perLease(a.setup, o.fleet)) +
		requests(o.fleet, []named{{"leasekeeper", k}, {"Lease.KeepAlive", a}})
}

// named is a row's holder and what it used.
type named struct {
	name string
	u    usage
}

// requests says what each holder's clients sent in the window, per lease.
func requests(leases int, rows []named) string {
	var parts []string
	for _, r := range rows {
		parts = append(parts, fmt.Sprintf("%s: %s", r.name, perLease(r.u.calls, leases)))
	}
	return "Requests per lease in the window (a keepalive is one message on a `LeaseKeepAlive` stream): " + strings.Join(parts, "; ") + ".\n\n"
}

// costKind is the holder a cost child measures.
var costKind string

// profileWindow writes a CPU profile of a cost child's window to the file
// LEASEKEEPER_COMPARE_CPUPROFILE names, with the holder's kind appended,
// if it is set: where a holder's client CPU goes. The returned func stops
// it.
func profileWindow() func() {
	path := os.Getenv("LEASEKEEPER_COMPARE_CPUPROFILE")
	if path == "" {
		return func() {}
	}
	f, err := os.Create(fmt.Sprintf("%s.%s.%d", path, costKind, os.Getpid()))
	if err != nil {
		progress("cpu profile: %v", err)
		return func() {}
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		progress("cpu profile: %v", err)
		_ = f.Close()
		return func() {}
	}
	return func() {
		pprof.StopCPUProfile()
		_ = f.Close()
	}
}
