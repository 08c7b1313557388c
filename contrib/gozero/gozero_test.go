package gozero_test

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/zeromicro/go-zero/core/conf"
	"github.com/zeromicro/go-zero/core/discov"
	"github.com/zeromicro/go-zero/core/logx"
	"github.com/zeromicro/go-zero/zrpc"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"

	"github.com/leasekeeper/leasekeeper/contrib/gozero"
	"github.com/leasekeeper/leasekeeper/internal/test/testbed"
	"github.com/leasekeeper/leasekeeper/keeper/etcdtest"
	"github.com/leasekeeper/leasekeeper/statemachine"
)

const key = "greeter.rpc"

// TestMain runs a zrpc server registered by gozero.MustNewServer (or, for
// the comparison, by go-zero's own Publisher) when the test binary is
// started as one (serve), so that the tests can stop servers as a
// supervisor does, with SIGTERM, which go-zero's proc package handles for
// the whole process.
func TestMain(m *testing.M) {
	logx.Disable()
	if os.Getenv("LK_GOZERO_SERVE") != "" {
		serve()
		return
	}
	os.Exit(m.Run())
}

func serve() {
	var c zrpc.RpcServerConf
	yaml := fmt.Sprintf("Name: greeter.rpc\nListenOn: %s\nLog:\n  Level: error\nEtcd:\n  Hosts: [%s]\n  Key: %s\n",
		os.Getenv("LK_LISTEN"), os.Getenv("LK_ETCD"), key)
	if err := conf.LoadFromYamlBytes([]byte(yaml), &c); err != nil {
		fmt.Println("config:", err)
		os.Exit(2)
	}
	ttl, _ := time.ParseDuration(os.Getenv("LK_TTL"))
	if os.Getenv("LK_GOZERO_SERVE") == publisher {
		discov.TimeToLive = int64(ttl / time.Second)
		zrpc.MustNewServer(c, func(*grpc.Server) {}).Start()
	} else {
		gozero.MustNewServer(c, func(*grpc.Server) {}, gozero.TTL(ttl)).Start()
	}
	fmt.Println("stopped")
}

func startEtcd(t *testing.T) (*etcdtest.Server, *clientv3.Client) {
	t.Helper()
	srv, err := etcdtest.Start(t.TempDir())
	require.NoError(t, err)
	t.Cleanup(srv.Stop)
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{srv.Endpoint}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	require.NoError(t, err)
	t.Cleanup(func() { _ = cli.Close() })
	return srv, cli
}

func etcdConf(srv *etcdtest.Server) discov.EtcdConf {
	return discov.EtcdConf{Hosts: []string{strings.TrimPrefix(srv.Endpoint, "http://")}, Key: key}
}

// keys returns the keys under key/ and their values.
func keys(t *testing.T, cli *clientv3.Client) map[string]string {
	t.Helper()
	resp, err := cli.Get(context.Background(), key+"/", clientv3.WithPrefix())
	require.NoError(t, err)
	out := make(map[string]string)
	for _, kv := range resp.Kvs {
		out[string(kv.Key)] = string(kv.Value)
	}
	return out
}

func TestAddressFollowsZrpc(t *testing.T) {
	t.Setenv("POD_IP", "10.1.2.3")
	for _, tc := range []struct{ listenOn, want string }{
		{"127.0.0.1:8080", "127.0.0.1:8080"},
		{"0.0.0.0:8080", "10.1.2.3:8080"},
		{":8080", "10.1.2.3:8080"},
		{"example.com:8080", "example.com:8080"},
	} {
		assert.Equal(t, tc.want, gozero.Address(tc.listenOn), "Address(%q)", tc.listenOn)
	}
}

func TestBadInput(t *testing.T) {
	srv, _ := startEtcd(t)
	c := etcdConf(srv)
	for _, tc := range []struct {
		name     string
		c        discov.EtcdConf
		listenOn string
		opts     []gozero.Option
	}{
		{"no hosts", discov.EtcdConf{Key: key}, "127.0.0.1:1", nil},
		{"no key", discov.EtcdConf{Hosts: c.Hosts}, "127.0.0.1:1", nil},
		{"no address", c, "", nil},
		{"negative drain delay", c, "127.0.0.1:1", []gozero.Option{gozero.DrainDelay(-time.Second)}},
		{"TTL too short", c, "127.0.0.1:1", []gozero.Option{gozero.TTL(-time.Second)}},
		{"no start timeout", c, "127.0.0.1:1", []gozero.Option{gozero.StartTimeout(0)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := gozero.Register(tc.c, tc.listenOn, tc.opts...)
			assert.Error(t, err)
			assert.Nil(t, r)
		})
	}
	_, err := gozero.NewServer(zrpc.RpcServerConf{ListenOn: "127.0.0.1:1"}, func(*grpc.Server) {})
	assert.Error(t, err, "a server without Etcd")
}

