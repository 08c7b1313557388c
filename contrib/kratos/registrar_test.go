package kratos_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	kratosapp "github.com/go-kratos/kratos/v2"
	"github.com/go-kratos/kratos/v2/log"
	"github.com/go-kratos/kratos/v2/registry"
	kgrpc "github.com/go-kratos/kratos/v2/transport/grpc"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc/health/grpc_health_v1"

	"github.com/leasekeeper/leasekeeper/contrib/kratos"
	"github.com/leasekeeper/leasekeeper/keeper/etcdtest"
	"github.com/leasekeeper/leasekeeper/statemachine"
)

const service = "greeter"

func TestMain(m *testing.M) {
	// kratos's resolver logs every list it is handed; keep errors only.
	log.SetLogger(log.NewFilter(log.GetLogger(), log.FilterLevel(log.LevelError)))
	os.Exit(m.Run())
}

func startEtcd(t *testing.T) (*etcdtest.Server, *clientv3.Client) {
	t.Helper()
	srv, err := etcdtest.Start(t.TempDir())
	require.NoError(t, err)
	t.Cleanup(srv.Stop)
	return srv, client(t, srv)
}

// client returns a client of its own, as a process of its own would have.
func client(t *testing.T, srv *etcdtest.Server) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{srv.Endpoint}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	require.NoError(t, err)
	t.Cleanup(func() { _ = cli.Close() })
	return cli
}

func TestKeysAndValuesAsKratosWritesThem(t *testing.T) {
	_, cli := startEtcd(t)
	for _, tc := range []struct {
		name string
		opts []kratos.Option
		key  string
	}{
		{"default namespace", nil, "/microservices/greeter/a1"},
		{"namespace option", []kratos.Option{kratos.Namespace("/prod")}, "/prod/greeter/a1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := kratos.New(cli, append(tc.opts, kratos.TTL(3*time.Second))...)
			require.NoError(t, err)
			si := &registry.ServiceInstance{ID: "a1", Name: service, Version: "v1",
				Metadata: map[string]string{"zone": "a"}, Endpoints: []string{"grpc://127.0.0.1:9000?isSecure=false"}}
			require.NoError(t, r.Register(context.Background(), si))
			want, err := json.Marshal(si)
			require.NoError(t, err)

			resp, err := cli.Get(context.Background(), tc.key)
			require.NoError(t, err)
			require.Len(t, resp.Kvs, 1, "no key %s", tc.key)
			assert.JSONEq(t, string(want), string(resp.Kvs[0].Value))
			assert.Equal(t, r.Keeper().LeaseID(), clientv3.LeaseID(resp.Kvs[0].Lease))

			d, err := kratos.NewDiscovery(cli, tc.opts...)
			require.NoError(t, err)
			got, err := d.GetService(context.Background(), service)
			require.NoError(t, err)
			require.Len(t, got, 1)
			assert.True(t, si.Equal(got[0]), "GetService = %+v, want %+v", got[0], si)

			require.NoError(t, r.Deregister(context.Background(), si))
			resp, err = cli.Get(context.Background(), tc.key)
			require.NoError(t, err)
			assert.Empty(t, resp.Kvs, "the key is still there after Deregister")
			assert.Equal(t, statemachine.Closed, r.Keeper().State())
			assert.NoError(t, r.Deregister(context.Background(), si), "a second Deregister")
		})
	}
}

