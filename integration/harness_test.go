package integration

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"
	"go.uber.org/zap"
	"google.golang.org/grpc"

	"github.com/leasekeeper/leasekeeper/internal/demo"
	"github.com/leasekeeper/leasekeeper/keeper"
	"github.com/leasekeeper/leasekeeper/statemachine"
)

// scenario is one keeper on a fresh cluster, watched from outside.
type scenario struct {
	t      *testing.T
	name   string
	c      *Cluster    // the process cluster, if any
	docker *dockerTier // the compose cluster, if any
	ttl    time.Duration
	cli    *clientv3.Client // the keeper's, through the proxies
	obs    *clientv3.Client // the observer's, straight to the members
	k      *keeper.Keeper
	keys   []string
	lease  clientv3.LeaseID // granted at the start
	ignore []goleak.Option  // goroutines that are not the scenario's

	faultStart, faultEnd time.Time

	mu        sync.Mutex
	ts        []statemachine.Transition
	more      chan struct{}
	deletedAt time.Time // the first DELETE of a key the observer saw
	// deadlineAt is the keeper's local deadline when that DELETE came. A
	// deletion before it is a revoke, not an expiry: the server cannot have
	// expired a lease the keeper renewed less than a TTL ago.
	deadlineAt time.Time
	stopWatch  context.CancelFunc
	watchDone  chan struct{}
	closeOnce  sync.Once
}

// newScenario starts a cluster of n members and a Healthy keeper with three
// keys on it, and an observer watching the keys straight on the members.
func newScenario(t *testing.T, name string, n int, ttl time.Duration) *scenario {
	t.Helper()
	c, err := StartCluster(etcdBin, t.TempDir(), n)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	s := newScenarioOn(t, name, ttl, c.Endpoints(), c.DirectEndpoints())
	s.c = c
	return s
}

// newScenarioOn starts a Healthy keeper with three keys on the cluster
// behind endpoints, and an observer on observed.
func newScenarioOn(t *testing.T, name string, ttl time.Duration, endpoints, observed []string) *scenario {
	t.Helper()
	s := &scenario{t: t, name: name, ttl: ttl, more: make(chan struct{}), ignore: []goleak.Option{
		goleak.IgnoreCurrent(),
		// Members restarted during the scenario get a new process waiter.
		goleak.IgnoreAnyFunction("github.com/leasekeeper/leasekeeper/integration.(*Member).reap"),
	}}
	var err error
	s.cli, err = clientv3.New(clientv3.Config{
		Endpoints: endpoints, DialTimeout: 5 * time.Second, Logger: zap.NewNop(),
		DialOptions: []grpc.DialOption{demo.FastReconnect},
	})
	if err != nil {
		t.Fatal(err)
	}
	s.obs, err = clientv3.New(clientv3.Config{
		Endpoints: observed, DialTimeout: 5 * time.Second, Logger: zap.NewNop(),
		DialOptions: []grpc.DialOption{demo.FastReconnect},
	})
	if err != nil {
		t.Fatal(err)
	}
	prefix := "lk/" + name + "/"
	s.keys = []string{prefix + "a", prefix + "b", prefix + "c"}
	cfg := keeper.DefaultConfig()
	cfg.TTL = ttl
	cfg.Callbacks.OnTransition = s.record
	if s.k, err = keeper.New(s.cli, cfg); err != nil {
		t.Fatal(err)
	}
	// The watcher reads s.k: start it once s.k is set, before any key is
	// written.
	wctx, cancel := context.WithCancel(context.Background())
	s.stopWatch, s.watchDone = cancel, make(chan struct{})
	wch := s.obs.Watch(wctx, prefix, clientv3.WithPrefix(), clientv3.WithCreatedNotify())
	<-wch
	go s.watch(wch)
	ctx, cancelStart := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancelStart()
	for _, key := range s.keys {
		if err := s.k.Register(ctx, key, "v"); err != nil {
			t.Fatal(err)
		}
	}
	// Close everything even when the test stops early, before the cluster
	// goes (cleanups run last in, first out).
	t.Cleanup(s.close)
	if err := s.k.Start(ctx); err != nil {
		t.Fatalf("Start() = %v", err)
	}
	s.lease = s.k.LeaseID()
	return s
}

// close closes the keeper, the watcher and the clients; it is idempotent.
func (s *scenario) close() {
	s.closeOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := s.k.Close(ctx); err != nil {
			s.t.Errorf("Close() = %v", err)
		}
		s.stopWatch()
		<-s.watchDone
		_ = s.cli.Close()
		_ = s.obs.Close()
	})
}

func (s *scenario) watch(wch clientv3.WatchChan) {
	defer close(s.watchDone)
	for wr := range wch {
		for _, ev := range wr.Events {
			if ev.Type == mvccpb.DELETE {
				now := time.Now()
				d := s.k.Deadline()
				s.mu.Lock()
				if s.deletedAt.IsZero() {
					s.deletedAt, s.deadlineAt = now, d
				}
				s.mu.Unlock()
			}
		}
	}
}

