package integration

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/leasekeeper/leasekeeper/internal/test/testbed"
	"github.com/leasekeeper/leasekeeper/statemachine"
)

func TestFaultsLeaderKilled(t *testing.T) {
	s := newScenario(t, "leader killed (3 members)", 3, ttl3)
	lead, err := s.c.Leader(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	s.startFault()
	s.c.Kill(lead)
	s.hold(2 * s.ttl)
	if err := s.c.Restart(lead); err != nil {
		t.Fatal(err)
	}
	s.endFault()
	r := s.finish("SIGKILL; restarted after 2×TTL")
	if s.failedOnItsOwn() {
		t.Errorf("path %s: failed although two of three members stayed up", pathString(r.path))
	}
}

// TestFaultsStreamMemberStalled stalls the member that carries etcd's own
// KeepAlive stream, for both that client and the keeper, while the other
// two members stay healthy.
func TestFaultsStreamMemberStalled(t *testing.T) {
	s := newScenario(t, "member of the stream stalled 3×TTL (3 members)", 3, ttl3)
	ctx := context.Background()

	// etcd's own KeepAlive, through proxies of its own.
	var raw []*testbed.Proxy
	var rawEps []string
	for _, m := range s.c.Members {
		p, err := testbed.NewProxy(m.Proxy.Target())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(p.Close)
		raw, rawEps = append(raw, p), append(rawEps, p.URL())
	}
	rawCli, err := clientv3.New(clientv3.Config{Endpoints: rawEps, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = rawCli.Close() })
	g, err := rawCli.Grant(ctx, int64(s.ttl/time.Second))
	if err != nil {
		t.Fatal(err)
	}
	kctx, stopKA := context.WithCancel(ctx)
	t.Cleanup(stopKA)
	ch, err := rawCli.KeepAlive(kctx, g.ID)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for range ch {
		}
	}()
	t.Cleanup(func() {
		stopKA()
		wg.Wait()
	})

	// The member whose proxy carries the most traffic now carries the
	// stream: a keepalive every TTL/3, against a stray ping elsewhere.
	s.hold(time.Second)
	before := make([]int64, len(raw))
	for i, p := range raw {
		before[i] = p.Bytes()
	}
	s.hold(s.ttl)
	stream, most, second := -1, int64(0), int64(0)
	for i, p := range raw {
		switch d := p.Bytes() - before[i]; {
		case d > most:
			stream, most, second = i, d, most
		case d > second:
			second = d
		}
	}
	if stream < 0 || most < 2*second {
		t.Fatalf("keepalive traffic %d bytes on the busiest member, %d on the next: cannot tell the stream's member", most, second)
	}

	s.startFault()
	s.c.Members[stream].Proxy.Stall()
	raw[stream].Stall()
	s.hold(3 * s.ttl)
	ttlResp, err := s.obs.TimeToLive(ctx, g.ID)
	if err != nil {
		t.Fatal(err)
	}
	rawLost := ttlResp.TTL <= 0
	s.c.Members[stream].Proxy.Heal()
	raw[stream].Heal()
	s.endFault()
	// Stop etcd's own client first: finish checks for leaked goroutines.
	stopKA()
	wg.Wait()
	_ = rawCli.Close()
	for _, p := range raw {
		p.Close()
	}
	note := fmt.Sprintf("etcd KeepAlive on the same cluster: lease %s", map[bool]string{true: "LOST", false: "kept"}[rawLost])
	r := s.finish(note)
	if s.failedOnItsOwn() {
		t.Errorf("path %s: failed although two of three members stayed up", pathString(r.path))
	}
	if !rawLost {
		t.Errorf("etcd's KeepAlive kept its lease through a stall of its stream's member: the scenario shows nothing")
	}
}

func TestFaultsQuorumLost(t *testing.T) {
	s := newScenario(t, "quorum lost 2×TTL (3 members)", 3, ttl3)
	s.startFault()
	s.c.Kill(1)
	s.c.Kill(2)
	s.hold(2 * s.ttl)
	for _, i := range []int{1, 2} {
		if err := s.c.Restart(i); err != nil {
			t.Fatal(err)
		}
	}
	s.endFault()
	r := s.finish("2 of 3 SIGKILLed, restarted after 2×TTL")
	wantPath(t, r, statemachine.Healthy, statemachine.Degraded, statemachine.Failed, statemachine.Healthy)
	wantHealed(t, r)
}

func TestFaultsWholeClusterRestart(t *testing.T) {
	s := newScenario(t, "whole cluster restart (3 members)", 3, ttl3)
	s.startFault()
	for i := range s.c.Members {
		s.c.Kill(i)
	}
	s.hold(2 * s.ttl)
	for i := range s.c.Members {
		if err := s.c.Restart(i); err != nil {
			t.Fatal(err)
		}
	}
	s.endFault()
	r := s.finish("all SIGKILLed for 2×TTL")
	wantPath(t, r, statemachine.Healthy, statemachine.Degraded, statemachine.Failed, statemachine.Healthy)
	wantHealed(t, r)
	if r.lease != "same" {
		t.Errorf("lease after the restart: %s, want the same lease resumed", r.lease)
	}
}