func TestBadInput(t *testing.T) {
	_, cli := startEtcd(t)
	for _, tc := range []struct {
		name string
		opts []kratos.Option
	}{
		{"namespace without a leading slash", []kratos.Option{kratos.Namespace("microservices")}},
		{"namespace with a trailing slash", []kratos.Option{kratos.Namespace("/microservices/")}},
		{"negative drain delay", []kratos.Option{kratos.DrainDelay(-time.Second)}},
		{"negative TTL", []kratos.Option{kratos.TTL(-time.Second)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := kratos.New(cli, tc.opts...)
			assert.Error(t, err)
		})
	}
	r, err := kratos.New(cli)
	require.NoError(t, err)
	t.Cleanup(func() { _ = r.Close(context.Background()) })
	for _, si := range []*registry.ServiceInstance{nil, {ID: "a"}, {Name: service}, {Name: service, ID: "a/b"}, {Name: "a/b", ID: "c"}} {
		assert.Error(t, r.Register(context.Background(), si), "Register(%+v)", si)
		assert.Error(t, r.Deregister(context.Background(), si), "Deregister(%+v)", si)
	}
	d, err := kratos.NewDiscovery(cli)
	require.NoError(t, err)
	_, err = d.Watch(context.Background(), "")
	assert.Error(t, err)
}

// app is a kratos application serving gRPC health, registered through a
// Registrar on a client of its own.
type app struct {
	id   string
	app  *kratosapp.App
	reg  *kratos.Registrar
	done chan error

	once sync.Once
	err  error
}

func startApp(t *testing.T, srv *etcdtest.Server, id string, opts ...kratos.Option) *app {
	t.Helper()
	r, err := kratos.New(client(t, srv), append([]kratos.Option{kratos.TTL(3 * time.Second), kratos.DrainDelay(500 * time.Millisecond)}, opts...)...)
	require.NoError(t, err)
	gs := kgrpc.NewServer(kgrpc.Address("127.0.0.1:0"))
	a := &app{id: id, reg: r, done: make(chan error, 1),
		app: kratosapp.New(kratosapp.ID(id), kratosapp.Name(service), kratosapp.Server(gs), kratosapp.Registrar(r))}
	go func() { a.done <- a.app.Run() }()
	require.Eventually(t, func() bool { return r.Keeper().State() == statemachine.Healthy }, 10*time.Second, 5*time.Millisecond, "app %s not registered", id)
	t.Cleanup(func() { _ = a.stop() })
	return a
}

// stop stops the app, as kratos does on a signal, and waits for Run to
// return; a second stop returns the first one's error.
func (a *app) stop() error {
	a.once.Do(func() {
		if a.err = a.app.Stop(); a.err == nil {
			a.err = <-a.done
		}
	})
	return a.err
}

// caller calls the service through kratos's gRPC resolver over a
// Discovery, every few milliseconds, and counts the calls.
type caller struct {
	ok, failed atomic.Int64
	mu         sync.Mutex
	errs       []string
	stop       context.CancelFunc
	wg         sync.WaitGroup
}

func startCaller(t *testing.T, cli *clientv3.Client) *caller {
	t.Helper()
	d, err := kratos.NewDiscovery(cli)
	require.NoError(t, err)
	conn, err := kgrpc.DialInsecure(context.Background(), kgrpc.WithEndpoint("discovery:///"+service),
		kgrpc.WithDiscovery(d), kgrpc.WithPrintDiscoveryDebugLog(false), kgrpc.WithTimeout(time.Second))
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	c := &caller{stop: cancel}
	hc := grpc_health_v1.NewHealthClient(conn)
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		for ctx.Err() == nil {
			resp, err := hc.Check(ctx, &grpc_health_v1.HealthCheckRequest{})
			switch {
			case ctx.Err() != nil:
			case err != nil || resp.GetStatus() != grpc_health_v1.HealthCheckResponse_SERVING:
				c.failed.Add(1)
				c.mu.Lock()
				c.errs = append(c.errs, fmt.Sprintf("%v %v", resp.GetStatus(), err))
				c.mu.Unlock()
			default:
				c.ok.Add(1)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}()
	t.Cleanup(func() { cancel(); c.wg.Wait(); _ = conn.Close() })
	// The first call finds an instance.
	require.Eventually(t, func() bool { return c.ok.Load() > 0 }, 10*time.Second, 5*time.Millisecond, "no call answered")
	return c
}

func (c *caller) failures() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.errs...)
}

// waitCalls waits for n more calls answered.
func (c *caller) waitCalls(t *testing.T, n int64) {
	t.Helper()
	base := c.ok.Load()
	require.Eventually(t, func() bool { return c.ok.Load() >= base+n }, 10*time.Second, 5*time.Millisecond)
}

