package main

import (
	"context"
	"net"
	"net/http"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/naming/endpoints"
)

// trapping is a child that reports the signal it gets on its stdout (which
// is the sidecar's) and exits with a code of its own for each.
const trapping = `trap 'echo got TERM; exit 3' TERM; trap 'echo got INT; exit 4' INT; trap 'echo got HUP; exit 5' HUP; ` +
	`echo child up; while :; do sleep 0.02; done`

// waitGone polls etcd until key is gone and returns when it went.
func waitGone(t *testing.T, cli *clientv3.Client, key string, within time.Duration) time.Time {
	t.Helper()
	deadline := time.Now().Add(within)
	for hasKey(t, cli, key) {
		if time.Now().After(deadline) {
			t.Fatalf("%s still registered %v after the signal", key, within)
		}
		time.Sleep(5 * time.Millisecond)
	}
	return time.Now()
}

// TestDrainOnEverySignal: SIGTERM, SIGINT and SIGHUP each drain in order:
// the key is gone within 100 ms, the child gets the same signal only after
// the drain delay, and the sidecar exits with the child's code.
func TestDrainOnEverySignal(t *testing.T) {
	_, cli := etcdServer(t)
	for _, tc := range []struct {
		sig  syscall.Signal
		name string
		code int
	}{{syscall.SIGTERM, "TERM", 3}, {syscall.SIGINT, "INT", 4}, {syscall.SIGHUP, "HUP", 5}} {
		t.Run(tc.name, func(t *testing.T) {
			key := "svc/drain-" + tc.name
			const delay = 700 * time.Millisecond
			p := start(t, nil, "run", "--endpoints", cli.Endpoints()[0], "--key", key, "--ttl", "3s",
				"--drain-delay", delay.String(), "--", "sh", "-c", trapping)
			p.waitLine(`registered\s+key=`, 20*time.Second)
			require.True(t, hasKey(t, cli, key))
			sent := time.Now()
			require.NoError(t, p.cmd.Process.Signal(tc.sig))
			gone := waitGone(t, cli, key, time.Second)
			assert.Less(t, gone.Sub(sent), 100*time.Millisecond, "key deregistered at once")
			p.waitLine(`got `+tc.name, 10*time.Second)
			assert.GreaterOrEqual(t, time.Since(sent), delay, "the child is signalled after the drain delay")
			assert.Equal(t, tc.code, p.wait(10*time.Second), "the child's exit code; output:\n%s", p.output())
			assert.Contains(t, p.output(), "deregistered and revoked")
		})
	}
}

// TestSecondSignalSkipsTheDrain: a drain delay of an hour ends at the
// second signal, which reaches the child.
func TestSecondSignalSkipsTheDrain(t *testing.T) {
	_, cli := etcdServer(t)
	p := start(t, nil, "run", "--endpoints", cli.Endpoints()[0], "--key", "svc/skip", "--ttl", "3s",
		"--drain-delay", "1h", "--", "sh", "-c", trapping)
	p.waitLine(`registered\s+key=`, 20*time.Second)
	require.NoError(t, p.cmd.Process.Signal(syscall.SIGTERM))
	waitGone(t, cli, "svc/skip", time.Second)
	p.waitLine(`draining`, 5*time.Second)
	require.NoError(t, p.cmd.Process.Signal(syscall.SIGINT))
	p.waitLine(`got INT`, 5*time.Second)
	assert.Equal(t, 4, p.wait(10*time.Second))
}

// TestKillTimeout: a child that ignores SIGTERM is killed after the kill
// timeout, and the lease is still revoked.
func TestKillTimeout(t *testing.T) {
	_, cli := etcdServer(t)
	p := start(t, nil, "run", "--endpoints", cli.Endpoints()[0], "--key", "svc/stubborn", "--ttl", "3s",
		"--drain-delay", "0s", "--kill-timeout", "300ms", "--", "sh", "-c", `trap '' TERM; echo child up; while :; do sleep 0.02; done`)
	lease, err := strconv.ParseInt(p.waitLine(`registered\s+key=\S+\s+lease=(\S+)`, 20*time.Second)[1], 16, 64)
	require.NoError(t, err)
	require.NoError(t, p.cmd.Process.Signal(syscall.SIGTERM))
	assert.Equal(t, 128+int(syscall.SIGKILL), p.wait(10*time.Second), "output:\n%s", p.output())
	assert.Contains(t, p.output(), "sending SIGKILL")
	ttl, err := cli.TimeToLive(context.Background(), clientv3.LeaseID(lease))
	require.NoError(t, err)
	assert.Equal(t, int64(-1), ttl.TTL, "the lease is revoked")
}

