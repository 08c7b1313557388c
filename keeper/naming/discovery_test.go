package naming_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/leasekeeper/leasekeeper/internal/embedetcd"
	"github.com/leasekeeper/leasekeeper/internal/test/testbed"
	"github.com/leasekeeper/leasekeeper/keeper/naming"
	"github.com/leasekeeper/leasekeeper/statemachine"
)

const service = "my-service"

func startInstance(t *testing.T, endpoint string) *testbed.Instance {
	t.Helper()
	in, err := testbed.StartInstance([]string{endpoint}, "127.0.0.1:0", service, 3*time.Second)
	require.NoError(t, err)
	t.Cleanup(in.Close)
	return in
}

func startCaller(t *testing.T, endpoint string) *testbed.Caller {
	t.Helper()
	c, err := testbed.StartCaller([]string{endpoint}, service, 5*time.Millisecond, false)
	require.NoError(t, err)
	t.Cleanup(c.Close)
	return c
}

// waitCalled waits until every instance answered a call since now.
func waitCalled(t *testing.T, within time.Duration, ins ...*testbed.Instance) time.Duration {
	t.Helper()
	began := time.Now()
	base := make([]int64, len(ins))
	for i, in := range ins {
		base[i] = in.Calls.Load()
	}
	require.Eventually(t, func() bool {
		for i, in := range ins {
			if in.Calls.Load() == base[i] {
				return false
			}
		}
		return true
	}, within, time.Millisecond, "not every instance was called within %v", within)
	return time.Since(began)
}

// TestDiscoveryThroughEtcdResolver runs real gRPC servers registered by
// keepers and a real gRPC client dialing etcd:///my-service through etcd's
// own resolver with round_robin: the instances appear within a watch round
// trip, one disappears on its drain with no call failed, all stay called
// while etcd is away, and one deleted behind its keeper's back comes back.
func TestDiscoveryThroughEtcdResolver(t *testing.T) {
	srv, err := embedetcd.Start(t.TempDir(), 30*time.Second)
	require.NoError(t, err)
	t.Cleanup(srv.Stop)
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{srv.Endpoint}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	require.NoError(t, err)
	t.Cleanup(func() { _ = cli.Close() })

	a := startInstance(t, srv.Endpoint)
	c := startCaller(t, srv.Endpoint)
	waitCalled(t, 5*time.Second, a)
	registered := time.Now()
	b := startInstance(t, srv.Endpoint)
	d := startInstance(t, srv.Endpoint)
	took := waitCalled(t, time.Second, b, d)
	t.Logf("two new instances called %v after Start returned (%v after the first)", took, time.Since(registered))

	// A drain: deregistered at once, served for a while, then stopped.
	failedBefore := c.Failed.Load()
	require.NoError(t, d.Keeper.Drain(context.Background(), 300*time.Millisecond, d.Server.GracefulStop))
	after := d.Calls.Load()
	waitCalled(t, time.Second, a, b)
	assert.Equal(t, after, d.Calls.Load(), "the drained instance was called after it stopped")
	assert.Equal(t, failedBefore, c.Failed.Load(), "calls failed during the drain")

	// etcd away for 2×TTL: the resolver keeps what it has, the instances
	// keep serving (health follows the service by default).
	srv.Stop()
	require.Eventually(t, func() bool { return a.Keeper.State() == statemachine.Failed }, 10*time.Second, 10*time.Millisecond)
	waitCalled(t, time.Second, a, b)
	assert.Equal(t, failedBefore, c.Failed.Load(), "calls failed while etcd was away")
	require.NoError(t, srv.Restart(30*time.Second))
	require.Eventually(t, func() bool {
		return a.Keeper.State() == statemachine.Healthy && b.Keeper.State() == statemachine.Healthy
	}, 10*time.Second, 10*time.Millisecond)

	// A key deleted behind a keeper's back is restored, and a new instance
	// is found: the resolver's watch came back with etcd.
	_, err = cli.Delete(context.Background(), naming.Key(service, b.Addr))
	require.NoError(t, err)
	e := startInstance(t, srv.Endpoint)
	waitCalled(t, 5*time.Second, a, b, e)
	resp, err := cli.Get(context.Background(), naming.Key(service, b.Addr))
	require.NoError(t, err)
	assert.Len(t, resp.Kvs, 1, "the deleted key is back")
	t.Logf("calls: %d ok, %d failed", c.OK.Load(), c.Failed.Load())
	assert.Equal(t, failedBefore, c.Failed.Load(), "calls failed after the drain")
}