func TestRollingRestartThroughKratosResolver(t *testing.T) {
	srv, cli := startEtcd(t)
	apps := []*app{startApp(t, srv, "a0"), startApp(t, srv, "a1"), startApp(t, srv, "a2")}
	c := startCaller(t, cli)
	for round := range 2 {
		for i, a := range apps {
			require.NoError(t, a.stop(), "stopping %s", a.id)
			apps[i] = startApp(t, srv, fmt.Sprintf("a%d-%d", i, round+1))
			c.waitCalls(t, 20)
		}
	}
	t.Logf("rolling restart, 2 rounds × 3 instances: %d calls answered, %d failed", c.ok.Load(), c.failed.Load())
	assert.Zero(t, c.failed.Load(), "failed calls: %v", c.failures())
}

// TestOutageLongerThanKratosSurvives stops etcd for 20 s, longer than
// kratos's own registry survives at this TTL (TTL + 5 grants 3 s apart):
// the instance serves throughout, the client keeps its list, and once etcd
// is back the instance is there again under the same key. Then its key is
// deleted behind its back, and put back.
func TestOutageLongerThanKratosSurvives(t *testing.T) {
	srv, cli := startEtcd(t)
	a := startApp(t, srv, "a0")
	c := startCaller(t, cli)

	d, err := kratos.NewDiscovery(client(t, srv))
	require.NoError(t, err)
	w, err := d.Watch(context.Background(), service)
	require.NoError(t, err)
	first, err := w.Next()
	require.NoError(t, err)
	require.Len(t, first, 1)
	type list struct {
		at time.Time
		n  int
	}
	lists := make(chan list, 100)
	go func() {
		defer close(lists)
		for {
			ins, err := w.Next()
			if err != nil {
				return
			}
			lists <- list{time.Now(), len(ins)}
		}
	}()

	key := "/microservices/" + service + "/a0"
	resp, err := cli.Get(context.Background(), key)
	require.NoError(t, err)
	require.Len(t, resp.Kvs, 1)
	value := string(resp.Kvs[0].Value)

	srv.Stop()
	require.Eventually(t, func() bool { return a.reg.Keeper().State() == statemachine.Failed }, 10*time.Second, 10*time.Millisecond)
	time.Sleep(20 * time.Second)
	c.waitCalls(t, 20) // still served from the list the client kept
	require.NoError(t, srv.Restart())
	require.Eventually(t, func() bool { return a.reg.Keeper().State() == statemachine.Healthy }, 10*time.Second, 10*time.Millisecond)
	resp, err = cli.Get(context.Background(), key)
	require.NoError(t, err)
	require.Len(t, resp.Kvs, 1, "the key is not back after the outage")
	assert.Equal(t, value, string(resp.Kvs[0].Value))
	assert.Equal(t, a.reg.Keeper().LeaseID(), clientv3.LeaseID(resp.Kvs[0].Lease))

	deleted := time.Now()
	_, err = cli.Delete(context.Background(), key)
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		resp, err := cli.Get(context.Background(), key)
		return err == nil && len(resp.Kvs) == 1 && string(resp.Kvs[0].Value) == value
	}, 5*time.Second, 5*time.Millisecond, "the deleted key was not put back")
	c.waitCalls(t, 20)

	got, err := d.GetService(context.Background(), service)
	require.NoError(t, err)
	assert.Len(t, got, 1, "instances after the key was put back")

	require.NoError(t, w.Stop())
	for l := range lists {
		// The delete may show as a list of none (etcd's word, not an
		// error's), or not at all when the watch brings the delete and
		// the put back in one response. Before it, the outage must not
		// have emptied the list.
		assert.False(t, l.n == 0 && l.at.Before(deleted), "the watcher handed an empty list at %v, before the delete", l.at)
	}
	assert.Zero(t, c.failed.Load(), "failed calls: %v", c.failures())
}