// TestSubscriberFindsTheRegistration registers with and without an id, and
// reads it with go-zero's own discov.Subscriber; a key deleted behind the
// registration's back comes back under the same name.
func TestSubscriberFindsTheRegistration(t *testing.T) {
	srv, cli := startEtcd(t)
	c := etcdConf(srv)
	sub, err := discov.NewSubscriber(c.Hosts, key)
	require.NoError(t, err)
	t.Cleanup(sub.Close)

	r, err := gozero.Register(c, "127.0.0.1:9001", gozero.TTL(3*time.Second))
	require.NoError(t, err)
	id, err := strconv.ParseInt(strings.TrimPrefix(r.Key(), key+"/"), 10, 64)
	require.NoError(t, err, "key %s: want %s/<decimal id>", r.Key(), key)
	assert.Positive(t, id)
	c.ID = 42
	r42, err := gozero.Register(c, "127.0.0.1:9002", gozero.TTL(3*time.Second))
	require.NoError(t, err)
	assert.Equal(t, key+"/42", r42.Key())
	assert.Equal(t, map[string]string{r.Key(): "127.0.0.1:9001", key + "/42": "127.0.0.1:9002"}, keys(t, cli))
	require.Eventually(t, func() bool { return len(sub.Values()) == 2 }, 5*time.Second, 5*time.Millisecond, "subscriber: %v", sub.Values())
	assert.ElementsMatch(t, []string{"127.0.0.1:9001", "127.0.0.1:9002"}, sub.Values())

	_, err = cli.Delete(context.Background(), r.Key())
	require.NoError(t, err)
	require.Eventually(t, func() bool { return keys(t, cli)[r.Key()] == "127.0.0.1:9001" }, 5*time.Second, 5*time.Millisecond, "the deleted key was not put back")
	require.Eventually(t, func() bool { return len(sub.Values()) == 2 }, 5*time.Second, 5*time.Millisecond, "subscriber: %v", sub.Values())

	require.NoError(t, r42.Drain(context.Background()))
	require.NoError(t, r.Close())
	assert.Empty(t, keys(t, cli))
	assert.Equal(t, statemachine.Closed, r.Keeper().State())
	require.Eventually(t, func() bool { return len(sub.Values()) == 0 }, 5*time.Second, 5*time.Millisecond, "subscriber: %v", sub.Values())
}

// server is a zrpc server in a child process.
type server struct {
	cmd  *exec.Cmd
	addr string
	out  chan []string // the lines it printed, once it closed its output
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer func() { _ = l.Close() }()
	return l.Addr().String()
}

// The registrations compared: leasekeeper's, and go-zero's own Publisher.
const (
	leasekeeper = "leasekeeper contrib/gozero"
	publisher   = "go-zero discov.Publisher"
)

// startServerBy starts a server registered by reg, leasekeeper or publisher.
func startServerBy(t *testing.T, reg string, srv *etcdtest.Server, cli *clientv3.Client, ttl time.Duration) *server {
	t.Helper()
	s := &server{addr: freeAddr(t), out: make(chan []string, 1)}
	s.cmd = exec.Command(os.Args[0], "-test.run=^$")
	s.cmd.Env = append(os.Environ(), "LK_GOZERO_SERVE="+reg, "LK_LISTEN="+s.addr,
		"LK_ETCD="+etcdConf(srv).Hosts[0], "LK_TTL="+ttl.String())
	stdout, err := s.cmd.StdoutPipe()
	require.NoError(t, err)
	s.cmd.Stderr = os.Stderr
	require.NoError(t, s.cmd.Start())
	go func() {
		var lines []string
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines = append(lines, sc.Text())
		}
		s.out <- lines
	}()
	t.Cleanup(func() { _ = s.cmd.Process.Kill(); _ = s.cmd.Wait() })
	require.Eventually(t, func() bool {
		for _, v := range keys(t, cli) {
			if v == s.addr {
				return true
			}
		}
		return false
	}, 10*time.Second, 5*time.Millisecond, "server %s not registered", s.addr)
	return s
}

// key returns the server's key.
func (s *server) key(t *testing.T, cli *clientv3.Client) string {
	t.Helper()
	for k, v := range keys(t, cli) {
		if v == s.addr {
			return k
		}
	}
	return ""
}

// stop sends SIGTERM, as a supervisor does, and waits for the server to
// exit on its own.
func (s *server) stop(t *testing.T) {
	t.Helper()
	require.NoError(t, s.cmd.Process.Signal(syscall.SIGTERM))
	lines := <-s.out
	require.NoError(t, s.cmd.Wait(), "server %s: %v", s.addr, lines)
	assert.Contains(t, lines, "stopped", "server %s did not return from Start", s.addr)
}

