// Package kratostest runs kratos apps and clients for the adapter's tests
// and for the comparison with kratos's own etcd registry: an App serving
// gRPC health, registered by any registry.Registrar, and a Caller that calls
// it through kratos's discovery resolver over any registry.Discovery.
package kratostest

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	kratosapp "github.com/go-kratos/kratos/v2"
	"github.com/go-kratos/kratos/v2/registry"
	kgrpc "github.com/go-kratos/kratos/v2/transport/grpc"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/leasekeeper/leasekeeper/internal/test/testbed"
)

// Service is the name the apps register.
const Service = "greeter"

// Key returns the key kratos's etcd registry writes for the app id, in its
// default namespace.
func Key(id string) string { return "/microservices/" + Service + "/" + id }

// App is a kratos application serving gRPC health on loopback.
type App struct {
	ID   string
	App  *kratosapp.App
	done chan error

	once sync.Once
	err  error
}

// StartApp runs an app registered by r and waits until cli sees its key.
func StartApp(t testing.TB, cli *clientv3.Client, id string, r registry.Registrar) *App {
	t.Helper()
	gs := kgrpc.NewServer(kgrpc.Address("127.0.0.1:0"))
	a := &App{ID: id, done: make(chan error, 1),
		App: kratosapp.New(kratosapp.ID(id), kratosapp.Name(Service), kratosapp.Server(gs), kratosapp.Registrar(r))}
	go func() { a.done <- a.App.Run() }()
	require.Eventually(t, func() bool { return Present(cli, Key(id)) }, 10*time.Second, 5*time.Millisecond, "app %s not registered", id)
	t.Cleanup(func() { _ = a.Stop() })
	return a
}

// Stop stops the app, as kratos does on a signal, and waits for Run to
// return; a second Stop returns the first one's error.
func (a *App) Stop() error {
	a.once.Do(func() {
		if a.err = a.App.Stop(); a.err == nil {
			a.err = <-a.done
		}
	})
	return a.err
}

// Present reports whether key is in etcd now.
func Present(cli *clientv3.Client, key string) bool {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	resp, err := cli.Get(ctx, key)
	return err == nil && len(resp.Kvs) == 1
}

// StartCaller calls the service through kratos's gRPC resolver over d
// every 5 ms (testbed.CallHealth: an answer other than SERVING fails), and
// waits for the first answer.
func StartCaller(t testing.TB, d registry.Discovery) *testbed.Caller {
	t.Helper()
	conn, err := kgrpc.DialInsecure(context.Background(), kgrpc.WithEndpoint("discovery:///"+Service),
		kgrpc.WithDiscovery(d), kgrpc.WithPrintDiscoveryDebugLog(false), kgrpc.WithTimeout(time.Second))
	require.NoError(t, err)
	c := testbed.CallHealth(conn, 5*time.Millisecond, true)
	t.Cleanup(c.Close)
	WaitCalls(t, c, 1)
	return c
}

// WaitCalls waits for n more calls answered.
func WaitCalls(t testing.TB, c *testbed.Caller, n int64) {
	t.Helper()
	base := c.OK.Load()
	require.Eventually(t, func() bool { return c.OK.Load() >= base+n }, 10*time.Second, 5*time.Millisecond, "calls answered: %d", c.OK.Load())
}

// RollingRestart stops each app in turn, starts its successor with start,
// and waits for calls between, rounds times over.
func RollingRestart(t testing.TB, apps []*App, c *testbed.Caller, rounds int, start func(id string) *App) {
	t.Helper()
	for round := range rounds {
		for i, a := range apps {
			require.NoError(t, a.Stop(), "stopping %s", a.ID)
			apps[i] = start(fmt.Sprintf("a%d-%d", i, round+1))
			WaitCalls(t, c, 20)
		}
	}
}
