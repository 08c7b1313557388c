package compare

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	etcdregistry "github.com/go-kratos/kratos/contrib/registry/etcd/v2"
	"github.com/go-kratos/kratos/v2/log"
	"github.com/go-kratos/kratos/v2/registry"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/leasekeeper/leasekeeper/contrib/kratos"
	"github.com/leasekeeper/leasekeeper/contrib/kratos/internal/kratostest"
	"github.com/leasekeeper/leasekeeper/keeper/etcdtest"
)

const (
	ttl    = 3 * time.Second
	outage = 25 * time.Second // kratos's registry gives up about TTL + 15 s in
)

func TestMain(m *testing.M) {
	log.SetLogger(log.NewFilter(log.GetLogger(), log.FilterLevel(log.LevelFatal)))
	os.Exit(m.Run())
}

// registrars are the two sides of the comparison: each makes the
// registrar of one app, on a client of its own, and the clients' Discovery.
var registrars = []struct {
	name      string
	registrar func(t *testing.T, cli *clientv3.Client) registry.Registrar
	discovery func(t *testing.T, cli *clientv3.Client) registry.Discovery
}{
	{"leasekeeper contrib/kratos",
		func(t *testing.T, cli *clientv3.Client) registry.Registrar {
			r, err := kratos.New(cli, kratos.TTL(ttl), kratos.DrainDelay(500*time.Millisecond))
			require.NoError(t, err)
			return r
		},
		func(t *testing.T, cli *clientv3.Client) registry.Discovery {
			d, err := kratos.NewDiscovery(cli)
			require.NoError(t, err)
			return d
		}},
	{"kratos contrib/registry/etcd",
		func(_ *testing.T, cli *clientv3.Client) registry.Registrar {
			return etcdregistry.New(cli, etcdregistry.RegisterTTL(ttl))
		},
		func(_ *testing.T, cli *clientv3.Client) registry.Discovery { return etcdregistry.New(cli) }},
}

func client(t *testing.T, srv *etcdtest.Server) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{srv.Endpoint}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	require.NoError(t, err)
	t.Cleanup(func() { _ = cli.Close() })
	return cli
}

// waitPresent returns how long key took to be in etcd, within limit, and
// whether it was.
func waitPresent(cli *clientv3.Client, key string, limit time.Duration) (time.Duration, bool) {
	start := time.Now()
	for time.Since(start) < limit {
		if kratostest.Present(cli, key) {
			return time.Since(start), true
		}
		time.Sleep(10 * time.Millisecond)
	}
	return 0, false
}

func back(d time.Duration, ok bool, limit time.Duration) string {
	if !ok {
		return fmt.Sprintf("not back within %v", limit)
	}
	return fmt.Sprintf("back in %v", d.Round(10*time.Millisecond))
}

// TestAgainstKratosRegistry runs each registrar through a rolling restart
// of three apps (2 rounds), a key deleted behind an app's back, and an etcd
// outage of 25 s, with a client calling through kratos's resolver over the
// same registry's Discovery all along, and prints a row for each. It
// asserts the adapter's figures; kratos's registry is the anchor.
func TestAgainstKratosRegistry(t *testing.T) {
	var rows []string
	for _, r := range registrars {
		t.Run(r.name, func(t *testing.T) {
			srv, err := etcdtest.Start(t.TempDir())
			require.NoError(t, err)
			t.Cleanup(srv.Stop)
			cli := client(t, srv)
			start := func(id string) *kratostest.App {
				return kratostest.StartApp(t, cli, id, r.registrar(t, client(t, srv)))
			}
			apps := []*kratostest.App{start("a0"), start("a1"), start("a2")}
			c := kratostest.StartCaller(t, r.discovery(t, client(t, srv)))

			kratostest.RollingRestart(t, apps, c, 2, start)
			rollOK, rollFailed := c.OK.Load(), c.Failed.Load()

			key := kratostest.Key(apps[0].ID)
			_, err = cli.Delete(context.Background(), key)
			require.NoError(t, err)
			restored, restoredOK := waitPresent(cli, key, 5*time.Second)

			srv.Stop()
			time.Sleep(outage)
			require.NoError(t, srv.Restart())
			// A client of its own: the one from before the outage may wait
			// out gRPC's reconnect backoff, which the outage grew.
			obs := client(t, srv)
			// Past three TTLs after etcd is back a lease left behind is gone,
			// and with it the key of a registry that stopped renewing.
			time.Sleep(10 * time.Second)
			present := 0
			for _, a := range apps {
				if kratostest.Present(obs, kratostest.Key(a.ID)) {
					present++
				}
			}
			kratostest.WaitCalls(t, c, 20)
			outFailed := c.Failed.Load() - rollFailed

			rows = append(rows, fmt.Sprintf("| %s | %d | %d | %s | %d of %d | %d |", r.name, rollOK+rollFailed, rollFailed,
				back(restored, restoredOK, 5*time.Second), present, len(apps), outFailed))
			if strings.HasPrefix(r.name, "leasekeeper") {
				assert.Zero(t, rollFailed, "failed calls in the rolling restart: %v", c.Failures())
				assert.True(t, restoredOK, "the deleted key was not put back")
				assert.Equal(t, len(apps), present, "keys registered 10s after the outage")
				assert.Zero(t, outFailed, "failed calls through the outage: %v", c.Failures())
			}
		})
	}
	t.Logf("\n| registry | rolling restart: calls | failed | key deleted behind its back | keys registered 10s after a %v outage (TTL %v) | failed calls through the outage |\n|---|---|---|---|---|---|\n%s",
		outage, ttl, strings.Join(rows, "\n"))
}