// TestChildDiesWithTheSidecar: a sidecar killed outright (SIGKILL: no
// drain is possible) takes its child with it.
func TestChildDiesWithTheSidecar(t *testing.T) {
	p := start(t, nil, "run", "--endpoints", "http://127.0.0.1:1", "--key", "svc/orphan", "--ttl", "2s",
		"--", "sh", "-c", `echo pid=$$; while :; do sleep 0.02; done`)
	pid, err := strconv.Atoi(p.waitLine(`pid=(\d+)$`, 10*time.Second)[1])
	require.NoError(t, err)
	require.NoError(t, p.cmd.Process.Kill())
	p.wait(10 * time.Second)
	assert.Eventually(t, func() bool { return syscall.Kill(pid, 0) != nil }, 5*time.Second, 10*time.Millisecond,
		"child %d still running after the sidecar was killed", pid)
}

// TestChildStartsWhileEtcdIsAway: the child starts at once, not after a
// TTL, when etcd does not answer; registration follows later.
func TestChildStartsWhileEtcdIsAway(t *testing.T) {
	began := time.Now()
	p := start(t, nil, "run", "--endpoints", "http://127.0.0.1:1", "--key", "svc/away", "--ttl", "10s",
		"--drain-delay", "0s", "--", "sh", "-c", trapping)
	p.waitLine(`child up`, 10*time.Second)
	assert.Less(t, time.Since(began), 5*time.Second, "the child waited for etcd")
	require.NoError(t, p.cmd.Process.Signal(syscall.SIGTERM))
	assert.Equal(t, 3, p.wait(10*time.Second))
}

// TestServiceInNamingFormat: -service, -addr and -metadata register the
// instance where etcd's resolver looks, in its format.
func TestServiceInNamingFormat(t *testing.T) {
	_, cli := etcdServer(t)
	p := start(t, nil, "run", "--endpoints", cli.Endpoints()[0], "--service", "my-service", "--addr", "127.0.0.1:7000",
		"--metadata", `{"zone":"a"}`, "--ttl", "3s", "--drain-delay", "0s")
	p.waitLine(`registered\s+key=my-service/127.0.0.1:7000`, 20*time.Second)
	em, err := endpoints.NewManager(cli, "my-service")
	require.NoError(t, err)
	eps, err := em.List(context.Background())
	require.NoError(t, err)
	require.Contains(t, eps, "my-service/127.0.0.1:7000")
	ep := eps["my-service/127.0.0.1:7000"]
	assert.Equal(t, "127.0.0.1:7000", ep.Addr)
	assert.Equal(t, map[string]any{"zone": "a"}, ep.Metadata)
	require.NoError(t, p.cmd.Process.Signal(syscall.SIGTERM))
	assert.Equal(t, 0, p.wait(10*time.Second))
	assert.False(t, hasKey(t, cli, "my-service/127.0.0.1:7000"))
}

// TestReadyTCP: with -ready-tcp the key is registered only while the
// child's port answers: not before, not after it stops answering, and
// again once it answers again.
func TestReadyTCP(t *testing.T) {
	_, cli := etcdServer(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	require.NoError(t, ln.Close())
	p := start(t, nil, "run", "--endpoints", cli.Endpoints()[0], "--key", "svc/ready-tcp", "--ttl", "3s",
		"--ready-tcp", addr, "--ready-interval", "50ms", "--health-addr", "127.0.0.1:0", "--drain-delay", "0s")
	health := p.waitLine(`health endpoints\s+addr=(\S+)`, 20*time.Second)[1]
	time.Sleep(300 * time.Millisecond) // six checks that fail
	assert.False(t, hasKey(t, cli, "svc/ready-tcp"), "registered before the child answered")
	code, h := readyz(t, health)
	assert.Equal(t, http.StatusServiceUnavailable, code)
	assert.Equal(t, false, h["registered"])

	ln, err = net.Listen("tcp", addr)
	require.NoError(t, err)
	p.waitLine(`registered\s+key=svc/ready-tcp`, 20*time.Second)
	assert.True(t, hasKey(t, cli, "svc/ready-tcp"))
	code, h = readyz(t, health)
	assert.Equal(t, http.StatusOK, code, "%v", h)

	require.NoError(t, ln.Close())
	p.waitLine(`child not ready; deregistered`, 10*time.Second)
	assert.False(t, hasKey(t, cli, "svc/ready-tcp"))
	code, _ = readyz(t, health)
	assert.Equal(t, http.StatusServiceUnavailable, code)

	ln, err = net.Listen("tcp", addr)
	require.NoError(t, err)
	defer func() { _ = ln.Close() }()
	p.waitLine(`child ready again; registered`, 10*time.Second)
	assert.True(t, hasKey(t, cli, "svc/ready-tcp"))
	require.NoError(t, p.cmd.Process.Signal(syscall.SIGTERM))
	assert.Equal(t, 0, p.wait(10*time.Second))
}

// TestHelpListsCommands: -h at the top names every command.
func TestHelpListsCommands(t *testing.T) {
	p := start(t, nil, "-h")
	assert.Equal(t, 0, p.wait(10*time.Second))
	for _, want := range []string{"leasekeeper demo", "leasekeeper run", "--service", "-drain-delay"} {
		assert.Contains(t, p.stderr.String(), want)
	}
}
