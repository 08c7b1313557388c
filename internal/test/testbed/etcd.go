package testbed

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"

	"github.com/leasekeeper/leasekeeper/internal/test/freeport"
)

// EtcdEnv names the environment variable that picks the etcd the tests
// run: unset, the version go.mod names; "3.5", the v3.5 line, built from
// the module of its own in integration/etcd35.
const EtcdEnv = "LEASEKEEPER_ETCD"

// BuildEtcd builds etcd's server from go.etcd.io/etcd/server/v3/etcdmain at
// the version go.mod names (or the one EtcdEnv picks) and returns the
// binary's path. The binary is cached in the user cache directory under a
// name derived from the go.sum it is built with, so later runs reuse it;
// Go's build cache makes a rebuild cheap as well.
func BuildEtcd(moduleRoot string) (string, error) {
	dir, pkg := moduleRoot, "./integration/cmd/etcd"
	switch v := os.Getenv(EtcdEnv); v {
	case "":
	case "3.5":
		dir, pkg = filepath.Join(moduleRoot, "integration", "etcd35"), "."
	default:
		return "", fmt.Errorf("%s=%q: want unset or 3.5", EtcdEnv, v)
	}
	sum, err := os.ReadFile(filepath.Join(dir, "go.sum"))
	if err != nil {
		return "", err
	}
	h := sha256.Sum256(sum)
	cache, err := os.UserCacheDir()
	if err != nil {
		cache = os.TempDir()
	}
	bin := filepath.Join(cache, "leasekeeper", "etcd-"+hex.EncodeToString(h[:8]))
	if _, err := os.Stat(bin); err == nil {
		return bin, nil
	}
	if err := os.MkdirAll(filepath.Dir(bin), 0o755); err != nil {
		return "", err
	}
	tmp := fmt.Sprintf("%s.%d", bin, os.Getpid())
	cmd := exec.Command("go", "build", "-o", tmp, pkg)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build etcd: %w\n%s", err, out)
	}
	return bin, os.Rename(tmp, bin)
}

// EtcdVersion returns the version the etcd binary bin reports.
func EtcdVersion(bin string) (string, error) {
	out, err := exec.Command(bin, "--version").Output()
	if err != nil {
		return "", err
	}
	for line := range strings.SplitSeq(string(out), "\n") {
		if v, ok := strings.CutPrefix(line, "etcd Version: "); ok {
			return strings.TrimSpace(v), nil
		}
	}
	return "", fmt.Errorf("no version in %q", out)
}

// ShortReconnect makes a client retry a lost connection within a second
// (gRPC's default backoff grows to two minutes between tries). The fault
// suite runs one keeper on a client with it beside one built with default
// options, to show the keeper needs neither.
var ShortReconnect = grpc.WithConnectParams(grpc.ConnectParams{
	Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: time.Second},
	MinConnectTimeout: time.Second,
})

// Member is one etcd process with a fault proxy in front of its client URL.
type Member struct {
	Name      string
	ClientURL string // direct
	PeerURL   string
	Proxy     *Proxy

	dataDir string
	args    []string
	cmd     *exec.Cmd
	exited  chan struct{}
}

// Cluster is a set of etcd processes on loopback.
type Cluster struct {
	Members []*Member
	bin     string
}

// StartCluster starts n members with data under dir and waits until they
// serve. Its ports were free a moment before the members bind them; a
// member that exits before it serves (another process took its port, say)
// makes it start the cluster again on fresh ports and fresh data, up to
// three times.
func StartCluster(bin, dir string, n int) (*Cluster, error) {
	return startTries(func(try int) (*Cluster, error) { return startCluster(bin, dir, n, try) })
}

// errExited marks a process that exited before it served.
var errExited = errors.New("exited before it served")

// startTries calls start, try 0 first, up to three times while it fails
// with errExited: its process exited before it served (another process
// took its port, say), and start picks fresh ports each time.
func startTries[T any](start func(try int) (T, error)) (T, error) {
	v, err := start(0)
	for try := 1; try < 3 && errors.Is(err, errExited); try++ {
		v, err = start(try)
	}
	return v, err
}

