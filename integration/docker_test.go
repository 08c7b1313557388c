package integration

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/leasekeeper/leasekeeper/internal/test/freeport"
	"github.com/leasekeeper/leasekeeper/internal/test/testbed"
	"github.com/leasekeeper/leasekeeper/statemachine"
)

// DockerSwitch is the environment variable that turns the Docker tier on.
const DockerSwitch = "LEASEKEEPER_DOCKER"

const (
	sidecarKey = "services/demo/sidecar"
	ttlDocker  = 5 * time.Second
)

// dockerTier is the compose cluster the Docker tests share.
type dockerTier struct {
	c         *testbed.Compose
	endpoints []string // etcd1..3 on the host
	health    string   // the sidecar's health address on the host
}

// dockerPreflight skips the test, with the reason, unless the Docker tier
// is on and its images are built.
func dockerPreflight(t *testing.T) {
	t.Helper()
	if os.Getenv(DockerSwitch) != "1" {
		t.Skipf("Docker tier off: set %s=1 after docker/build.sh to run it", DockerSwitch)
	}
	if err := testbed.DockerAvailable(); err != nil {
		t.Skipf("Docker tier skipped: no Docker engine answers: %v", err)
	}
	for _, img := range testbed.Images {
		if _, err := testbed.Docker("image", "inspect", img); err != nil {
			t.Fatalf("image %s missing: run docker/build.sh first", img)
		}
	}
}

// startDocker brings the compose cluster up for the test, or skips it with
// the reason.
func startDocker(t *testing.T) *dockerTier {
	t.Helper()
	dockerPreflight(t)
	ports, err := freeport.Get(4)
	if err != nil {
		t.Fatal(err)
	}
	env := []string{
		fmt.Sprintf("LK_ETCD1_PORT=%d", ports[0]), fmt.Sprintf("LK_ETCD2_PORT=%d", ports[1]),
		fmt.Sprintf("LK_ETCD3_PORT=%d", ports[2]), fmt.Sprintf("LK_HEALTH_PORT=%d", ports[3]),
		"LK_SIDECAR_TTL=" + ttlDocker.String(), "LK_SIDECAR_LOG_FORMAT=json",
	}
	c, err := testbed.NewCompose(moduleRoot, fmt.Sprintf("lkit%d", os.Getpid()), env)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Down(); err != nil {
			t.Errorf("compose down: %v", err)
		}
	})
	if err := c.Up(); err != nil {
		t.Fatal(err)
	}
	d := &dockerTier{c: c, health: fmt.Sprintf("127.0.0.1:%d", ports[3])}
	for _, p := range ports[:3] {
		d.endpoints = append(d.endpoints, fmt.Sprintf("http://127.0.0.1:%d", p))
	}
	d.waitReady(t)
	return d
}

// waitReady waits until every member serves a linearizable read and the
// sidecar is ready.
func (d *dockerTier) waitReady(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	if err := testbed.WaitServing(d.endpoints, deadline); err != nil {
		t.Fatal(err)
	}
	for d.readyz(t) != http.StatusOK {
		if time.Now().After(deadline) {
			t.Fatalf("sidecar not ready")
		}
		<-time.After(200 * time.Millisecond)
	}
}

func (d *dockerTier) readyz(t *testing.T) int {
	t.Helper()
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get("http://" + d.health + "/readyz")
	if err != nil {
		return 0
	}
	_ = resp.Body.Close()
	return resp.StatusCode
}

// leader returns the service name of the leader, and of a follower.
func (d *dockerTier) leader(t *testing.T, cli *clientv3.Client) (leader, follower string) {
	t.Helper()
	for i, ep := range d.endpoints {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		st, err := cli.Status(ctx, strings.TrimPrefix(ep, "http://"))
		cancel()
		if err != nil {
			continue
		}
		name := fmt.Sprintf("etcd%d", i+1)
		if st.Leader == st.Header.MemberId {
			leader = name
		} else if follower == "" {
			follower = name
		}
	}
	if leader == "" || follower == "" {
		t.Fatalf("no leader or follower found: %q, %q", leader, follower)
	}
	return leader, follower
}

