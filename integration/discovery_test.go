package integration

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/naming/resolver"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/leasekeeper/leasekeeper/internal/freeport"
	"github.com/leasekeeper/leasekeeper/internal/testbed"
	"github.com/leasekeeper/leasekeeper/keeper"
	"github.com/leasekeeper/leasekeeper/keeper/grpchealth"
	"github.com/leasekeeper/leasekeeper/keeper/naming"
	"github.com/leasekeeper/leasekeeper/statemachine"
)

const discoveryService = "greeter"

// callEvery is how often the discovery tests' client calls.
const callEvery = 10 * time.Millisecond

// serviceCaller calls Health/Check through etcd's resolver every callEvery
// with round_robin, and counts the calls and the failures.
type serviceCaller struct {
	conn   *grpc.ClientConn
	stop   context.CancelFunc
	wg     sync.WaitGroup
	ok     atomic.Int64
	failed atomic.Int64
	mu     sync.Mutex
	errs   []string    // the first few failures, for the log
	failAt []time.Time // when each call failed
}

// startServiceCaller dials etcd:///greeter; with healthCheck the client
// also watches each instance's health and skips those NOT_SERVING.
func startServiceCaller(t *testing.T, endpoints []string, healthCheck bool) *serviceCaller {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	require.NoError(t, err)
	t.Cleanup(func() { _ = cli.Close() })
	b, err := resolver.NewBuilder(cli)
	require.NoError(t, err)
	sc := `{"loadBalancingConfig":[{"round_robin":{}}]}`
	if healthCheck {
		sc = `{"loadBalancingConfig":[{"round_robin":{}}],"healthCheckConfig":{"serviceName":""}}`
	}
	conn, err := grpc.NewClient("etcd:///"+discoveryService, grpc.WithResolvers(b),
		grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithDefaultServiceConfig(sc))
	require.NoError(t, err)
	ctx, stop := context.WithCancel(context.Background())
	c := &serviceCaller{conn: conn, stop: stop}
	hc := healthpb.NewHealthClient(conn)
	c.wg.Go(func() {
		t := time.NewTicker(callEvery)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			cctx, cancel := context.WithTimeout(ctx, time.Second)
			_, err := hc.Check(cctx, &healthpb.HealthCheckRequest{})
			cancel()
			switch {
			case ctx.Err() != nil:
			case err != nil:
				c.failed.Add(1)
				c.mu.Lock()
				c.failAt = append(c.failAt, time.Now())
				if len(c.errs) < 5 {
					c.errs = append(c.errs, time.Now().Format("15:04:05.000")+" "+err.Error())
				}
				c.mu.Unlock()
			default:
				c.ok.Add(1)
			}
		}
	})
	t.Cleanup(c.close)
	return c
}

func (c *serviceCaller) close() {
	c.stop()
	c.wg.Wait()
	_ = c.conn.Close()
}

// waitCalls waits until n more calls succeeded.
func (c *serviceCaller) waitCalls(t *testing.T, n int64) {
	t.Helper()
	base := c.ok.Load()
	require.Eventually(t, func() bool { return c.ok.Load() >= base+n }, 10*time.Second, time.Millisecond)
}

// failedSince returns when the calls that failed after since failed.
func (c *serviceCaller) failedSince(since time.Time) []time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	var at []time.Time
	for _, t := range c.failAt {
		if !t.Before(since) {
			at = append(at, t)
		}
	}
	return at
}

func (c *serviceCaller) failures() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return strings.Join(c.errs, "\n")
}

// libInstance is a gRPC server registered by a keeper of its own, in
// process, with its health kept by grpchealth's default mapping.
type libInstance struct {
	addr  string
	gs    *grpc.Server
	k     *keeper.Keeper
	cli   *clientv3.Client
	calls atomic.Int64
}

func startLibInstance(t *testing.T, endpoints []string, addr string) *libInstance {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	require.NoError(t, err)
	in := &libInstance{addr: ln.Addr().String()}
	hs := health.NewServer()
	in.gs = grpc.NewServer(grpc.UnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		in.calls.Add(1)
		return h(ctx, req)
	}))
	healthpb.RegisterHealthServer(in.gs, hs)
	go func() { _ = in.gs.Serve(ln) }()
	in.cli, err = clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	require.NoError(t, err)
	cfg := keeper.DefaultConfig()
	cfg.TTL = 3 * time.Second
	cfg.Observers = []keeper.Observer{grpchealth.New(hs, "")}
	in.k, err = keeper.New(in.cli, cfg)
	require.NoError(t, err)
	require.NoError(t, naming.Register(context.Background(), in.k, discoveryService, in.addr, nil))
	require.NoError(t, in.k.Start(context.Background()))
	t.Cleanup(in.close)
	return in
}

func (in *libInstance) close() {
	_ = in.k.Close(context.Background())
	in.gs.Stop()
	_ = in.cli.Close()
}

