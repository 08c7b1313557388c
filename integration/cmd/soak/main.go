// Command soak runs a hundred keepers against a three-member cluster of
// etcd processes under a seeded schedule of random faults, ten of them
// through an etcd gRPC proxy (`etcd grpc-proxy start`) in front of the
// members, and checks all along what the keeper promises, reading the
// members directly:
//
//   - no keeper is Healthy while the server lacks its lease or one of its
//     keys, beyond one watch round trip after a change behind its back;
//   - a keeper reports Failed before the server deletes its keys on expiry;
//   - two keepers never hold one exclusive key at once;
//   - every keeper is healthy again within a second of the cluster being
//     whole (behind the gRPC proxy, a second more than the proxy's renewal
//     period: it hears that etcd answers only from the proxy's renewal);
//   - goroutines and heap do not grow across the run;
//   - no key is missing at the end.
//
// It prints the faults injected, the checks made, the violations (there
// must be none) and the heal times, and exits 1 on any violation. The seed
// it prints replays the same schedule of faults:
//
//	go run ./integration/cmd/soak -duration 10m
//	go run ./integration/cmd/soak -duration 10m -seed 1234
package main

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"time"

	"github.com/leasekeeper/leasekeeper/internal/test/testbed"
)

type options struct {
	duration time.Duration
	seed     uint64
	keepers  int
	shared   int // keepers that share a client, in groups of four
	proxied  int // keepers, just before the shared ones, whose client goes through an etcd gRPC proxy
	ttl      time.Duration
	verbose  bool
	heapDir  string // where to write heap profiles at the first and the last quiet point
	logPath  string // where the keepers log at debug level; empty: nowhere
	keep     bool   // leave the members' data and logs behind
}

func main() {
	o := options{seed: uint64(time.Now().UnixNano() % 1_000_000)}
	flag.DurationVar(&o.duration, "duration", 10*time.Minute, "how long faults are injected")
	flag.Uint64Var(&o.seed, "seed", o.seed, "seed of the fault schedule (default: from the clock)")
	flag.IntVar(&o.keepers, "keepers", 100, "keepers, one restore key each; the first 40 also contend for 20 exclusive keys in pairs")
	flag.IntVar(&o.shared, "shared", 20, "keepers (of the last ones) that share a client, four to a client")
	flag.IntVar(&o.proxied, "proxied", 10, "keepers (just before the shared ones) whose client reaches the cluster through one etcd gRPC proxy")
	flag.DurationVar(&o.ttl, "ttl", 3*time.Second, "lease TTL of every keeper")
	flag.BoolVar(&o.verbose, "v", false, "log every fault and violation as it happens")
	flag.StringVar(&o.heapDir, "heap-profiles", "", "write heap profiles first.pprof and last.pprof to this directory")
	flag.StringVar(&o.logPath, "log", "", "write every keeper's debug log, JSON lines with its number, to this file")
	flag.BoolVar(&o.keep, "keep", false, "leave the directory with the members' data and logs behind, and print its name")
	flag.Parse()
	switch {
	case o.keepers < 40 || o.shared < 0 || o.shared > o.keepers-40 || o.shared%4 != 0 || o.proxied < 0 || o.proxied > o.keepers-40-o.shared:
		fmt.Fprintln(os.Stderr, "soak: -keepers must be at least 40, -shared a multiple of 4, and -shared plus -proxied no more than keepers-40")
		os.Exit(2)
	case o.duration <= 0 || o.ttl < 2*time.Second:
		fmt.Fprintln(os.Stderr, "soak: -duration must be positive and -ttl at least 2s")
		os.Exit(2)
	}
	ok, err := run(o)
	if err != nil {
		fmt.Fprintln(os.Stderr, "soak:", err)
		os.Exit(1)
	}
	if !ok {
		os.Exit(1)
	}
}

func run(o options) (bool, error) {
	root, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}").Output()
	if err != nil {
		return false, fmt.Errorf("go list -m: %w", err)
	}
	bin, err := testbed.BuildEtcd(strings.TrimSpace(string(root)))
	if err != nil {
		return false, err
	}
	dir, err := os.MkdirTemp("", "leasekeeper-soak")
	if err != nil {
		return false, err
	}
	if o.keep {
		fmt.Println("soak: members' data and logs in", dir)
	} else {
		defer func() { _ = os.RemoveAll(dir) }()
	}
	fmt.Printf("soak: seed %d, %v of faults, %d keepers (%d behind an etcd gRPC proxy), TTL %v\n", o.seed, o.duration, o.keepers, o.proxied, o.ttl)
	s, err := setUp(o, bin, dir)
	if err != nil {
		return false, err
	}
	defer s.tearDown()
	if err := s.run(); err != nil {
		return false, err
	}
	s.report(os.Stdout)
	return s.violations() == 0, nil
}

// logf writes a line to stderr with the time since start, when verbose.
func (s *soak) logf(format string, args ...any) {
	if s.o.verbose {
		fmt.Fprintf(os.Stderr, "%8.3fs  %s\n", time.Since(s.began).Seconds(), fmt.Sprintf(format, args...))
	}
}
