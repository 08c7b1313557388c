package integration

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/leasekeeper/leasekeeper/internal/test/testbed"
)

var (
	// etcdBin is the etcd binary, leasekeeperBin the command under test,
	// greeterBin the gRPC service the discovery tests run behind it.
	etcdBin, leasekeeperBin, greeterBin string
	// moduleRoot is the repository root, where docker-compose.yml is.
	moduleRoot string
	// etcdVersion is the version etcdBin reports.
	etcdVersion string
)

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}").Output()
	if err != nil {
		fmt.Fprintln(os.Stderr, "go list -m:", err)
		return 1
	}
	root := strings.TrimSpace(string(out))
	moduleRoot = root
	if etcdBin, err = testbed.BuildEtcd(root); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if etcdVersion, err = testbed.EtcdVersion(etcdBin); err != nil {
		fmt.Fprintln(os.Stderr, "etcd --version:", err)
		return 1
	}
	dir, err := os.MkdirTemp("", "leasekeeper-it")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer func() { _ = os.RemoveAll(dir) }()
	leasekeeperBin = filepath.Join(dir, "leasekeeper")
	greeterBin = filepath.Join(dir, "greeter")
	for bin, pkg := range map[string]string{leasekeeperBin: "./cmd/leasekeeper", greeterBin: "./integration/cmd/greeter"} {
		build := exec.Command("go", "build", "-o", bin, pkg)
		build.Dir = root
		if out, err := build.CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "build %s: %v\n%s", pkg, err, out)
			return 1
		}
	}
	code := m.Run()
	printResults(os.Stdout)
	if path := os.Getenv("LEASEKEEPER_RESULTS"); path != "" {
		f, err := os.Create(path)
		if err == nil {
			printResults(f)
			_ = f.Close()
		}
	}
	return code
}