// TestRollingRestartLibrary restarts three instances in turn, each with
// the library's drain, while a client calls every 10 ms through etcd's
// resolver: no call fails.
func TestRollingRestartLibrary(t *testing.T) {
	c, err := testbed.StartCluster(etcdBin, t.TempDir(), 1)
	require.NoError(t, err)
	t.Cleanup(c.Close)
	eps := c.DirectEndpoints()
	ins := make([]*libInstance, 3)
	for i := range ins {
		ins[i] = startLibInstance(t, eps, "127.0.0.1:0")
	}
	caller := startServiceCaller(t, eps, false)
	caller.waitCalls(t, 30)
	for round := range 2 {
		for i, in := range ins {
			require.NoError(t, in.k.Drain(context.Background(), 200*time.Millisecond, in.gs.GracefulStop))
			in.close()
			ins[i] = startLibInstance(t, eps, in.addr)
			caller.waitCalls(t, 20)
			require.Eventually(t, func() bool { return ins[i].calls.Load() > 0 }, 5*time.Second, time.Millisecond,
				"round %d: the restarted instance %d was never called", round, i)
		}
	}
	caller.waitCalls(t, 20)
	t.Logf("rolling restart with the library's drain, 2 rounds of 3 instances: %d calls, %d failed", caller.ok.Load()+caller.failed.Load(), caller.failed.Load())
	recordDiscovery("rolling restart, library drain (2 rounds × 3 instances)", caller.ok.Load(), caller.failed.Load(), "")
	assert.Zero(t, caller.failed.Load(), "failed calls:\n%s", caller.failures())
}

// sidecarInstance is the greeter run as the sidecar's child.
type sidecarInstance struct {
	addr string
	cmd  *exec.Cmd
	done chan struct{}
	out  chan string
}

func startSidecarInstance(t *testing.T, endpoints []string, addr string) *sidecarInstance {
	t.Helper()
	cmd := exec.Command(leasekeeperBin, "run", "--endpoints", strings.Join(endpoints, ","),
		"--service", discoveryService, "--addr", addr, "--ttl", "3s", "--drain-delay", "200ms",
		"--ready-tcp", addr, "--ready-interval", "20ms", "--", greeterBin, "-addr", addr)
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	s := &sidecarInstance{addr: addr, cmd: cmd, done: make(chan struct{}), out: make(chan string, 100)}
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			select {
			case s.out <- sc.Text():
			default:
			}
		}
		_ = cmd.Wait()
		close(s.done)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-s.done
	})
	deadline := time.After(20 * time.Second)
	for {
		select {
		case l := <-s.out:
			if strings.Contains(l, "registered") {
				return s
			}
		case <-s.done:
			t.Fatalf("sidecar for %s exited before it registered", addr)
		case <-deadline:
			t.Fatalf("sidecar for %s did not register within 20s", addr)
		}
	}
}

// TestRollingRestartSidecar restarts three greeters in turn through the
// sidecar (SIGTERM to the sidecar, which drains), while a client calls
// every 10 ms through etcd's resolver: no call fails.
func TestRollingRestartSidecar(t *testing.T) {
	c, err := testbed.StartCluster(etcdBin, t.TempDir(), 1)
	require.NoError(t, err)
	t.Cleanup(c.Close)
	eps := c.DirectEndpoints()
	ports, err := freeport.Get(3)
	require.NoError(t, err)
	ins := make([]*sidecarInstance, 3)
	for i := range ins {
		ins[i] = startSidecarInstance(t, eps, fmt.Sprintf("127.0.0.1:%d", ports[i]))
	}
	caller := startServiceCaller(t, eps, false)
	caller.waitCalls(t, 30)
	for range 2 {
		for i, in := range ins {
			require.NoError(t, in.cmd.Process.Signal(syscall.SIGTERM))
			select {
			case <-in.done:
			case <-time.After(20 * time.Second):
				t.Fatalf("sidecar %d still running 20s after SIGTERM", i)
			}
			ins[i] = startSidecarInstance(t, eps, in.addr)
			caller.waitCalls(t, 20)
		}
	}
	caller.waitCalls(t, 20)
	t.Logf("rolling restart through the sidecar, 2 rounds of 3 instances: %d calls, %d failed", caller.ok.Load()+caller.failed.Load(), caller.failed.Load())
	recordDiscovery("rolling restart, sidecar drain (2 rounds × 3 instances)", caller.ok.Load(), caller.failed.Load(), "")
	assert.Zero(t, caller.failed.Load(), "failed calls:\n%s", caller.failures())
}

// keyWatch records when the naming keys were deleted and put again, as an
// observer on the member sees them.
type keyWatch struct {
	mu     sync.Mutex
	events []keyEvent
}

type keyEvent struct {
	at  time.Time
	put bool
	key string
}

