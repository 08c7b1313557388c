// Command compare measures the keeper side by side with etcd's own client
// (concurrency.Session, Lease.KeepAlive, and the loop users write on top of
// them) against the same real etcd under the same faults, and writes
// BENCHMARKS.md. Run it from the repository root:
//
//	go run ./integration/cmd/compare -out BENCHMARKS.md
package main

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/leasekeeper/leasekeeper/internal/test/testbed"
)

type options struct {
	out         string
	runs        int
	ttl         time.Duration
	scaleFor    time.Duration
	costFor     time.Duration
	ttls        []time.Duration
	leases      int
	fleet       int
	proxyFor    time.Duration
	skipProxy   bool
	keys        int
	keepers     int
	timers      int
	soakFor     time.Duration
	soakKeepers int
	skipScale   bool
	onlyTTLs    bool
	onlyProxy   bool
	skipTimers  bool
	skipSoak    bool

	// A cost child (costIn): which holder, on which member, how many.
	cost        string
	costTarget  string
	costPid     int
	costClients int
	costLeases  int
	costEtcd    string // the etcd binary: the child runs a gRPC proxy of it in front of the member
	costTTL     time.Duration
	costSpread  bool
}

func main() {
	o := options{ttls: []time.Duration{3 * time.Second, 5 * time.Second, 10 * time.Second, 30 * time.Second}}
	flag.StringVar(&o.out, "out", "BENCHMARKS.md", "where to write the report")
	flag.IntVar(&o.runs, "runs", 7, "fault runs for the time-to-signal, margin and recovery figures")
	flag.DurationVar(&o.ttl, "ttl", 3*time.Second, "lease TTL of the fault runs")
	flag.DurationVar(&o.scaleFor, "scale-for", 2*time.Minute, "how long each holder of the fleet (figure 4) is measured")
	flag.IntVar(&o.leases, "leases", 2000, "leases on one client in the renewal-cost figure")
	flag.DurationVar(&o.costFor, "cost-for", 90*time.Second, "how long each holder of the leases on one client is measured, at each TTL")
	flag.Func("ttls", "the TTLs of the leases on one client, comma-separated (default 3s,5s,10s,30s)", func(v string) error {
		o.ttls = nil
		for _, f := range strings.Split(v, ",") {
			d, err := time.ParseDuration(strings.TrimSpace(f))
			if err != nil {
				return err
			}
			if d < time.Second || d%time.Second != 0 {
				return fmt.Errorf("ttl %s: want whole seconds", d)
			}
			o.ttls = append(o.ttls, d)
		}
		return nil
	})
	flag.IntVar(&o.fleet, "fleet", 200, "clients with one lease each in the renewal-cost figure")
	flag.DurationVar(&o.proxyFor, "proxy-for", 5*time.Minute, "how long the fleet behind an etcd gRPC proxy is measured")
	flag.BoolVar(&o.skipProxy, "skip-proxy", false, "skip the fleet behind an etcd gRPC proxy")
	flag.IntVar(&o.keys, "keys", 10000, "keys in the re-write figure")
	flag.IntVar(&o.keepers, "keepers", 10000, "keepers in the idle-footprint figure")
	flag.IntVar(&o.timers, "timers", 1000000, "pending timers in the scheduling figure")
	flag.BoolVar(&o.skipScale, "skip-scale", false, "skip figures 4 to 6")
	flag.BoolVar(&o.onlyTTLs, "only-ttls", false, "of figures 4 to 6, measure only the leases on one client at each TTL")
	flag.BoolVar(&o.onlyProxy, "only-proxy", false, "of figures 4 to 6, measure only the fleet behind an etcd gRPC proxy")
	flag.BoolVar(&o.skipTimers, "skip-timers", false, "skip figure 7")
	flag.DurationVar(&o.soakFor, "soak-for", 5*time.Minute, "how long the many keepers of figure 8 run")
	flag.IntVar(&o.soakKeepers, "soak-keepers", 10000, "keepers in figure 8")
	flag.BoolVar(&o.skipSoak, "skip-soak", false, "skip figure 8")
	flag.StringVar(&o.cost, "cost", "", "internal: measure the cost of this holder (keepers, keepers-watching, keepalives) and print it")
	flag.StringVar(&o.costTarget, "cost-target", "", "internal: the member's client address, for -cost")
	flag.IntVar(&o.costPid, "cost-pid", 0, "internal: the member's process ID, for -cost")
	flag.IntVar(&o.costClients, "cost-clients", 1, "internal: clients, for -cost")
	flag.IntVar(&o.costLeases, "cost-leases", 1, "internal: leases per client, for -cost")
	flag.DurationVar(&o.costTTL, "cost-ttl", 10*time.Second, "internal: the leases' TTL, for -cost")
	flag.BoolVar(&o.costSpread, "cost-spread", false, "internal: start each client's leases spread over a KeepAlive period, for -cost")
	flag.StringVar(&o.costEtcd, "cost-etcd", "", "internal: the etcd binary, to run a gRPC proxy of it in front of the member, for -cost")
	flag.Parse()
	if o.cost != "" {
		if err := costChild(o); err != nil {
			fmt.Fprintln(os.Stderr, "compare -cost:", err)
			os.Exit(1)
		}
		return
	}
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "compare:", err)
		os.Exit(1)
	}
}

func run(o options) error {
	root, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}").Output()
	if err != nil {
		return fmt.Errorf("go list -m: %w", err)
	}
	dir := strings.TrimSpace(string(root))
	bin, err := testbed.BuildEtcd(dir)
	if err != nil {
		return err
	}
	r := &report{started: time.Now(), o: o}
	if err := faultFigures(bin, o, r); err != nil {
		return err
	}
	if !o.skipScale {
		if err := scaleFigures(bin, o, r); err != nil {
			return err
		}
	}
	if !o.skipTimers {
		// The scheduling figure measures the keeper's own timers, which
		// only the keeper's packages may import.
		cmd := exec.Command("go", "run", "./keeper/internal/alarm/schedule", "-timers", strconv.Itoa(o.timers))
		cmd.Dir, cmd.Stderr = dir, os.Stderr
		out, err := cmd.Output()
		if err != nil {
			return fmt.Errorf("scheduling figure: %w", err)
		}
		r.add(scheduleSection(o.timers, string(out)))
	}
	if !o.skipSoak {
		if err := soakFigure(bin, o, r); err != nil {
			return err
		}
	}
	f, err := os.Create(o.out)
	if err != nil {
		return err
	}
	defer func() { _ = f.Close() }()
	r.write(f, fmt.Sprintf("%d cores, %s, %s/%s", runtime.NumCPU(), runtime.Version(), runtime.GOOS, runtime.GOARCH))
	fmt.Println("wrote", o.out)
	return nil
}

// progress reports on stderr what is being measured.
func progress(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "%s  %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
}

// scheduleSection is figure 7, from the rows the schedule command printed:
// a line each, its fields tab-separated.
func scheduleSection(n int, out string) string {
	var rows [][]string
	for line := range strings.Lines(out) {
		rows = append(rows, strings.Split(strings.TrimSuffix(line, "\n"), "\t"))
	}
	return fmt.Sprintf("## 7. Scheduling %d pending renewals\n\n", n) +
		"Each renewal is due at a random time one to eleven seconds ahead. Lateness is fire time minus due time; " +
		"memory is the heap in use per pending renewal, with what each design keeps to note its lateness.\n\n" +
		table([]string{"design", "lateness p50", "lateness p99", "bytes per renewal"}, rows)
}
