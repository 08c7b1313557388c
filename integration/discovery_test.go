package integration

import (
	"bufio"
	"context"
	"fmt"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/leasekeeper/leasekeeper/internal/test/freeport"
	"github.com/leasekeeper/leasekeeper/internal/test/testbed"
	"github.com/leasekeeper/leasekeeper/statemachine"
)

const discoveryService = "greeter"

// callEvery is how often the discovery tests' client calls.
const callEvery = 10 * time.Millisecond

func startServiceCaller(t *testing.T, endpoints []string, healthCheck bool) *testbed.Caller {
	t.Helper()
	c, err := testbed.StartCaller(endpoints, discoveryService, callEvery, healthCheck)
	require.NoError(t, err)
	t.Cleanup(c.Close)
	return c
}

// waitCalls waits until n more calls of c succeeded.
func waitCalls(t *testing.T, c *testbed.Caller, n int64) {
	t.Helper()
	base := c.OK.Load()
	require.Eventually(t, func() bool { return c.OK.Load() >= base+n }, 10*time.Second, time.Millisecond)
}

func startLibInstance(t *testing.T, endpoints []string, addr string) *testbed.Instance {
	t.Helper()
	in, err := testbed.StartInstance(endpoints, addr, discoveryService, 3*time.Second)
	require.NoError(t, err)
	t.Cleanup(in.Close)
	return in
}

// startLibService starts a one-member etcd, three instances registered by
// the library and a caller already served by them.
func startLibService(t *testing.T, healthCheck bool) (*testbed.Cluster, []*testbed.Instance, *testbed.Caller) {
	t.Helper()
	c, err := testbed.StartCluster(etcdBin, t.TempDir(), 1)
	require.NoError(t, err)
	t.Cleanup(c.Close)
	eps := c.DirectEndpoints()
	ins := make([]*testbed.Instance, 3)
	for i := range ins {
		ins[i] = startLibInstance(t, eps, "127.0.0.1:0")
	}
	caller := startServiceCaller(t, eps, healthCheck)
	waitCalls(t, caller, 30)
	return c, ins, caller
}

// TestRollingRestartLibrary restarts three instances in turn, each with
// the library's drain, while a client calls every 10 ms through etcd's
// resolver: no call fails.
func TestRollingRestartLibrary(t *testing.T) {
	c, ins, caller := startLibService(t, false)
	eps := c.DirectEndpoints()
	for round := range 2 {
		for i, in := range ins {
			require.NoError(t, in.Keeper.Drain(context.Background(), 200*time.Millisecond, in.Server.GracefulStop))
			in.Close()
			ins[i] = startLibInstance(t, eps, in.Addr)
			waitCalls(t, caller, 20)
			require.Eventually(t, func() bool { return ins[i].Calls.Load() > 0 }, 5*time.Second, time.Millisecond,
				"round %d: the restarted instance %d was never called", round, i)
		}
	}
	waitCalls(t, caller, 20)
	t.Logf("rolling restart with the library's drain, 2 rounds of 3 instances: %d calls, %d failed", caller.OK.Load()+caller.Failed.Load(), caller.Failed.Load())
	recordDiscovery("rolling restart, library drain (2 rounds × 3 instances)", caller.OK.Load(), caller.Failed.Load(), "")
	assert.Zero(t, caller.Failed.Load(), "failed calls:\n%s", caller.Failures())
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
	waitCalls(t, caller, 30)
	for range 2 {
		for i, in := range ins {
			require.NoError(t, in.cmd.Process.Signal(syscall.SIGTERM))
			select {
			case <-in.done:
			case <-time.After(20 * time.Second):
				t.Fatalf("sidecar %d still running 20s after SIGTERM", i)
			}
			ins[i] = startSidecarInstance(t, eps, in.addr)
			waitCalls(t, caller, 20)
		}
	}
	waitCalls(t, caller, 20)
	t.Logf("rolling restart through the sidecar, 2 rounds of 3 instances: %d calls, %d failed", caller.OK.Load()+caller.Failed.Load(), caller.Failed.Load())
	recordDiscovery("rolling restart, sidecar drain (2 rounds × 3 instances)", caller.OK.Load(), caller.Failed.Load(), "")
	assert.Zero(t, caller.Failed.Load(), "failed calls:\n%s", caller.Failures())
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
	c, ins, caller := startLibService(t, true)
	eps := c.DirectEndpoints()
	const ttl = 3 * time.Second

	for _, tc := range []struct {
		name   string
		frozen time.Duration
	}{{"etcd frozen TTL/2", ttl / 2}, {"etcd frozen 2×TTL", 2 * ttl}} {
		w := watchKeys(t, eps)
		failedBefore, okBefore := caller.Failed.Load(), caller.OK.Load()
		frozeAt := time.Now()
		c.Freeze(0)
		time.Sleep(tc.frozen)
		c.Thaw(0)
		require.Eventually(t, func() bool {
			for _, in := range ins {
				if in.Keeper.State() != statemachine.Healthy {
					return false
				}
			}
			return true
		}, 20*time.Second, 10*time.Millisecond)
		waitCalls(t, caller, 50)
		failed := caller.Failed.Load() - failedBefore
		window, deletes := w.window()
		note := fmt.Sprintf("keys deleted by the server %d×, longest absence %v", deletes, window.Round(time.Millisecond))
		t.Logf("%s: %d calls, %d failed; %s", tc.name, caller.OK.Load()-okBefore+failed, failed, note)
		if failed > 0 {
			t.Logf("first failures:\n%s", caller.Failures())
		}
		recordDiscovery(tc.name+" (3 instances, health checking on)", caller.OK.Load()-okBefore, failed, note)
		if tc.frozen < ttl {
			assert.Zero(t, failed, "%s: failed calls:\n%s", tc.name, caller.Failures())
			assert.Zero(t, deletes, "%s: keys deleted", tc.name)
			continue
		}
		// Calls fail only while the keys are gone: between the server
		// deleting them on its thaw and the keepers writing them back, as
		// an observer's watch sees it (give or take the watches' delivery).
		from, to := w.absent()
		const skew = 100 * time.Millisecond
		for _, at := range caller.FailedSince(frozeAt) {
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