func watchKeys(t *testing.T, endpoints []string) *keyWatch {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	// From the revision now, so that no event is missed however late the
	// watch is set up.
	resp, err := cli.Get(ctx, discoveryService+"/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	require.NoError(t, err)
	rev := resp.Header.Revision + 1
	w := &keyWatch{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for resp := range cli.Watch(ctx, discoveryService+"/", clientv3.WithPrefix(), clientv3.WithRev(rev)) {
			now := time.Now()
			w.mu.Lock()
			for _, ev := range resp.Events {
				w.events = append(w.events, keyEvent{at: now, put: ev.Type == clientv3.EventTypePut, key: string(ev.Kv.Key)})
			}
			w.mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		cancel()
		<-done
		_ = cli.Close()
	})
	return w
}

// absent returns when the first key was deleted and the last deleted key
// was put again: the span in which the instances were missing from etcd.
func (w *keyWatch) absent() (from, to time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, ev := range w.events {
		switch {
		case !ev.put && from.IsZero():
			from = ev.at
		case ev.put && !from.IsZero():
			to = ev.at
		}
	}
	return from, to
}

// window returns the longest time a key was absent: from a delete to the
// next put of the same key.
func (w *keyWatch) window() (time.Duration, int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	gone := map[string]time.Time{}
	var longest time.Duration
	deletes := 0
	for _, ev := range w.events {
		switch {
		case !ev.put:
			gone[ev.key] = ev.at
			deletes++
		case !gone[ev.key].IsZero():
			longest = max(longest, ev.at.Sub(gone[ev.key]))
			delete(gone, ev.key)
		}
	}
	return longest, deletes
}

// TestEtcdOutageFailsNoCall freezes a one-member etcd while a client with
// health checking calls three instances every 10 ms through etcd's
// resolver, each instance's health kept by grpchealth's default mapping.
// For TTL/2 no call fails; for 2×TTL calls may fail only while the keys
// are gone from the server, between its thaw and the keepers' writes.
func TestEtcdOutageFailsNoCall(t *testing.T) {
	c, err := testbed.StartCluster(etcdBin, t.TempDir(), 1)
	require.NoError(t, err)
	t.Cleanup(c.Close)
	eps := c.DirectEndpoints()
	ins := make([]*libInstance, 3)
	for i := range ins {
		ins[i] = startLibInstance(t, eps, "127.0.0.1:0")
	}
	caller := startServiceCaller(t, eps, true)
	caller.waitCalls(t, 30)
	const ttl = 3 * time.Second

	for _, tc := range []struct {
		name   string
		frozen time.Duration
	}{{"etcd frozen TTL/2", ttl / 2}, {"etcd frozen 2×TTL", 2 * ttl}} {
		w := watchKeys(t, eps)
		failedBefore, okBefore := caller.failed.Load(), caller.ok.Load()
		frozeAt := time.Now()
		c.Freeze(0)
		time.Sleep(tc.frozen)
		c.Thaw(0)
		require.Eventually(t, func() bool {
			for _, in := range ins {
				if in.k.State() != statemachine.Healthy {
					return false
				}
			}
			return true
		}, 20*time.Second, 10*time.Millisecond)
		caller.waitCalls(t, 50)
		failed := caller.failed.Load() - failedBefore
		window, deletes := w.window()
		note := fmt.Sprintf("keys deleted by the server %d×, longest absence %v", deletes, window.Round(time.Millisecond))
		t.Logf("%s: %d calls, %d failed; %s", tc.name, caller.ok.Load()-okBefore+failed, failed, note)
		if failed > 0 {
			t.Logf("first failures:\n%s", caller.failures())
		}
		recordDiscovery(tc.name+" (3 instances, health checking on)", caller.ok.Load()-okBefore, failed, note)
		if tc.frozen < ttl {
			assert.Zero(t, failed, "%s: failed calls:\n%s", tc.name, caller.failures())
			assert.Zero(t, deletes, "%s: keys deleted", tc.name)
			continue
		}
		// Calls fail only while the keys are gone: between the server
		// deleting them on its thaw and the keepers writing them back, as
		// an observer's watch sees it (give or take the watches' delivery).
		from, to := w.absent()
		const skew = 100 * time.Millisecond
		for _, at := range caller.failedSince(frozeAt) {
			assert.True(t, !from.IsZero() && at.After(from.Add(-skew)) && at.Before(to.Add(skew)),
				"%s: a call failed at %s, outside the keys' absence %s to %s", tc.name,
				at.Format("15:04:05.000"), from.Format("15:04:05.000"), to.Format("15:04:05.000"))
		}
		assert.Less(t, window, time.Second, "%s: keys absent for %v", tc.name, window)
	}
}

var (
	discoveryMu      sync.Mutex
	discoveryResults []string
)

// recordDiscovery adds a row to the discovery table printed after the
// tests.
func recordDiscovery(scenario string, ok, failed int64, note string) {
	discoveryMu.Lock()
	defer discoveryMu.Unlock()
	discoveryResults = append(discoveryResults, fmt.Sprintf("| %s | %d | %d | %s |", scenario, ok+failed, failed, note))
}
