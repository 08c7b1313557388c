package integration

import (
	"bufio"
	"context"
	"encoding/json"
	"net/http"
	"os/exec"
	"regexp"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"

	"github.com/leasekeeper/leasekeeper/internal/test/testbed"
	"github.com/leasekeeper/leasekeeper/statemachine"
)

// TestFaultsKeeperProcessFrozen freezes the keeper's own process (the
// command, as a child) longer than the TTL. After the thaw its /readyz
// must not answer 200 until a renewal succeeded: the old lease is gone on
// the server, so every 200 must name a new lease.
func TestFaultsKeeperProcessFrozen(t *testing.T) {
	const ttl = ttl1
	c, err := testbed.StartCluster(etcdBin, t.TempDir(), 1)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	obs, err := c.Client(c.DirectEndpoints())
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = obs.Close() }()
	key := "lk/frozen/a"
	wctx, stopWatch := context.WithCancel(context.Background())
	defer stopWatch()
	var mu sync.Mutex
	var deletedAt time.Time
	wch := obs.Watch(wctx, key)
	watchDone := make(chan struct{})
	go func() {
		defer close(watchDone)
		for wr := range wch {
			for _, ev := range wr.Events {
				if ev.Type == mvccpb.DELETE {
					mu.Lock()
					deletedAt = time.Now()
					mu.Unlock()
				}
			}
		}
	}()
	defer func() { stopWatch(); <-watchDone }()

	cmd := exec.Command(leasekeeperBin, "run", "--endpoints", c.Endpoints()[0], "--key", key,
		"--ttl", ttl.String(), "--health-addr", "127.0.0.1:0")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	lines := make(chan string, 100)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	var out []string
	next := func(re string) []string {
		t.Helper()
		rx := regexp.MustCompile(re)
		timeout := time.After(20 * time.Second)
		for {
			select {
			case l, ok := <-lines:
				if !ok {
					t.Fatalf("command exited; output: %q", out)
				}
				out = append(out, l)
				if m := rx.FindStringSubmatch(l); m != nil {
					return m
				}
			case <-timeout:
				t.Fatalf("no line matching %q; output: %q", re, out)
			}
		}
	}
	addr := next(`health endpoints\s+addr=(\S+)`)[1]
	old := next(`registered\s+key=\S+\s+lease=(\S+)`)[1]

	_ = cmd.Process.Signal(syscall.SIGSTOP)
	<-time.After(2 * ttl)
	mu.Lock()
	deleted := !deletedAt.IsZero()
	mu.Unlock()
	if !deleted {
		t.Fatalf("the server kept the key through a %v freeze with ttl %v", 2*ttl, ttl)
	}
	_ = cmd.Process.Signal(syscall.SIGCONT)
	faultEnd := time.Now()

	// Poll /readyz as fast as it answers until it says 200.
	client := http.Client{Timeout: 2 * time.Second}
	var polls, stale int
	var healedAt time.Time
	for time.Since(faultEnd) < 20*time.Second {
		resp, err := client.Get("http://" + addr + "/readyz")
		if err != nil {
			t.Fatal(err)
		}
		var h struct {
			State   string `json:"state"`
			LeaseID string `json:"lease_id"`
		}
		_ = json.NewDecoder(resp.Body).Decode(&h)
		_ = resp.Body.Close()
		polls++
		if resp.StatusCode == http.StatusOK {
			if h.LeaseID == old {
				stale++
			}
			healedAt = time.Now()
			break
		}
	}
	if stale > 0 {
		t.Errorf("/readyz answered 200 with the expired lease %s after the thaw", old)
	}
	if healedAt.IsZero() {
		t.Fatalf("/readyz never answered 200 in 20s after the thaw")
	}
	m := next(`(failed|degraded) -> healthy`)
	_ = cmd.Process.Signal(syscall.SIGTERM)
	if err := cmd.Wait(); err != nil {
		t.Errorf("exit after SIGTERM: %v", err)
	}
	path := []statemachine.State{statemachine.Idle, statemachine.Healthy}
	for _, l := range out {
		if tr := regexp.MustCompile(`(\w+) -> (\w+)`).FindStringSubmatch(l); tr != nil && tr[1] != "idle" {
			path = append(path, stateNamed(tr[2]))
		}
	}
	if m[1] != "failed" {
		t.Errorf("healed from %s, want from failed: the keeper must know the lease is gone", m[1])
	}
	record(result{scenario: "keeper process frozen 2×TTL", ttl: ttl, path: path, toDegraded: -1, toFailed: -1,
		heal: healedAt.Sub(faultEnd), lease: "new", expiry: "expired while the keeper was frozen", note: "command as a child, SIGSTOP/SIGCONT; /readyz polled " +
			strconv.Itoa(polls) + "× after the thaw, never 200 with the old lease"})
}

func stateNamed(name string) statemachine.State {
	for _, s := range statemachine.States() {
		if s.String() == name {
			return s
		}
	}
	return statemachine.State(-1)
}