func startCluster(bin, dir string, n, try int) (*Cluster, error) {
	ports, err := freeport.Get(2 * n)
	if err != nil {
		return nil, err
	}
	c := &Cluster{bin: bin}
	var initial []string
	for i := range n {
		m := &Member{
			Name:      fmt.Sprintf("m%d", i),
			ClientURL: fmt.Sprintf("http://127.0.0.1:%d", ports[2*i]),
			PeerURL:   fmt.Sprintf("http://127.0.0.1:%d", ports[2*i+1]),
		}
		m.dataDir = filepath.Join(dir, m.Name)
		if try > 0 {
			m.dataDir = filepath.Join(dir, fmt.Sprintf("%s.%d", m.Name, try))
		}
		initial = append(initial, m.Name+"="+m.PeerURL)
		c.Members = append(c.Members, m)
	}
	for _, m := range c.Members {
		m.args = []string{
			"--name", m.Name, "--data-dir", m.dataDir,
			"--listen-client-urls", m.ClientURL, "--advertise-client-urls", m.ClientURL,
			"--listen-peer-urls", m.PeerURL, "--initial-advertise-peer-urls", m.PeerURL,
			"--initial-cluster", strings.Join(initial, ","), "--initial-cluster-state", "new",
			"--initial-cluster-token", filepath.Base(dir), "--log-level", logLevel(),
		}
		if m.Proxy, err = NewProxy(strings.TrimPrefix(m.ClientURL, "http://")); err != nil {
			c.Close()
			return nil, err
		}
		if err := c.start(m); err != nil {
			c.Close()
			return nil, err
		}
	}
	if err := c.waitStarted(time.Now().Add(30 * time.Second)); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// waitStarted waits until each member serves, or deadline passes.
func (c *Cluster) waitStarted(deadline time.Time) error {
	for _, m := range c.Members {
		if err := waitUp(m.ClientURL, m.exited, deadline, m.dataDir+".log"); err != nil {
			return fmt.Errorf("%s: %w", m.Name, err)
		}
	}
	return nil
}

// waitUp waits until a linearizable read on url, asked alone, succeeds.
// It gives up early, with errExited, when exited closes first (the
// process behind url exited), and names the end of the process's log
// when it fails.
func waitUp(url string, exited <-chan struct{}, deadline time.Time, log string) error {
	cli, err := newClient([]string{url})
	if err != nil {
		return err
	}
	defer func() { _ = cli.Close() }()
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err = cli.Get(ctx, "health")
		cancel()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			err = fmt.Errorf("%s not serving by the deadline: %w", url, err)
			break
		}
		select {
		case <-exited:
			err = fmt.Errorf("%s not serving: %w", url, errExited)
		case <-time.After(100 * time.Millisecond):
			continue
		}
		break
	}
	if log != "" {
		err = fmt.Errorf("%w; its log ends: %s", err, logTail(log))
	}
	return err
}

// logTail returns the end of the log file at path, for an error.
func logTail(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return strings.TrimSpace(string(b))
}

func (c *Cluster) start(m *Member) error {
	cmd := exec.Command(c.bin, m.args...)
	// etcd logs errors it recovers from (a restarted member's storage
	// version, say); keep them beside the data, out of the test output.
	log, err := os.OpenFile(m.dataDir+".log", os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	defer func() { _ = log.Close() }()
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", m.Name, err)
	}
	m.cmd, m.exited = cmd, make(chan struct{})
	go reapProcess(m.cmd, m.exited)
	return nil
}

// Endpoints returns the proxies' URLs, for the clients under test.
func (c *Cluster) Endpoints() []string {
	var eps []string
	for _, m := range c.Members {
		eps = append(eps, m.Proxy.URL())
	}
	return eps
}

// DirectEndpoints returns the members' own client URLs, for the observer.
func (c *Cluster) DirectEndpoints() []string {
	var eps []string
	for _, m := range c.Members {
		eps = append(eps, m.ClientURL)
	}
	return eps
}