func (s *scenario) record(t statemachine.Transition) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ts = append(s.ts, t)
	close(s.more)
	s.more = make(chan struct{})
}

// startFault and endFault mark the fault's span for the timings.
func (s *scenario) startFault() { s.faultStart = time.Now() }
func (s *scenario) endFault()   { s.faultEnd = time.Now() }

// hold waits d, the length of a fault.
func (s *scenario) hold(d time.Duration) {
	<-time.After(d)
}

// firstAt returns when the keeper first entered st at or after since.
func (s *scenario) firstAt(st statemachine.State, since time.Time) (time.Time, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, t := range s.ts {
		if t.To == st && !t.At.Before(since) {
			return t.At, true
		}
	}
	return time.Time{}, false
}

// waitState waits until the keeper entered st at or after since.
func (s *scenario) waitState(st statemachine.State, since time.Time, timeout time.Duration) bool {
	deadline := time.After(timeout)
	for {
		if _, ok := s.firstAt(st, since); ok {
			return true
		}
		s.mu.Lock()
		more := s.more
		s.mu.Unlock()
		select {
		case <-more:
		case <-deadline:
			return false
		}
	}
}

func (s *scenario) path() []statemachine.State {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.ts) == 0 {
		return nil
	}
	p := []statemachine.State{s.ts[0].From}
	for _, t := range s.ts {
		p = append(p, t.To)
	}
	return p
}

func (s *scenario) reached(st statemachine.State) bool {
	return slices.Contains(s.path()[1:], st)
}

// finish waits for the keeper to heal, checks the registration and the
// safety of every expiry, closes everything, checks for leaked goroutines
// and records the row.
func (s *scenario) finish(note string) result {
	t := s.t
	t.Helper()
	if s.faultEnd.IsZero() {
		s.endFault()
	}
	r := result{scenario: s.name, ttl: s.ttl, toDegraded: -1, toFailed: -1, heal: -1, note: note}
	s.mu.Lock()
	deletedAt, deadlineAt := s.deletedAt, s.deadlineAt
	s.mu.Unlock()
	revoked := !deletedAt.IsZero() && deletedAt.Before(deadlineAt)
	if revoked {
		// The server dropped a lease the keeper holds: it learns so on its
		// next renewal, fails, and registers again.
		if !s.waitState(statemachine.Failed, deletedAt, 2*s.ttl) || !s.waitState(statemachine.Healthy, deletedAt, 30*time.Second) {
			t.Errorf("%s: the server revoked the lease at +%v and the keeper did not re-register: %v",
				s.name, deletedAt.Sub(s.faultStart), s.path())
		}
	}
	if s.k.State() == statemachine.Healthy || s.waitState(statemachine.Healthy, s.faultEnd, 30*time.Second) {
		r.heal = 0 // healthy when the fault ended
		if at, ok := s.firstAt(statemachine.Healthy, s.faultEnd); ok {
			r.heal = at.Sub(s.faultEnd)
		}
		s.checkKeys()
		r.lease = "new"
		if s.k.LeaseID() == s.lease {
			r.lease = "same"
		}
	} else {
		t.Errorf("%s: not healthy 30s after the fault ended: %v", s.name, s.k.State())
	}
	if at, ok := s.firstAt(statemachine.Degraded, s.faultStart); ok {
		r.toDegraded = at.Sub(s.faultStart)
	}
	failedAt, failed := s.firstAt(statemachine.Failed, s.faultStart)
	if failed {
		r.toFailed = failedAt.Sub(s.faultStart)
	}
	switch {
	case revoked:
		r.expiry = fmt.Sprintf("revoked by the server %v before the keeper's deadline", deadlineAt.Sub(deletedAt).Round(10*time.Millisecond))
	case !deletedAt.IsZero():
		r.deleted = true
		r.margin = deletedAt.Sub(failedAt)
		if !failed || !failedAt.Before(deletedAt) {
			t.Errorf("%s: the server deleted the keys at +%v, before the keeper reported failed (%v)",
				s.name, deletedAt.Sub(s.faultStart), r.toFailed)
		}
	}
	r.path = s.path()

	s.close()
	goleak.VerifyNone(t, s.ignore...)
	record(r)
	t.Logf("%s: path %s, degraded %s, failed %s, heal %s", s.name, pathString(r.path), dur(r.toDegraded), dur(r.toFailed), dur(r.heal))
	return r
}

// checkKeys asserts every key is on the server with the keeper's lease.
func (s *scenario) checkKeys() {
	s.t.Helper()
	id := s.k.LeaseID()
	for _, key := range s.keys {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		resp, err := s.obs.Get(ctx, key)
		cancel()
		if err != nil {
			s.t.Errorf("get %s: %v", key, err)
			continue
		}
		if len(resp.Kvs) != 1 || clientv3.LeaseID(resp.Kvs[0].Lease) != id {
			s.t.Errorf("%s: %v, want present with the keeper's lease %x", key, resp.Kvs, int64(id))
		}
	}
}
