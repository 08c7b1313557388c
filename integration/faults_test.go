package integration

import (
	"context"
	"fmt"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/leasekeeper/leasekeeper/statemachine"
)

const (
	ttl1 = 3 * time.Second // single member
	ttl3 = 5 * time.Second // three members: leader elections take a second or two
)

func TestFaultsSilentPartition(t *testing.T) {
	s := newScenario(t, "silent partition 2×TTL", 1, ttl1)
	p := s.c.Members[0].Proxy
	s.startFault()
	p.Stall()
	s.hold(2 * s.ttl)
	p.Heal()
	s.endFault()
	r := s.finish("proxy stalls every byte")
	wantPath(t, r, statemachine.Healthy, statemachine.Degraded, statemachine.Failed, statemachine.Healthy)
	wantHealed(t, r)
	if !r.deleted {
		t.Errorf("the server kept the keys through a %v partition with ttl %v", 2*s.ttl, s.ttl)
	}
}

func TestFaultsShortPartitions(t *testing.T) {
	s := newScenario(t, "5 partitions of TTL/3.5", 1, ttl1)
	p := s.c.Members[0].Proxy
	for range 5 {
		s.startFault()
		p.Stall()
		s.hold(s.ttl * 2 / 7)
		p.Heal()
		s.endFault()
		s.hold(s.ttl)
	}
	r := s.finish("never failed")
	if s.failedOnItsOwn() {
		t.Errorf("path %s: failed on partitions shorter than a third of the ttl", pathString(r.path))
	}
}

func TestFaultsDelayNearRenewTimeout(t *testing.T) {
	s := newScenario(t, "delay 0.8×renew timeout", 1, ttl1)
	p := s.c.Members[0].Proxy
	// Each direction is delayed, so a round trip takes twice the delay.
	rtt := s.ttl / 10 * 8 / 10
	s.startFault()
	p.Delay(rtt / 2)
	s.hold(4 * s.ttl)
	p.Delay(0)
	s.endFault()
	r := s.finish("round trip " + rtt.String())
	if s.failedOnItsOwn() {
		t.Errorf("path %s: failed with round trips inside the renew timeout", pathString(r.path))
	}
}

func TestFaultsFrozenMember(t *testing.T) {
	s := newScenario(t, "single member frozen 2×TTL", 1, ttl1)
	s.startFault()
	s.c.Freeze(0)
	s.hold(2 * s.ttl)
	s.c.Thaw(0)
	s.endFault()
	r := s.finish("SIGSTOP, SIGCONT")
	wantPath(t, r, statemachine.Healthy, statemachine.Degraded, statemachine.Failed, statemachine.Healthy)
	wantHealed(t, r)
}

func TestFaultsExternalRevoke(t *testing.T) {
	s := newScenario(t, "external revoke", 1, ttl1)
	old := s.k.LeaseID()
	s.startFault()
	if _, err := s.obs.Revoke(context.Background(), old); err != nil {
		t.Fatal(err)
	}
	s.endFault()
	// A revoke deletes the keys at once: no keeper can know first, so the
	// safety check does not apply. Forget the deletion before finishing.
	if !s.waitState(statemachine.Failed, s.faultStart(), 2*s.ttl) {
		t.Fatalf("not failed within 2×ttl of an external revoke")
	}
	s.forgetDeletion()
	r := s.finish("keys re-written on a new lease")
	wantPath(t, r, statemachine.Healthy, statemachine.Failed, statemachine.Healthy)
	if r.lease != "new" {
		t.Errorf("lease after an external revoke: %s, want new", r.lease)
	}
}

func TestFaultsExternalDelete(t *testing.T) {
	s := newScenario(t, "external key delete", 1, ttl1)
	s.startFault()
	del, err := s.obs.Delete(context.Background(), s.keys[0])
	if err != nil {
		t.Fatal(err)
	}
	// The keeper watches its keys: the next write the cluster sees puts
	// the key back on the keeper's lease.
	var restored *mvccpb.KeyValue
	for end := time.Now().Add(2 * time.Second); restored == nil && time.Now().Before(end); time.Sleep(5 * time.Millisecond) {
		resp, err := s.obs.Get(context.Background(), s.keys[0])
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.Kvs) > 0 {
			restored = resp.Kvs[0]
		}
	}
	took := time.Since(s.faultStart())
	if restored == nil || clientv3.LeaseID(restored.Lease) != s.k.LeaseID() {
		t.Fatalf("after an external delete: key %v, want it restored on lease %x", restored, s.k.LeaseID())
	}
	if state := s.k.State(); state != statemachine.Healthy {
		t.Errorf("after an external delete: state %v, want healthy", state)
	}
	s.forgetDeletion()
	s.endFault()
	s.finish(fmt.Sprintf("restored by the watch at revision %d (deleted at %d), within %v",
		restored.ModRevision, del.Header.Revision, took.Round(time.Millisecond)))
}

// wantPath checks that the keeper went through want in order (other
// states may come between, as a cluster settles) and ended in the last.
func wantPath(t *testing.T, r result, want ...statemachine.State) {
	t.Helper()
	got, rest := r.path, want
	for _, st := range got {
		if len(rest) > 0 && st == rest[0] {
			rest = rest[1:]
		}
	}
	if len(rest) > 0 || len(got) == 0 || got[len(got)-1] != want[len(want)-1] {
		t.Errorf("path %s, want %s in order, ending %s", pathString(r.path), pathString(want), want[len(want)-1])
	}
}