// Kill kills member i with SIGKILL and waits for it to exit.
func (c *Cluster) Kill(i int) {
	m := c.Members[i]
	if m.cmd == nil {
		return
	}
	_ = m.cmd.Process.Signal(syscall.SIGCONT) // a frozen process must run to die
	_ = m.cmd.Process.Kill()
	<-m.exited
	m.cmd = nil
}

// Restart starts a killed member again on its data.
func (c *Cluster) Restart(i int) error {
	if c.Members[i].cmd != nil {
		return errors.New("restart of a running member")
	}
	return c.start(c.Members[i])
}

// Freeze stops member i with SIGSTOP; Thaw resumes it.
func (c *Cluster) Freeze(i int) { _ = c.Members[i].cmd.Process.Signal(syscall.SIGSTOP) }

// Thaw resumes a frozen member with SIGCONT.
func (c *Cluster) Thaw(i int) { _ = c.Members[i].cmd.Process.Signal(syscall.SIGCONT) }

// Leader returns the index of the member that is leader, or an error.
func (c *Cluster) Leader(ctx context.Context) (int, error) {
	cli, err := c.Client(c.DirectEndpoints())
	if err != nil {
		return -1, err
	}
	defer func() { _ = cli.Close() }()
	for i, m := range c.Members {
		sctx, cancel := context.WithTimeout(ctx, time.Second)
		st, err := cli.Status(sctx, m.ClientURL)
		cancel()
		if err == nil && st.Leader == st.Header.MemberId {
			return i, nil
		}
	}
	return -1, errors.New("no leader")
}

// WaitServing waits until a linearizable read succeeds on each endpoint,
// asked alone, or deadline passes.
func WaitServing(endpoints []string, deadline time.Time) error {
	for _, ep := range endpoints {
		if err := waitUp(ep, nil, deadline, ""); err != nil {
			return err
		}
	}
	return nil
}

// Client returns a client of the given endpoints that logs nothing.
func (c *Cluster) Client(endpoints []string) (*clientv3.Client, error) {
	return newClient(endpoints)
}

func newClient(endpoints []string) (*clientv3.Client, error) {
	return clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
}

// Close kills every member and closes the proxies.
func (c *Cluster) Close() {
	for i, m := range c.Members {
		c.Kill(i)
		if m.Proxy != nil {
			m.Proxy.Close()
		}
	}
}

// CPU returns the user and system time the member's process has used,
// read from /proc (Linux), or an error where it cannot be read.
func (m *Member) CPU() (time.Duration, error) {
	pid := m.Pid()
	if pid == 0 {
		return 0, errors.New("testbed: member not running")
	}
	return ProcessCPU(pid)
}

// Pid returns the member's process ID, or 0 while it is not running.
func (m *Member) Pid() int {
	if m.cmd == nil || m.cmd.Process == nil {
		return 0
	}
	return m.cmd.Process.Pid
}

// ProcessCPU returns the user and system time process pid has used, read
// from /proc (Linux), or an error where it cannot be read.
func ProcessCPU(pid int) (time.Duration, error) {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name, in parentheses, may hold spaces: count fields after it.
	s := string(stat)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 13 {
		return 0, fmt.Errorf("testbed: short /proc stat: %q", s)
	}
	var utime, stime int64
	if _, err := fmt.Sscan(f[11], &utime); err != nil {
		return 0, err
	}
	if _, err := fmt.Sscan(f[12], &stime); err != nil {
		return 0, err
	}
	// Clock ticks: 100 per second on every Linux this runs on (USER_HZ).
	return time.Duration(utime+stime) * 10 * time.Millisecond, nil
}

// logLevel is the members' log level: error, unless
// LEASEKEEPER_ETCD_LOG_LEVEL says otherwise (info shows elections and
// lease revocations, for a reader who asks what the cluster did).
func logLevel() string {
	if l := os.Getenv("LEASEKEEPER_ETCD_LOG_LEVEL"); l != "" {
		return l
	}
	return "error"
}
