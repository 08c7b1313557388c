package main

import (
	"context"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/leasekeeper/leasekeeper/internal/testbed"
	"github.com/leasekeeper/leasekeeper/keeper"
	"github.com/leasekeeper/leasekeeper/statemachine"
)

// usage is what this process uses at a moment.
type usage struct {
	cpu        time.Duration
	goroutines int
	heap       uint64
	bytes      int64
}

func measure(p *testbed.Proxy) usage {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	cpu := time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	u := usage{cpu: cpu, goroutines: runtime.NumGoroutine(), heap: ms.HeapInuse}
	if p != nil {
		u.bytes = p.Bytes()
	}
	return u
}

func scaleFigures(bin string, o options, r *report) error {
	c, stop, err := oneMember(bin)
	if err != nil {
		return err
	}
	defer stop()
	target := strings.TrimPrefix(c.Members[0].ClientURL, "http://")

	progress("renewal cost: %d keepers for %s", o.leases, o.scaleFor)
	kc, err := keeperCost(target, o)
	if err != nil {
		return err
	}
	progress("renewal cost: %d KeepAlive leases for %s", o.leases, o.scaleFor)
	ac, err := keepAliveCost(target, o)
	if err != nil {
		return err
	}
	row := func(name string, u usage) []string {
		return []string{name, fmt.Sprintf("%.2f", u.cpu.Seconds()), fmt.Sprintf("%.0f", float64(u.bytes)/1024),
			fmt.Sprint(u.goroutines), fmt.Sprintf("%.1f", float64(u.heap)/(1<<20))}
	}
	r.add(fmt.Sprintf("## 4. Cost of renewing %d leases on one client for %s\n\n", o.leases, o.scaleFor) +
		"TTL 10 s. Client CPU is this process's user+system time; bytes are counted both ways in a proxy; " +
		"goroutines and heap (in use after GC) are the increase over the idle client. The `KeepAlive` " +
		"variant drains each channel in a goroutine, as users do.\n\n" +
		table([]string{"client", "CPU (s)", "bytes (KiB)", "goroutines", "heap (MiB)"}, [][]string{
			row("leasekeeper", kc), row("Lease.KeepAlive", ac),
		}) + fmt.Sprintf("\nTarget, CPU and bytes no more than `KeepAlive`'s: CPU %s, bytes %s.\n",
		verdict(kc.cpu <= ac.cpu), verdict(kc.bytes <= ac.bytes)) + costNote(kc, ac))

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
		"Renewals cost a timer, not a goroutine. Watching the keeper's keys (the default since " +
		"registration integrity) costs the keeper's watch goroutine and the etcd client's goroutine " +
		"for that watch; `DisableWatch` turns it off.\n\n" +
		table([]string{"per keeper", "value", "target"}, [][]string{
			{"goroutines, DisableWatch", fmt.Sprintf("%.4f", g), fmt.Sprintf("no goroutine per idle keeper: %s", verdict(g < 0.01))},
			{"heap, DisableWatch", fmt.Sprintf("%.0f bytes", h), ""},
			{"goroutines, watching its key (default)", fmt.Sprintf("%.4f", gw), ""},
			{"heap, watching its key (default)", fmt.Sprintf("%.0f bytes", hw), ""},
		}))
	return nil
}

// startKeepers starts n keepers with one key each on cli, 32 at a time,
// watching their keys or not.
func startKeepers(cli *clientv3.Client, n int, ttl time.Duration, prefix string, watch bool) ([]*keeper.Keeper, error) {
	ks := make([]*keeper.Keeper, n)
	errs := make(chan error, n)
	var wg sync.WaitGroup
	sem := make(chan struct{}, 32)
	for i := range ks {
		cfg := keeper.DefaultConfig()
		cfg.TTL = ttl
		cfg.DisableWatch = !watch
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

// proxied returns a counting proxy in front of target and a client through
// it; closeAll closes both.
func proxied(target string) (*testbed.Proxy, *clientv3.Client, func(), error) {
	p, err := testbed.NewProxy(target)
	if err != nil {
		return nil, nil, nil, err
	}
	cli, err := newClient([]string{p.URL()})
	if err != nil {
		p.Close()
		return nil, nil, nil, err
	}
	return p, cli, func() {
		_ = cli.Close()
		p.Close()
	}, nil
}

func keeperCost(target string, o options) (usage, error) {
	p, cli, closeAll, err := proxied(target)
	if err != nil {
		return usage{}, err
	}
	defer closeAll()
	idle := measure(p)
	ks, err := startKeepers(cli, o.leases, 10*time.Second, "cost/keeper/", true)
	defer closeKeepers(ks)
	if err != nil {
		return usage{}, err
	}
	return window(p, idle, o.scaleFor), nil
}

func keepAliveCost(target string, o options) (usage, error) {
	p, cli, closeAll, err := proxied(target)
	if err != nil {
		return usage{}, err
	}
	defer closeAll()
	idle := measure(p)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer func() {
		cancel()
		wg.Wait()
	}()
	for i := range o.leases {
		g, err := cli.Grant(ctx, 10)
		if err != nil {
			return usage{}, err
		}
		if _, err := cli.Put(ctx, fmt.Sprintf("cost/ka/%06d", i), "v", clientv3.WithLease(g.ID)); err != nil {
			return usage{}, err
		}
		ch, err := cli.KeepAlive(ctx, g.ID)
		if err != nil {
			return usage{}, err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range ch {
			}
		}()
	}
	return window(p, idle, o.scaleFor), nil
}

// window measures the cost of d of steady state, after the setup settled:
// CPU and bytes over d, goroutines and heap above idle at its end.
func window(p *testbed.Proxy, idle usage, d time.Duration) usage {
	time.Sleep(2 * time.Second)
	start := measure(p)
	time.Sleep(d)
	end := measure(p)
	return usage{
		cpu:        end.cpu - start.cpu,
		bytes:      end.bytes - start.bytes,
		goroutines: end.goroutines - idle.goroutines,
		heap:       end.heap - min(end.heap, idle.heap),
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
	idle := measure(nil)
	ks, err := startKeepers(cli, o.keepers, time.Minute, "idle/", watch)
	defer closeKeepers(ks)
	if err != nil {
		return 0, 0, err
	}
	time.Sleep(time.Second) // let the callback dispatchers finish
	u := measure(nil)
	n := float64(o.keepers)
	return float64(u.goroutines-idle.goroutines) / n, float64(u.heap-min(u.heap, idle.heap)) / n, nil
}

// costNote says why the keeper costs more than KeepAlive, when it does.
func costNote(kc, ac usage) string {
	if kc.cpu <= ac.cpu && kc.bytes <= ac.bytes {
		return ""
	}
	return "\nWhy: each renewal opens a gRPC stream of its own, so that an attempt stuck on a silent " +
		"member is abandoned at its deadline and the next one (or the hedge) reaches another member; " +
		"`KeepAlive` sends every lease of a client on one long-lived stream, whose opening it pays once. " +
		"The fix is one renewal stream per client shared by its keepers, with per-attempt deadlines and " +
		"an overdue stream abandoned and reopened (as etcd users asked for in etcd issue 13536); it is " +
		"not built yet. Each keeper also watches its key (registration integrity): the goroutines and " +
		"part of the heap above are its watch goroutine and the etcd client's, two per keeper; " +
		"`DisableWatch` turns them off (see figure 6).\n"
}
