package main

import (
	"context"
	"fmt"
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
	// phases are the phases both summed into this one (abba), and places
	// their places in the run, from 1.
	phases []usage
	places []int
	window time.Duration // how long its figures were measured, in all
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
	fleet := costSpec{clients: o.fleet, n: 1, ttl: 10 * time.Second, d: o.scaleFor, spread: true}
	if o.onlyProxy {
		kp, ap, err := proxiedFleet(bin, o, fleet)
		if err != nil {
			return err
		}
		r.add("## 4. Cost of renewing leases\n" + proxyFleet(o, kp, ap))
		return nil
	}
	var perTTL []ttlCost
	for _, ttl := range o.ttls {
		progress("renewal cost at TTL %s: %d keepers and %d KeepAlive leases on one client, %s each", ttl, o.leases, o.leases, o.costFor)
		k, a, err := abba(bin, costSpec{clients: 1, n: o.leases, ttl: ttl, d: o.costFor, spread: true}, "keepers", "keepalives")
		if err != nil {
			return err
		}
		perTTL = append(perTTL, ttlCost{ttl, k, a})
	}
	if o.onlyTTLs {
		r.add("## 4. Cost of renewing leases\n\n" + ttlSection(o, perTTL))
		return nil
	}
	progress("fleet cost: %d clients with one keeper each and %d with one KeepAlive lease each, %s each", o.fleet, o.fleet, o.scaleFor)
	kf, af, err := abba(bin, fleet, "keepers", "keepalives")
	if err != nil {
		return err
	}
	progress("fleet cost: %d clients with one keeper each, watching its key, for %s", o.fleet, o.scaleFor)
	watching := fleet
	watching.kind, watching.d = "keepers-watching", af.window/2
	kw, err := phase(bin, watching)
	if err != nil {
		return err
	}
	kp, ap, err := proxiedFleet(bin, o, fleet)
	if err != nil {
		return err
	}
	row := func(name string, u usage) []string {
		return []string{name, fmt.Sprintf("%.2f", u.cpu.Seconds()), fmt.Sprintf("%.2f", u.server.Seconds()),
			fmt.Sprintf("%.0f", float64(u.bytes)/1024), fmt.Sprint(u.goroutines), fmt.Sprintf("%.1f", float64(u.heap)/(1<<20)),
			fmt.Sprintf("%.1f", float64(u.stacks)/(1<<20))}
	}
	header := []string{"client", "client CPU (s)", "etcd CPU (s)", "bytes (KiB)", "goroutines", "heap (MiB)", "goroutine stacks (MiB)"}
	r.add("## 4. Cost of renewing leases\n\n" +
		"One key per lease, side by side in one run, each phase in a process of its own and against an etcd member of its own " +
		"(so that none inherits what another left in the Go runtime). The keepers and `KeepAlive` are each measured twice, " +
		"in the order keepers, `KeepAlive`, `KeepAlive`, keepers, so that neither gains from its place; " +
		"their figures sum the two phases (and average goroutines and heap). Client CPU is that " +
		"process's user+system time and etcd CPU the member process's (from /proc); bytes are counted both " +
		"ways in a proxy; goroutines, heap (the bytes of live objects after two collections, so that the buffers gRPC pools " +
		"for reuse are not counted) and goroutine stacks are the increase over the idle clients, " +
		"measured after one lease of the same kind was held and stopped on them (what the process does once is not a lease's cost). " +
		"The keepers do not watch their keys and have no observer (the default: an `OnTransition` callback counts " +
		"their episodes); the `KeepAlive` variant drains each channel in a " +
		"goroutine and stops by canceling its context, as users do. Each window begins once every lease was renewed twice; " +
		"on a path that answers at once it lasts a whole number of the keepers' renewal intervals " +
		"(`Config.RenewalInterval`), since the keepers of one grid point renew together.\n\n" +
		ttlSection(o, perTTL) +
		fmt.Sprintf("### A fleet: %d clients with one lease each\n\n", o.fleet) +
		"The clients start evenly over one period of `KeepAlive` (TTL/3 and 500 ms).\n\n" +
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

// proxiedFleet measures fleet behind an etcd gRPC proxy, for o.proxyFor
// each holder, unless o.skipProxy.
func proxiedFleet(bin string, o options, fleet costSpec) (k, a usage, err error) {
	if o.skipProxy {
		return usage{}, usage{}, nil
	}
	progress("fleet behind an etcd gRPC proxy: %d clients with one keeper each and with one KeepAlive lease each, %s each", o.fleet, o.proxyFor)
	fleet.d, fleet.etcdBin = o.proxyFor, bin
	return abbabaab(bin, fleet, "keepers", "keepalives")
}

// startKeepers starts n keepers with one key each on cli, 32 at a time,
// spread evenly over spread, watching their keys or not, each with its
// config changed by setup(i), if set.
func startKeepers(cli *clientv3.Client, n int, ttl time.Duration, prefix string, watch bool, spread time.Duration, setup func(i int, cfg *keeper.Config)) ([]*keeper.Keeper, error) {
	ks := make([]*keeper.Keeper, n)
	errs := make(chan error, n)
	var wg sync.WaitGroup
	sem := make(chan struct{}, 32)
	due := paced(n, spread)
	for i := range ks {
		due(i)
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

// holder starts n leases of ttl, one key each, on cli, spread evenly over
// spread, and returns what stops them.
type holder func(cli *clientv3.Client, prefix string, n int, ttl, spread time.Duration) (stop func(), err error)

func keepers(cli *clientv3.Client, prefix string, n int, ttl, spread time.Duration) (func(), error) {
	return holdKeepers(cli, prefix, n, ttl, spread, false)
}

// keepersWatching holds n keepers that watch their keys (WatchKeys).
func keepersWatching(cli *clientv3.Client, prefix string, n int, ttl, spread time.Duration) (func(), error) {
	return holdKeepers(cli, prefix, n, ttl, spread, true)
}

func holdKeepers(cli *clientv3.Client, prefix string, n int, ttl, spread time.Duration, watch bool) (func(), error) {
	count := func(_ int, cfg *keeper.Config) { cfg.Callbacks.OnTransition = countEpisode }
	ks, err := startKeepers(cli, n, ttl, prefix+"keeper/", watch, spread, count)
	return func() { closeKeepers(ks) }, err
}

func keepAlives(cli *clientv3.Client, prefix string, n int, ttl, spread time.Duration) (func(), error) {
	ctx, cancel := context.WithCancel(context.Background())
	return holdKeepAlives(ctx, cancel, cli, prefix, n, ttl, spread)
}

// holdKeepAlives grants n leases of ttl on cli, spread evenly over
// spread, puts a key with each, and keeps each alive with KeepAlive on
// ctx, draining its channel in a goroutine. stop cancels ctx, if cancel is
// set, and waits for those goroutines; then it revokes the leases, as a
// service that shuts down cleanly does, so that none expires during the
// next phase's window.
func holdKeepAlives(ctx context.Context, cancel context.CancelFunc, cli *clientv3.Client, prefix string, n int, ttl, spread time.Duration) (func(), error) {
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
	due := paced(n, spread)
	for i := range n {
		due(i)
		g, err := cli.Grant(ctx, int64(ttl/time.Second))
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
var holders = map[string]holder{"keepers": keepers, "keepers-watching": keepersWatching, "keepalives": keepAlives}

// costSpec is what one cost phase holds: clients clients with n leases
// of ttl each, held by kind, measured for d; with etcdBin set, behind an
// etcd gRPC proxy of that binary; with spread, the leases of all clients
// started evenly over one period of etcd's KeepAlive (spreadFor), so that
// their renewals are too, as those of services started at unrelated times.
// Behind a gRPC proxy that matters to etcd: the proxy renews every lease
// on a 500 ms tick of its own, all the leases due at one tick in one
// burst, and etcd's cost is per burst as much as per keepalive.
type costSpec struct {
	clients, n int
	ttl, d     time.Duration
	kind       string
	etcdBin    string
	spread     bool
}

// abba measures kinds a and b side by side in the order a, b, b, a, each
// phase for half of s.d on an etcd member of its own, so that neither gains
// from going first or last (a member's CPU falls over its first minutes),
// and returns each kind's figures over its two phases: CPU, bytes,
// episodes and requests summed (over d in all), goroutines, heap and
// stacks averaged. On a path that answers at once each phase lasts a whole
// number of the keepers' renewal intervals, at least half of s.d: keepers
// on one grid point renew together, so a window that ended part way
// through an interval would count the renewals of some points once more
// than others', by where the window fell.
func abba(bin string, s costSpec, a, b string) (ua, ub usage, err error) {
	return inOrder(bin, s, a, b, "abba")
}

// abbabaab is abba twice, the second time with the kinds swapped: each
// kind takes four of eight places, 1, 4, 6 and 7 against 2, 3, 5 and 8,
// which sum to the same and whose squares do too, so that a drift of the
// figures over the run that is linear or quadratic in time (the machine
// warming, a member's first minutes) falls on both kinds alike. Each phase
// lasts a quarter of s.d.
func abbabaab(bin string, s costSpec, a, b string) (ua, ub usage, err error) {
	return inOrder(bin, s, a, b, "abbabaab")
}

// inOrder measures kinds a and b in the order of phases that order spells
// with the letters a and b, as abba says, each phase for s.d over half the
// number of phases.
func inOrder(bin string, s costSpec, a, b, order string) (ua, ub usage, err error) {
	s.d /= time.Duration(len(order) / 2)
	if s.etcdBin == "" {
		cfg := keeper.DefaultConfig()
		cfg.TTL = s.ttl
		every := cfg.RenewalInterval()
		s.d = (s.d + every - 1) / every * every
	}
	var as, bs []usage
	var at, bt []int
	for i, c := range order {
		s.kind = a
		if c == 'b' {
			s.kind = b
		}
		progress("  phase %d of %d: %s for %s", i+1, len(order), s.kind, s.d.Round(time.Millisecond))
		u, err := phase(bin, s)
		if err != nil {
			return usage{}, usage{}, err
		}
		if c == 'b' {
			bs, bt = append(bs, u), append(bt, i+1)
		} else {
			as, at = append(as, u), append(at, i+1)
		}
	}
	ua, ub = both(as...), both(bs...)
	ua.places, ub.places = at, bt
	ua.window, ub.window = time.Duration(len(as))*s.d, time.Duration(len(bs))*s.d
	return ua, ub, nil
}

// both is the figures of the phases of one kind, as abba gives them: CPU,
// bytes, episodes and requests summed, goroutines, heap and stacks
// averaged.
func both(phases ...usage) usage {
	var u usage
	for _, x := range phases {
		u.cpu += x.cpu
		u.server += x.server
		u.goroutines += x.goroutines
		u.heap += x.heap
		u.stacks += x.stacks
		u.bytes += x.bytes
		u.proxy += x.proxy
		u.upBytes += x.upBytes
		u.episodes += x.episodes
		u.calls = addCounts(u.calls, x.calls)
		u.setup = addCounts(u.setup, x.setup)
	}
	if n := len(phases); n > 0 {
		u.goroutines /= n
		u.heap /= uint64(n)
		u.stacks /= uint64(n)
	}
	u.phases = phases
	return u
}

// noMore is the verdict on the target that figure f of k, the keepers,
// is no more than a's, KeepAlive's, where each is phases summed (or
// averaged) by both: met if it is no more; else met within the run's noise
// if k exceeds a by no more than either holder's figure differs between
// two of its own phases (what the figure varies by between two runs of
// the same thing, on this machine, in this run), which is said with both
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
		for _, x := range u.phases {
			for _, y := range u.phases {
				spread = max(spread, f(x)-f(y))
			}
		}
	}
	if f(k)-f(a) <= spread {
		return fmt.Sprintf("met within the run's noise (more by %.2f %s, where two phases of one holder differ by up to %.2f %s)",
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
func phase(bin string, s costSpec) (usage, error) {
	c, stop, err := oneMember(bin)
	if err != nil {
		return usage{}, err
	}
	defer stop()
	m := c.Members[0]
	u, err := costIn(strings.TrimPrefix(m.ClientURL, "http://"), m, s)
	u.window = s.d
	return u, err
}

// costIn runs cost in a process of its own (this command again, with
// -cost), so that no phase inherits what another left in the runtime: the
// goroutine descriptors the runtime keeps for reuse, once allocated, would
// otherwise be free for the phase after the one that made them, and its
// heap would look smaller than it is.
//
// With s.etcdBin set, the clients reach the member through an etcd gRPC
// proxy of that binary, which the child runs.
func costIn(target string, m *testbed.Member, s costSpec) (usage, error) {
	cmd := exec.Command(os.Args[0], "-cost", s.kind, "-cost-target", target, "-cost-pid", strconv.Itoa(m.Pid()),
		"-cost-clients", strconv.Itoa(s.clients), "-cost-leases", strconv.Itoa(s.n), "-cost-ttl", s.ttl.String(),
		"-scale-for", s.d.String(), "-cost-etcd", s.etcdBin, "-cost-spread="+strconv.FormatBool(s.spread))
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		return usage{}, fmt.Errorf("cost of %d %s on %d clients: %w", s.n, s.kind, s.clients, err)
	}
	var u usage
	var cpu, server, proxy int64
	lines := strings.Split(string(out), "\n")
	if len(lines) < 3 {
		return usage{}, fmt.Errorf("cost of %d %s: reading %q: want three lines", s.n, s.kind, out)
	}
	u.calls, u.setup = lines[1], lines[2]
	if _, err := fmt.Sscan(lines[0], &cpu, &server, &u.goroutines, &u.heap, &u.stacks, &u.bytes,
		&proxy, &u.upBytes, &u.episodes); err != nil {
		return usage{}, fmt.Errorf("cost of %d %s: reading %q: %w", s.n, s.kind, out, err)
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
	spec := costSpec{clients: o.costClients, n: o.costLeases, ttl: o.costTTL, d: o.scaleFor, kind: o.cost, etcdBin: o.costEtcd, spread: o.costSpread}
	u, err := cost(o.costTarget, o.costPid, spec, start)
	if err != nil {
		return err
	}
	fmt.Println(int64(u.cpu), int64(u.server), u.goroutines, u.heap, u.stacks, u.bytes, int64(u.proxy), u.upBytes, u.episodes)
	fmt.Println(u.calls)
	fmt.Println(u.setup)
	return nil
}

// cost measures what s says, its leases held by start, through one
// counting proxy in front of target (the member process serverPid), or,
// with s.etcdBin set, in front of an etcd gRPC proxy of that binary in
// front of a counting proxy in front of target.
func cost(target string, serverPid int, s costSpec, start holder) (usage, error) {
	var f front
	if etcdBin := s.etcdBin; etcdBin != "" {
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
	clis := make([]*clientv3.Client, s.clients)
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
	stop, err := start(clis[0], "cost/warm-up/", 1, s.ttl, 0)
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
	spread := time.Duration(0)
	if s.spread {
		spread = spreadFor(s.ttl)
	}
	// The leases of all clients start evenly over spread: the clients a
	// share of it apart, each client's leases over its share.
	due := paced(len(clis), spread)
	for i, cli := range clis {
		due(i)
		stop, err := start(cli, fmt.Sprintf("cost/%d/", i), s.n, s.ttl, spread/time.Duration(len(clis)))
		stops = append(stops, stop)
		if err != nil {
			return usage{}, err
		}
	}
	// Behind a gRPC proxy, a keeper learns in its first TTLs that the path
	// holds keepalives (path.go), with a probe or two: the window begins
	// after that, and the requests of the start are counted apart.
	settle := settleDirect(s.ttl)
	if f.gp != nil {
		settle = settleProxy
	}
	time.Sleep(settle)
	before := counted.snapshot()
	u := window(p, serverPid, f, idle, s.d)
	u.calls, u.setup = since(before, counted.snapshot()), since(atStart, before)
	return u, nil
}

// counted counts the requests of a cost child's clients.
var counted calls

// settleDirect is how long the setup of leases of ttl settles before a
// window, once they all started: so long that every lease was renewed
// twice, and every keeper renews on the grid. settleProxy is as long
// behind a gRPC proxy: three TTLs of 10 s, so that every keeper learned
// the proxy's schedule.
func settleDirect(ttl time.Duration) time.Duration { return ttl + time.Second }

const settleProxy = 30 * time.Second

// spreadFor is how long the leases of ttl of one client start over when
// they are spread (costSpec.spread): one period of etcd's KeepAlive, TTL/3
// and a round of its send loop, so that its renewals, and the keepers',
// spread evenly over it.
func spreadFor(ttl time.Duration) time.Duration { return ttl/3 + 500*time.Millisecond }

// paced returns a func that waits until the i-th of n starts spread evenly
// over spread from now is due.
func paced(n int, spread time.Duration) func(i int) {
	t0 := time.Now()
	return func(i int) {
		if spread > 0 && n > 0 {
			time.Sleep(time.Until(t0.Add(spread * time.Duration(i) / time.Duration(n))))
		}
	}
}

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
	ks, err := startKeepers(cli, o.keepers, time.Minute, "idle/", watch, 0, nil)
	defer closeKeepers(ks)
	if err != nil {
		return 0, 0, err
	}
	time.Sleep(time.Second) // let the callback dispatchers finish
	u := measure(nil, 0)
	n := float64(o.keepers)
	return float64(u.goroutines-idle.goroutines) / n, float64(u.heap-min(u.heap, idle.heap)) / n, nil
}

// heapNote says why the keepers' heap is larger than KeepAlive's, where
// it is at some TTL.
func heapNote(rows []ttlCost) string {
	for _, r := range rows {
		if r.k.heap > r.a.heap {
			return "Heap: each keeper keeps its own state in the heap (one object with its lease, its deadline, its state " +
				"machine, its first key and its callbacks' queue; figure 6 gives the bytes per idle keeper), where " +
				"the cost of a `KeepAlive` lease is mostly its goroutines, whose stacks are outside the heap.\n\n"
		}
	}
	return ""
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
			"The proxy renews its leases on a 500 ms tick of its own, all the leases due at one tick in one burst, and etcd's cost "+
			"follows the bursts as much as the keepalives: so the clients start evenly over one period of `KeepAlive`, as services "+
			"started at unrelated times do, and each tick carries as many leases whichever holder keeps them. "+
			"False episodes are a keeper leaving Healthy, or a `KeepAlive` channel closing before its context ended, with nothing "+
			"wrong; the proxy's CPU is its process's, and bytes are counted on both of its sides.\n\n", o.fleet) +
		table(header, [][]string{row("leasekeeper", k), row("Lease.KeepAlive", a)}) +
		fmt.Sprintf("\nTarget, 0 false episodes, and etcd CPU, proxy CPU and bytes on both sides no more than `KeepAlive`'s: "+
			"episodes %s, etcd CPU %s, proxy CPU %s, bytes proxy–etcd %s, bytes clients–proxy %s.\n",
			verdict(k.episodes == 0), noMore(k, a, serverOf, "s"), noMore(k, a, proxyOf, "s"),
			noMore(k, a, upBytesOf, "KiB"), noMore(k, a, bytesOf, "KiB")) +
		fmt.Sprintf("\nThe holders ran in the order keepers, `KeepAlive`, `KeepAlive`, keepers, then the other way round, "+
			"%s each phase, so that a drift over the run falls on both alike; etcd CPU (s) by phase, in that order: %s.\n",
			(o.proxyFor/time.Duration(max(1, len(k.phases)))).Round(time.Second), byPlace(k, a, serverOf)) +
		fmt.Sprintf("\nEach row's window begins %s after its clients started, when every keeper has learned that the path holds "+
			"keepalives; from the start to then the keepers sent, per lease: %s; `KeepAlive`: %s.\n\n",
			settleProxy, perLease(k.setup, o.fleet), perLease(a.setup, o.fleet)) +
		requests(o.fleet, []named{{"leasekeeper", k}, {"Lease.KeepAlive", a}})
}

// byPlace lists figure f of the phases of k, the keepers, and a,
// KeepAlive, in the order they ran, each with its holder's initial (k or
// a).
func byPlace(k, a usage, f func(usage) float64) string {
	parts := make([]string, len(k.phases)+len(a.phases))
	for _, h := range []struct {
		u usage
		l string
	}{{k, "k"}, {a, "a"}} {
		for i, at := range h.u.places {
			if at >= 1 && at <= len(parts) && i < len(h.u.phases) {
				parts[at-1] = fmt.Sprintf("%s %.2f", h.l, f(h.u.phases[i]))
			}
		}
	}
	return strings.Join(parts, ", ")
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

// ttlCost is the cost of the leases on one client at one TTL: k for the
// keepers, a for KeepAlive.
type ttlCost struct {
	ttl  time.Duration
	k, a usage
}

// ttlSection is the cost of o.leases leases on one client at each TTL: the
// figures of both holders, then each of the keepers' as a ratio to
// KeepAlive's, with the target that none is above 1.
func ttlSection(o options, rows []ttlCost) string {
	var abs, ratios [][]string
	var notes, met, missed []string
	for _, r := range rows {
		for _, h := range []named{{"leasekeeper", r.k}, {"Lease.KeepAlive", r.a}} {
			u := h.u
			abs = append(abs, []string{r.ttl.String(), h.name, fmt.Sprintf("%.2f", cpuOf(u)), fmt.Sprintf("%.2f", serverOf(u)),
				fmt.Sprintf("%.0f", bytesOf(u)), fmt.Sprintf("%.1f", heapOf(u)),
				fmt.Sprintf("%.2f", perMinute(u, o.leases, "LeaseKeepAlive")), fmt.Sprintf("%.3f", perMinute(u, o.leases, "LeaseKeepAlive.open")),
				fmt.Sprint(u.episodes), u.window.Round(time.Millisecond).String()})
		}
		ratio := func(f func(usage) float64) float64 { return f(r.k) / f(r.a) }
		rs := []float64{ratio(cpuOf), ratio(serverOf), ratio(bytesOf), ratio(heapOf),
			perMinute(r.k, o.leases, "LeaseKeepAlive") / perMinute(r.a, o.leases, "LeaseKeepAlive")}
		ok := r.k.episodes == 0
		row := []string{r.ttl.String()}
		for _, x := range rs {
			row = append(row, fmt.Sprintf("%.2f×", x))
			ok = ok && x <= 1
		}
		if ok {
			met = append(met, r.ttl.String())
		} else {
			missed = append(missed, r.ttl.String())
		}
		ratios = append(ratios, append(row, verdict(ok)))
		notes = append(notes, fmt.Sprintf("TTL %s: %s", r.ttl, requests(o.leases, []named{{"leasekeeper", r.k}, {"Lease.KeepAlive", r.a}})))
	}
	var ttls []string
	for _, r := range rows {
		ttls = append(ttls, r.ttl.String())
	}
	var verdicts []string
	if len(met) > 0 {
		verdicts = append(verdicts, fmt.Sprintf("at TTL %s, %s", strings.Join(met, ", "), verdict(true)))
	}
	if len(missed) > 0 {
		verdicts = append(verdicts, fmt.Sprintf("at TTL %s, %s", strings.Join(missed, ", "), verdict(false)))
	}
	return fmt.Sprintf("### %d leases on one client, at TTL %s\n\n", o.leases, strings.Join(ttls, ", ")) +
		"Each client's leases start spread evenly over one period of `KeepAlive` (TTL/3 and 500 ms), so that " +
		"neither holder's renewals bunch at the window's ends. Keepalives and streams opened are counted on the client " +
		"(a hedge, or the one retry of a keepalive a broken stream failed, opens a new stream); episodes are keepers " +
		"leaving Healthy, or `KeepAlive` channels closing, with nothing wrong. The last column is each holder's window, in all.\n\n" +
		table([]string{"TTL", "client", "client CPU (s)", "etcd CPU (s)", "bytes (KiB)", "heap (MiB)",
			"keepalives a lease a minute", "streams opened a lease a minute", "episodes", "window"}, abs) +
		"\nThe keepers' figures as a ratio to `KeepAlive`'s. Target, at every TTL: each ratio no more than 1.00×, " +
		"and no episode.\n\n" +
		table([]string{"TTL", "client CPU", "etcd CPU", "bytes", "heap", "keepalives", "target"}, ratios) +
		fmt.Sprintf("\nAll targets: %s.\n\n", strings.Join(verdicts, "; ")) + shortTTLNote(o, rows) +
		strings.Join(notes, "") + heapNote(rows)
}

// perMinute is how many requests of method u's clients sent a lease a
// minute of its window, for leases leases.
func perMinute(u usage, leases int, method string) float64 {
	return float64(callCount(u.calls, method)) / float64(leases) / u.window.Minutes()
}

// shortTTLNote says why the keepers renew more often than KeepAlive at a
// TTL of 3s, where they do, from KeepAlive's interval in the run.
func shortTTLNote(o options, rows []ttlCost) string {
	for _, r := range rows {
		if r.ttl != 3*time.Second {
			continue
		}
		cfg := keeper.DefaultConfig()
		cfg.TTL = r.ttl
		third := cfg
		third.DegradeThreshold = r.ttl / 3
		every := time.Duration(float64(time.Minute) / perMinute(r.a, o.leases, "LeaseKeepAlive"))
		return fmt.Sprintf("At a TTL of 3 s `KeepAlive` renewed every %s in this run (a minute over its keepalives a lease a minute), "+
			"about half the TTL. The default degrade threshold is half the TTL (the design's contract): a Healthy keeper must have "+
			"each renewal answered while more than 1.5 s is left before its local deadline, which lies the margin short of the TTL "+
			"after the renewal before. So its renewals can be no further apart than half the TTL less the margin and a reply's room, "+
			"and a keeper renewing as seldom as `KeepAlive` would report Degraded before every renewal with nothing wrong. "+
			"The keepers renew every %s there (`Config.RenewalInterval`), so at this TTL only they send more keepalives. "+
			"With `DegradeThreshold` set to a third of the TTL, `Config.RenewalInterval` is %s at this TTL.\n\n",
			every.Round(time.Millisecond), cfg.RenewalInterval().Round(time.Millisecond), third.RenewalInterval().Round(time.Millisecond))
	}
	return ""
}

// callCount is how many requests of method counts (since's form) holds.
func callCount(counts, method string) int64 {
	for _, f := range strings.Fields(counts) {
		if m, n, ok := strings.Cut(f, "="); ok && m == method {
			var v int64
			_, _ = fmt.Sscan(n, &v)
			return v
		}
	}
	return 0
}