func TestDocker(t *testing.T) {
	d := startDocker(t)
	// Each fault runs against a fresh keeper in this process, talking to the
	// members on their published ports.
	faults := []struct {
		name   string
		target func(s *scenario) string // the service to act on
		act    []string                 // compose subcommand that starts the fault
		undo   []string                 // and ends it
	}{
		{"docker: follower stopped 2×TTL", follower, []string{"stop", "-t", "0"}, []string{"start"}},
		{"docker: leader stopped 2×TTL", leaderOf, []string{"stop", "-t", "0"}, []string{"start"}},
		{"docker: follower paused 2×TTL", follower, []string{"pause"}, []string{"unpause"}},
		{"docker: leader paused 2×TTL", leaderOf, []string{"pause"}, []string{"unpause"}},
	}
	for _, f := range faults {
		t.Run(f.name, func(t *testing.T) {
			s := newScenarioOn(t, f.name, ttlDocker, d.endpoints, d.endpoints)
			s.docker = d
			svc := f.target(s)
			s.startFault()
			if _, err := d.c.Run(append(f.act, svc)...); err != nil {
				t.Fatal(err)
			}
			s.hold(2 * s.ttl)
			if _, err := d.c.Run(append(f.undo, svc)...); err != nil {
				t.Fatal(err)
			}
			s.endFault()
			r := s.finish(svc + ": " + strings.Join(f.act, " "))
			if s.failedOnItsOwn() {
				t.Errorf("path %s: failed although two of three members stayed up", pathString(r.path))
			}
		})
	}
	t.Run("docker: sidecar disconnected 2×TTL", func(t *testing.T) { dockerSidecarDisconnected(t, d) })
	t.Run("docker: whole cluster restart", func(t *testing.T) {
		s := newScenarioOn(t, "docker: whole cluster stopped 2×TTL", ttlDocker, d.endpoints, d.endpoints)
		s.startFault()
		if _, err := d.c.Run("stop", "-t", "0", "etcd1", "etcd2", "etcd3"); err != nil {
			t.Fatal(err)
		}
		s.hold(2 * s.ttl)
		if _, err := d.c.Run("start", "etcd1", "etcd2", "etcd3"); err != nil {
			t.Fatal(err)
		}
		s.endFault()
		r := s.finish("compose stop, start")
		wantPath(t, r, statemachine.Healthy, statemachine.Degraded, statemachine.Failed, statemachine.Healthy)
		if r.lease != "same" {
			t.Errorf("lease after the restart: %s, want the same lease resumed", r.lease)
		}
		// The sidecar came back too, on its own.
		deadline := time.Now().Add(30 * time.Second)
		for d.readyz(t) != http.StatusOK {
			if time.Now().After(deadline) {
				logs, _ := d.c.Run("logs", "--tail", "40", "sidecar")
				t.Fatalf("sidecar /readyz not 200 30s after the cluster restart; its log ends:\n%s", logs)
			}
			<-time.After(200 * time.Millisecond)
		}
	})
}

func follower(s *scenario) string {
	_, f := s.docker.leader(s.t, s.obs)
	return f
}

func leaderOf(s *scenario) string {
	l, _ := s.docker.leader(s.t, s.obs)
	return l
}

