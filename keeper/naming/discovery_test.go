package naming_test

import (
	"context"
	"net"
	"sync"
	"sync/atomic"
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

	"github.com/leasekeeper/leasekeeper/internal/embedetcd"
	"github.com/leasekeeper/leasekeeper/keeper"
	"github.com/leasekeeper/leasekeeper/keeper/grpchealth"
	"github.com/leasekeeper/leasekeeper/keeper/naming"
	"github.com/leasekeeper/leasekeeper/statemachine"
)

const service = "my-service"

// instance is one gRPC server registered by a keeper of its own, with the
// health tracker that keeps its status.
type instance struct {
	addr  string
	gs    *grpc.Server
	k     *keeper.Keeper
	calls atomic.Int64
}

func startInstance(t *testing.T, endpoint string) *instance {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	in := &instance{addr: ln.Addr().String()}
	hs := health.NewServer()
	in.gs = grpc.NewServer(grpc.UnaryInterceptor(func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		in.calls.Add(1)
		return h(ctx, req)
	}))
	healthpb.RegisterHealthServer(in.gs, hs)
	go func() { _ = in.gs.Serve(ln) }()
	t.Cleanup(in.gs.Stop)

	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{endpoint}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	require.NoError(t, err)
	t.Cleanup(func() { _ = cli.Close() })
	cfg := keeper.DefaultConfig()
	cfg.TTL = 3 * time.Second
	cfg.Observers = []keeper.Observer{grpchealth.New(hs, "")}
	in.k, err = keeper.New(cli, cfg)
	require.NoError(t, err)
	t.Cleanup(func() { _ = in.k.Close(context.Background()) })
	require.NoError(t, naming.Register(context.Background(), in.k, service, in.addr, map[string]string{"addr": in.addr}))
	require.NoError(t, in.k.Start(context.Background()))
	return in
}

// caller calls Health/Check through etcd's resolver every few ms and
// counts the failures.
type caller struct {
	conn   *grpc.ClientConn
	failed atomic.Int64
	ok     atomic.Int64
	stop   context.CancelFunc
	wg     sync.WaitGroup
}

func startCaller(t *testing.T, cli *clientv3.Client) *caller {
	t.Helper()
	b, err := resolver.NewBuilder(cli)
	require.NoError(t, err)
	conn, err := grpc.NewClient("etcd:///"+service, grpc.WithResolvers(b),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultServiceConfig(`{"loadBalancingConfig":[{"round_robin":{}}]}`))
	require.NoError(t, err)
	ctx, stop := context.WithCancel(context.Background())
	c := &caller{conn: conn, stop: stop}
	hc := healthpb.NewHealthClient(conn)
	c.wg.Go(func() {
		for ctx.Err() == nil {
			cctx, cancel := context.WithTimeout(ctx, time.Second)
			_, err := hc.Check(cctx, &healthpb.HealthCheckRequest{})
			cancel()
			switch {
			case ctx.Err() != nil:
			case err != nil:
				c.failed.Add(1)
			default:
				c.ok.Add(1)
			}
			time.Sleep(5 * time.Millisecond)
		}
	})
	t.Cleanup(c.close)
	return c
}

func (c *caller) close() {
	c.stop()
	c.wg.Wait()
	_ = c.conn.Close()
}

// waitCalled waits until every instance answered a call since now.
func waitCalled(t *testing.T, within time.Duration, ins ...*instance) time.Duration {
	t.Helper()
	began := time.Now()
	base := make([]int64, len(ins))
	for i, in := range ins {
		base[i] = in.calls.Load()
	}
	require.Eventually(t, func() bool {
		for i, in := range ins {
			if in.calls.Load() == base[i] {
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
	c := startCaller(t, cli)
	waitCalled(t, 5*time.Second, a)
	registered := time.Now()
	b := startInstance(t, srv.Endpoint)
	d := startInstance(t, srv.Endpoint)
	took := waitCalled(t, time.Second, b, d)
	t.Logf("two new instances called %v after Start returned (%v after the first)", took, time.Since(registered))

	// A drain: deregistered at once, served for a while, then stopped.
	failedBefore := c.failed.Load()
	require.NoError(t, d.k.Drain(context.Background(), 300*time.Millisecond, d.gs.GracefulStop))
	after := d.calls.Load()
	waitCalled(t, time.Second, a, b)
	assert.Equal(t, after, d.calls.Load(), "the drained instance was called after it stopped")
	assert.Equal(t, failedBefore, c.failed.Load(), "calls failed during the drain")

	// etcd away for 2×TTL: the resolver keeps what it has, the instances
	// keep serving (health follows the service by default).
	srv.Stop()
	require.Eventually(t, func() bool { return a.k.State() == statemachine.Failed }, 10*time.Second, 10*time.Millisecond)
	waitCalled(t, time.Second, a, b)
	assert.Equal(t, failedBefore, c.failed.Load(), "calls failed while etcd was away")
	require.NoError(t, srv.Restart(30*time.Second))
	require.Eventually(t, func() bool {
		return a.k.State() == statemachine.Healthy && b.k.State() == statemachine.Healthy
	}, 10*time.Second, 10*time.Millisecond)

	// A key deleted behind a keeper's back is restored, and a new instance
	// is found: the resolver's watch came back with etcd.
	_, err = cli.Delete(context.Background(), naming.Key(service, b.addr))
	require.NoError(t, err)
	e := startInstance(t, srv.Endpoint)
	waitCalled(t, 2*time.Second, a, b, e)
	resp, err := cli.Get(context.Background(), naming.Key(service, b.addr))
	require.NoError(t, err)
	assert.Len(t, resp.Kvs, 1, "the deleted key is back")
	t.Logf("calls: %d ok, %d failed", c.ok.Load(), c.failed.Load())
	assert.Equal(t, failedBefore, c.failed.Load(), "calls failed after the drain")
}