// startCaller calls the service through a zrpc client on go-zero's etcd
// resolver every 5 ms (testbed.CallHealth: an answer other than SERVING
// fails), and waits for the first answer.
func startCaller(t *testing.T, srv *etcdtest.Server) *testbed.Caller {
	t.Helper()
	var cc zrpc.RpcClientConf
	require.NoError(t, conf.LoadFromYamlBytes([]byte(fmt.Sprintf("Etcd:\n  Hosts: [%s]\n  Key: %s\n", etcdConf(srv).Hosts[0], key)), &cc))
	cl, err := zrpc.NewClient(cc)
	require.NoError(t, err)
	c := testbed.CallHealth(cl.Conn(), 5*time.Millisecond, true)
	t.Cleanup(c.Close)
	waitCalls(t, c, 1)
	return c
}

// waitCalls waits for n more calls answered.
func waitCalls(t *testing.T, c *testbed.Caller, n int64) {
	t.Helper()
	base := c.OK.Load()
	require.Eventually(t, func() bool { return c.OK.Load() >= base+n }, 10*time.Second, 5*time.Millisecond, "calls answered: %d", c.OK.Load())
}

// TestAgainstGoZeroPublisher runs leasekeeper's registration and go-zero's
// own Publisher through the same scenarios, with a zrpc client calling all
// along: a rolling restart of three servers by SIGTERM (2 rounds), a key
// deleted behind a server's back, and an etcd outage of 20 s, more than
// the TTL, which the Publisher survives under a new key (its lease ID),
// and prints a row for each. It asserts leasekeeper's figures: no failed
// call, the key put back, every server under its key after the outage and
// no other key; the Publisher is the anchor. (Two servers stay through
// the outage: the delete of the only one's key would leave the client no
// address until it is back, which is what etcd said.)
func TestAgainstGoZeroPublisher(t *testing.T) {
	var rows []string
	for _, reg := range []string{leasekeeper, publisher} {
		t.Run(reg, func(t *testing.T) {
			srv, cli := startEtcd(t)
			start := func() *server { return startServerBy(t, reg, srv, cli, 3*time.Second) }
			servers := []*server{start(), start(), start()}
			c := startCaller(t, srv)
			for range 2 {
				for i, s := range servers {
					s.stop(t)
					servers[i] = start()
					waitCalls(t, c, 20)
				}
			}
			rollOK, rollFailed := c.OK.Load(), c.Failed.Load()

			k := servers[0].key(t, cli)
			_, err := cli.Delete(context.Background(), k)
			require.NoError(t, err)
			restored := "not back within 5s"
			if waitFor(5*time.Second, func() bool { return keys(t, cli)[k] == servers[0].addr }) {
				restored = "back under the same key"
			}

			before := keys(t, cli)
			srv.Stop()
			time.Sleep(20 * time.Second)
			require.NoError(t, srv.Restart())
			// Past the TTL after etcd is back, a lease left behind is gone.
			waitFor(10*time.Second, func() bool { return len(keys(t, cli)) == len(servers) })
			time.Sleep(2 * 3 * time.Second)
			after := keys(t, cli)
			same := 0
			for key, v := range before {
				if after[key] == v {
					same++
				}
			}
			waitCalls(t, c, 20)
			outFailed := c.Failed.Load() - rollFailed
			rows = append(rows, fmt.Sprintf("| %s | %d | %d | %s | %d of %d under the same key, %d keys in all | %d |",
				reg, rollOK+rollFailed, rollFailed, restored, same, len(before), len(after), outFailed))
			if reg == leasekeeper {
				assert.Zero(t, rollFailed, "failed calls in the rolling restart: %v", c.Failures())
				assert.Equal(t, "back under the same key", restored)
				assert.Equal(t, before, after, "keys after the outage")
				assert.Zero(t, outFailed, "failed calls through the outage: %v", c.Failures())
				for _, s := range servers {
					s.stop(t)
				}
				assert.Empty(t, keys(t, cli), "keys once every server drained")
			}
		})
	}
	t.Logf("\n| registration | rolling restart: calls | failed | key deleted behind its back | after a 20s outage (TTL 3s) | failed calls through the outage |\n|---|---|---|---|---|---|\n%s",
		strings.Join(rows, "\n"))
}

// waitFor polls cond until it holds or limit passes, and reports whether
// it held.
func waitFor(limit time.Duration, cond func() bool) bool {
	for end := time.Now().Add(limit); time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
		if cond() {
			return true
		}
	}
	return false
}
