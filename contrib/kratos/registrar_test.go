package kratos_test

import (
	"context"
	"encoding/json"
	"os"
	"testing"
	"time"

	"github.com/go-kratos/kratos/v2/log"
	"github.com/go-kratos/kratos/v2/registry"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/leasekeeper/leasekeeper/contrib/kratos"
	"github.com/leasekeeper/leasekeeper/contrib/kratos/internal/kratostest"
	"github.com/leasekeeper/leasekeeper/internal/test/testbed"
	"github.com/leasekeeper/leasekeeper/keeper/etcdtest"
	"github.com/leasekeeper/leasekeeper/statemachine"
)

const service = kratostest.Service

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

// newRegistrar returns a Registrar on a client of its own, as a process of
// its own would have, at TTL 3s.
func newRegistrar(t *testing.T, srv *etcdtest.Server) *kratos.Registrar {
	t.Helper()
	r, err := kratos.New(client(t, srv), kratos.TTL(3*time.Second), kratos.DrainDelay(500*time.Millisecond))
	require.NoError(t, err)
	return r
}

func startCaller(t *testing.T, cli *clientv3.Client) *testbed.Caller {
	t.Helper()
	d, err := kratos.NewDiscovery(cli)
	require.NoError(t, err)
	return kratostest.StartCaller(t, d)
}

func TestRollingRestartThroughKratosResolver(t *testing.T) {
	srv, cli := startEtcd(t)
	start := func(id string) *kratostest.App { return kratostest.StartApp(t, cli, id, newRegistrar(t, srv)) }
	apps := []*kratostest.App{start("a0"), start("a1"), start("a2")}
	c := startCaller(t, cli)
	kratostest.RollingRestart(t, apps, c, 2, start)
	t.Logf("rolling restart, 2 rounds × 3 instances: %d calls answered, %d failed", c.OK.Load(), c.Failed.Load())
	assert.Zero(t, c.Failed.Load(), "failed calls: %v", c.Failures())
}

// TestOutageLongerThanKratosSurvives stops etcd for 20 s, longer than
// kratos's own registry survives at this TTL (TTL + 5 grants 3 s apart):
// the instance serves throughout, the client keeps its list, and once etcd
// is back the instance is there again under the same key. Then its key is
// deleted behind its back, and put back.
func TestOutageLongerThanKratosSurvives(t *testing.T) {
	srv, cli := startEtcd(t)
	r := newRegistrar(t, srv)
	kratostest.StartApp(t, cli, "a0", r)
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

	key := kratostest.Key("a0")
	resp, err := cli.Get(context.Background(), key)
	require.NoError(t, err)
	require.Len(t, resp.Kvs, 1)
	value := string(resp.Kvs[0].Value)

	srv.Stop()
	require.Eventually(t, func() bool { return r.Keeper().State() == statemachine.Failed }, 10*time.Second, 10*time.Millisecond)
	time.Sleep(20 * time.Second)
	kratostest.WaitCalls(t, c, 20) // still served from the list the client kept
	require.NoError(t, srv.Restart())
	require.Eventually(t, func() bool { return r.Keeper().State() == statemachine.Healthy }, 10*time.Second, 10*time.Millisecond)
	resp, err = cli.Get(context.Background(), key)
	require.NoError(t, err)
	require.Len(t, resp.Kvs, 1, "the key is not back after the outage")
	assert.Equal(t, value, string(resp.Kvs[0].Value))
	assert.Equal(t, r.Keeper().LeaseID(), clientv3.LeaseID(resp.Kvs[0].Lease))

	deleted := time.Now()
	_, err = cli.Delete(context.Background(), key)
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		resp, err := cli.Get(context.Background(), key)
		return err == nil && len(resp.Kvs) == 1 && string(resp.Kvs[0].Value) == value
	}, 5*time.Second, 5*time.Millisecond, "the deleted key was not put back")
	kratostest.WaitCalls(t, c, 20)

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
	assert.Zero(t, c.Failed.Load(), "failed calls: %v", c.Failures())
}