// dockerSidecarDisconnected cuts the sidecar's container off the network
// for 2×TTL: its lease expires on the server, and its own logs must show it
// failed before the observer saw the key deleted.
func dockerSidecarDisconnected(t *testing.T, d *dockerTier) {
	ctx := context.Background()
	obs, err := clientv3.New(clientv3.Config{Endpoints: d.endpoints, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = obs.Close() }()
	// The sidecar may still be re-registering after the previous fault.
	var resp *clientv3.GetResponse
	for deadline := time.Now().Add(3 * ttlDocker); ; {
		resp, err = obs.Get(ctx, sidecarKey)
		if err == nil && len(resp.Kvs) == 1 && d.readyz(t) == http.StatusOK {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("sidecar not registered before the fault: %v, %v", resp, err)
		}
		<-time.After(100 * time.Millisecond)
	}
	oldLease := resp.Kvs[0].Lease
	wctx, stop := context.WithCancel(ctx)
	defer stop()
	deleted := make(chan time.Time, 1)
	wch := obs.Watch(wctx, sidecarKey, clientv3.WithRev(resp.Header.Revision+1))
	go func() {
		for wr := range wch {
			for _, ev := range wr.Events {
				if ev.Type == mvccpb.DELETE {
					select {
					case deleted <- time.Now():
					default:
					}
				}
			}
		}
	}()
	id, err := d.c.Container("sidecar")
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if _, err := testbed.Docker("network", "disconnect", d.c.Network(), id); err != nil {
		t.Fatal(err)
	}
	<-time.After(2 * ttlDocker)
	readyDuring := d.readyz(t)
	// The fault ends as the reconnect begins: the sidecar may heal before
	// docker's command returns.
	end := time.Now()
	if _, err := testbed.Docker("network", "connect", "--alias", "sidecar", d.c.Network(), id); err != nil {
		t.Fatal(err)
	}
	var deletedAt time.Time
	select {
	case deletedAt = <-deleted:
	case <-time.After(5 * time.Second):
		t.Fatalf("the server did not delete the sidecar's key during a %v disconnect", 2*ttlDocker)
	}
	healed := time.Time{}
	for time.Since(end) < 30*time.Second {
		if d.readyz(t) == http.StatusOK {
			healed = time.Now()
			break
		}
		<-time.After(50 * time.Millisecond)
	}
	if readyDuring == http.StatusOK {
		t.Errorf("/readyz answered 200 while the sidecar was cut off for 2×TTL")
	}
	if healed.IsZero() {
		t.Fatalf("sidecar /readyz not 200 30s after reconnecting")
	}
	resp, err = obs.Get(ctx, sidecarKey)
	if err != nil || len(resp.Kvs) != 1 || resp.Kvs[0].Lease == oldLease {
		t.Errorf("sidecar key after the heal: %v, %v; want re-written on a new lease", resp, err)
	}
	ts, failedAt, degradedAt := sidecarTransitions(t, id, start)
	if failedAt.IsZero() || !failedAt.Before(deletedAt) {
		t.Errorf("sidecar failed at %v, server deleted its key at %v: want failed first", failedAt, deletedAt)
	}
	r := result{scenario: "docker: sidecar container disconnected 2×TTL", ttl: ttlDocker, path: pathOf(ts),
		toDegraded: since(degradedAt, start), toFailed: since(failedAt, start), deleted: true,
		margin: deletedAt.Sub(failedAt), heal: healed.Sub(end), lease: "new", flaps: returns(ts, start, end),
		note: "docker network disconnect; times from the sidecar's own log, from the fault on"}
	if r.flaps > 0 {
		t.Errorf("sidecar: %d flaps while cut off: %s", r.flaps, pathString(r.path))
	}
	record(r)
}

func since(at, start time.Time) time.Duration {
	if at.IsZero() {
		return -1
	}
	return at.Sub(start)
}

// sidecarTransitions reads the sidecar's JSON log and returns its
// transitions from start on (it has lived through the tier's earlier
// faults), their path, and when it became degraded and failed.
func sidecarTransitions(t *testing.T, id string, start time.Time) (ts []statemachine.Transition, failedAt, degradedAt time.Time) {
	t.Helper()
	out, err := exec.Command("docker", "logs", id).Output()
	if err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	for sc.Scan() {
		var l struct {
			TS       float64 `json:"ts"`
			From, To string
		}
		if json.Unmarshal(sc.Bytes(), &l) != nil || l.To == "" {
			continue
		}
		at := time.Unix(0, int64(l.TS*float64(time.Second)))
		if at.Before(start) {
			continue
		}
		ts = append(ts, statemachine.Transition{From: stateNamed(l.From), To: stateNamed(l.To), At: at})
		switch {
		case l.To == "failed" && failedAt.IsZero():
			failedAt = at
		case l.To == "degraded" && degradedAt.IsZero():
			degradedAt = at
		}
	}
	return ts, failedAt, degradedAt
}

// returns counts the returns, within [start, end], to a state the keeper
// had left within it.
func returns(ts []statemachine.Transition, start, end time.Time) int {
	n := 0
	left := map[statemachine.State]bool{}
	for _, t := range ts {
		if t.At.Before(start) || t.At.After(end) {
			continue
		}
		if left[t.To] {
			n++
		}
		left[t.From] = true
	}
	return n
}
