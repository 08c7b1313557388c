package integration

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
	"google.golang.org/grpc"

	lkerrors "github.com/leasekeeper/leasekeeper/errors"
	"github.com/leasekeeper/leasekeeper/internal/test/testbed"
	"github.com/leasekeeper/leasekeeper/keeper"
	"github.com/leasekeeper/leasekeeper/statemachine"
)

// scenario is a fault against a fresh cluster and two keepers on it, each
// with three keys and a client of its own: one built with default options
// (clientv3.New with the endpoints alone), one with a short reconnect
// backoff. An observer watches the keys straight on the members, and a
// prober tells when etcd answers.
type scenario struct {
	t      *testing.T
	name   string
	c      *testbed.Cluster // the process cluster, if any
	docker *dockerTier      // the compose cluster, if any
	ttl    time.Duration
	obs    *clientv3.Client // the observer's, straight to the members
	probe  *prober
	ignore []goleak.Option // goroutines that are not the scenario's

	*subject          // the keeper on the client with a short reconnect backoff
	plain    *subject // the keeper on a client built with default options

	faults []span // the fault's spans, in order
	// flapsAllowed records flaps in the row without failing the test: for
	// the grpc-proxy tier's episodes, a target not met yet.
	flapsAllowed bool
	stopWatch    context.CancelFunc
	watchDone    chan struct{}
	closeOnce    sync.Once
}

// span is one stretch of time a fault lasted.
type span struct{ start, end time.Time }

// subject is one keeper under test, its client and what it reported.
type subject struct {
	cli   *clientv3.Client
	k     *keeper.Keeper
	keys  []string
	lease clientv3.LeaseID // granted at the start

	mu        sync.Mutex
	attempts  []string               // for debugging: when each attempt ended, and how
	log       *observer.ObservedLogs // for debugging: the keeper's debug lines
	ts        []statemachine.Transition
	more      chan struct{}
	deletedAt time.Time // the first DELETE of one of its keys the observer saw
	// deadlineAt is the keeper's local deadline when that DELETE came. A
	// deletion before it is a revoke, not an expiry: the server cannot have
	// expired a lease the keeper renewed less than a TTL ago.
	deadlineAt time.Time
	deletions  []time.Time // every DELETE of one of its keys the observer saw
}

// newScenario starts a cluster of n members and the two keepers on it.
func newScenario(t *testing.T, name string, n int, ttl time.Duration) *scenario {
	t.Helper()
	c, err := testbed.StartCluster(etcdBin, t.TempDir(), n)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	s := newScenarioOn(t, name, ttl, c.Endpoints(), c.DirectEndpoints())
	s.c = c
	return s
}

// newScenarioOn starts the two Healthy keepers on the cluster behind
// endpoints, the prober on endpoints, and the observer on observed.
func newScenarioOn(t *testing.T, name string, ttl time.Duration, endpoints, observed []string) *scenario {
	t.Helper()
	s := &scenario{t: t, name: name, ttl: ttl, ignore: []goleak.Option{
		goleak.IgnoreCurrent(),
		// Members restarted during the scenario get a new process waiter.
		goleak.IgnoreAnyFunction("github.com/leasekeeper/leasekeeper/internal/test/testbed.reapProcess"),
	}}
	var err error
	s.obs, err = clientv3.New(clientv3.Config{
		Endpoints: observed, DialTimeout: 5 * time.Second, Logger: zap.NewNop(),
		DialOptions: []grpc.DialOption{testbed.ShortReconnect},
	})
	if err != nil {
		t.Fatal(err)
	}
	prefix := "lk/" + name + "/"
	wctx, cancel := context.WithCancel(context.Background())
	s.stopWatch, s.watchDone = cancel, make(chan struct{})
	wch := s.obs.Watch(wctx, prefix, clientv3.WithPrefix(), clientv3.WithCreatedNotify())
	<-wch
	// Close everything even when the test stops early, before the cluster
	// goes (cleanups run last in, first out).
	t.Cleanup(s.close)
	s.subject = s.newSubject(prefix, endpoints, testbed.ShortReconnect)
	s.plain = s.newSubject(prefix+"plain/", endpoints)
	go s.watch(wch, prefix)
	if s.probe, err = startProber(endpoints); err != nil {
		t.Fatal(err)
	}
	ctx, cancelStart := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancelStart()
	for _, sub := range s.subjects() {
		if err := sub.k.Start(ctx); err != nil {
			t.Fatalf("Start() = %v", err)
		}
		sub.lease = sub.k.LeaseID()
	}
	return s
}

// newSubject makes a keeper with three keys under prefix on a client of
// its own, built with opts only.
func (s *scenario) newSubject(prefix string, endpoints []string, opts ...grpc.DialOption) *subject {
	t := s.t
	t.Helper()
	sub := &subject{more: make(chan struct{}), keys: []string{prefix + "a", prefix + "b", prefix + "c"}}
	var err error
	sub.cli, err = clientv3.New(clientv3.Config{Endpoints: endpoints, Logger: zap.NewNop(), DialOptions: opts})
	if err != nil {
		t.Fatal(err)
	}
	cfg := keeper.DefaultConfig()
	cfg.TTL = s.ttl
	cfg.WatchKeys = true // the suite deletes keys behind the keepers' backs too
	cfg.Callbacks.OnTransition = sub.record
	cfg.Observers = []keeper.Observer{sub}
	core, logs := observer.New(zap.DebugLevel)
	cfg.Logger, sub.log = zap.New(core), logs
	if sub.k, err = keeper.New(sub.cli, cfg); err != nil {
		t.Fatal(err)
	}
	for _, key := range sub.keys {
		if err := sub.k.Register(context.Background(), key, "v"); err != nil {
			t.Fatal(err)
		}
	}
	return sub
}

// subjects returns the keepers under test that exist yet: the one on the
// client built with default options first.
func (s *scenario) subjects() []*subject {
	var out []*subject
	for _, sub := range []*subject{s.plain, s.subject} {
		if sub != nil {
			out = append(out, sub)
		}
	}
	return out
}

// close closes the keepers, the prober, the watcher and the clients; it is
// idempotent.
func (s *scenario) close() {
	s.closeOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		for _, sub := range s.subjects() {
			if err := sub.k.Close(ctx); err != nil {
				s.t.Errorf("Close() = %v", err)
			}
			_ = sub.cli.Close()
		}
		if s.probe != nil {
			s.probe.close()
		}
		s.stopWatch()
		if s.subject != nil {
			<-s.watchDone
		}
		_ = s.obs.Close()
	})
}

// watch records, for each keeper, the first deletion of one of its keys.
func (s *scenario) watch(wch clientv3.WatchChan, prefix string) {
	defer close(s.watchDone)
	for wr := range wch {
		for _, ev := range wr.Events {
			if ev.Type != mvccpb.DELETE {
				continue
			}
			sub := s.subject
			if strings.HasPrefix(string(ev.Kv.Key), prefix+"plain/") {
				sub = s.plain
			}
			now, d := time.Now(), sub.k.Deadline()
			sub.mu.Lock()
			sub.deletions = append(sub.deletions, now)
			if sub.deletedAt.IsZero() {
				sub.deletedAt, sub.deadlineAt = now, d
			}
			sub.mu.Unlock()
		}
	}
}

// ObserveAttempt keeps a line per attempt, for debug.
func (sub *subject) ObserveAttempt(op string, took time.Duration, err error) {
	sub.mu.Lock()
	defer sub.mu.Unlock()
	sub.attempts = append(sub.attempts, fmt.Sprintf("%d %s took %v: %v", time.Now().UnixMilli(), op, took.Round(time.Millisecond), err))
}

// ObserveTransition does nothing: OnTransition records them.
func (sub *subject) ObserveTransition(statemachine.Transition) {}

func (sub *subject) record(t statemachine.Transition) {
	sub.mu.Lock()
	defer sub.mu.Unlock()
	sub.ts = append(sub.ts, t)
	close(sub.more)
	sub.more = make(chan struct{})
}

// startFault and endFault mark a span of the fault; a fault may have
// several.
func (s *scenario) startFault() { s.faults = append(s.faults, span{start: time.Now()}) }
func (s *scenario) endFault()   { s.faults[len(s.faults)-1].end = time.Now() }

// faultStart is when the fault began, and faultEnd when it ended.
func (s *scenario) faultStart() time.Time { return s.faults[0].start }
func (s *scenario) faultEnd() time.Time   { return s.faults[len(s.faults)-1].end }

// hold waits d, the length of a fault.
func (s *scenario) hold(d time.Duration) {
	<-time.After(d)
}

// firstAt returns when the keeper first entered st at or after since.
func (sub *subject) firstAt(st statemachine.State, since time.Time) (time.Time, bool) {
	sub.mu.Lock()
	defer sub.mu.Unlock()
	for _, t := range sub.ts {
		if t.To == st && !t.At.Before(since) {
			return t.At, true
		}
	}
	return time.Time{}, false
}

// waitState waits until the keeper entered st at or after since.
func (sub *subject) waitState(st statemachine.State, since time.Time, timeout time.Duration) bool {
	deadline := time.After(timeout)
	for {
		if _, ok := sub.firstAt(st, since); ok {
			return true
		}
		sub.mu.Lock()
		more := sub.more
		sub.mu.Unlock()
		select {
		case <-more:
		case <-deadline:
			return false
		}
	}
}

func (sub *subject) transitions() []statemachine.Transition {
	sub.mu.Lock()
	defer sub.mu.Unlock()
	return slices.Clone(sub.ts)
}

func (sub *subject) path() []statemachine.State {
	return pathOf(sub.transitions())
}

func pathOf(ts []statemachine.Transition) []statemachine.State {
	if len(ts) == 0 {
		return nil
	}
	p := []statemachine.State{ts[0].From}
	for _, t := range ts {
		p = append(p, t.To)
	}
	return p
}

// forgetDeletion makes the checks ignore a deletion the test caused.
func (sub *subject) forgetDeletion() {
	sub.mu.Lock()
	defer sub.mu.Unlock()
	sub.deletedAt = time.Time{}
}

// revokedAt returns when the server revoked the keeper's lease on its own
// (a deletion of its keys before its local deadline), if it did.
func (sub *subject) revokedAt() (time.Time, bool) {
	sub.mu.Lock()
	defer sub.mu.Unlock()
	return sub.deletedAt, !sub.deletedAt.IsZero() && sub.deletedAt.Before(sub.deadlineAt)
}

// failedOnItsOwn reports whether the keeper went failed during the fault
// other than on the server's word that its lease is gone (a revoke by the
// server: a paused leader does that when it wakes).
func (sub *subject) failedOnItsOwn(since time.Time) bool {
	for _, t := range sub.transitions() {
		if t.To == statemachine.Failed && !t.At.Before(since) && lkerrors.KindOf(t.Cause) != lkerrors.LeaseExpired {
			return true
		}
	}
	return false
}

// flaps counts, in each span of the fault, the returns to a state the
// fault had moved the keeper away from (healthy -> degraded -> healthy),
// unless etcd changed since the span began: its answers stopped or came
// back, as when the cluster elects a new leader while a member stays down,
// or it revoked the keeper's lease (a paused leader does so when it wakes).
// That is the cluster changing under a fault, and the keeper following it,
// not flapping under a steady one.
func (s *scenario) flaps(sub *subject) int {
	n := 0
	ts := sub.transitions()
	revoked, wasRevoked := sub.revokedAt()
	for _, sp := range s.faults {
		left := map[statemachine.State]bool{} // states the keeper left during the span
		for _, t := range ts {
			if t.At.Before(sp.start) || t.At.After(sp.end) {
				continue
			}
			if left[t.To] {
				cleared := s.probe.silentBetween(sp.start, t.At) || wasRevoked && revoked.Before(t.At)
				if !cleared {
					n++
				}
			}
			left[t.From] = true
		}
	}
	return n
}

// finish waits for the keepers to heal, checks the registrations and the
// safety of every expiry, closes everything, checks for leaked goroutines
// and records the row.
func (s *scenario) finish(note string) result {
	t := s.t
	t.Helper()
	if s.faultEnd().IsZero() {
		s.endFault()
	}
	start, end := s.faultStart(), s.faultEnd()
	r := result{scenario: s.name, ttl: s.ttl, toDegraded: -1, toFailed: -1, heal: -1, note: note}
	for _, sub := range s.subjects() {
		if at, ok := sub.revokedAt(); ok {
			// The server dropped a lease the keeper holds: it learns so at
			// its next renewal or through its watch, fails, and registers
			// again. Its own renewal may tell it before the observer's
			// watch tells us, so its Failed may come a little before at.
			failed := sub.waitState(statemachine.Failed, start, 2*s.ttl)
			failedAt, _ := sub.firstAt(statemachine.Failed, start)
			if !failed || !sub.waitState(statemachine.Healthy, failedAt, 30*time.Second) {
				t.Errorf("%s: the server revoked the lease at +%v and the keeper did not re-register: %v",
					s.name, at.Sub(start), sub.path())
			}
		}
		if sub.k.State() != statemachine.Healthy && !sub.waitState(statemachine.Healthy, end, 30*time.Second) {
			t.Errorf("%s: not healthy 30s after the fault ended: %v", s.name, sub.k.State())
			continue
		}
		s.checkKeys(sub)
		r.answersToHealthy = append(r.answersToHealthy, s.answersToHealthy(sub, start))
		r.flaps += s.flaps(sub)
	}
	sub := s.subject
	if at, ok := sub.firstAt(statemachine.Healthy, end); ok {
		r.heal = at.Sub(end)
	} else if sub.k.State() == statemachine.Healthy {
		r.heal = 0
	}
	r.lease = "new"
	if sub.k.LeaseID() == sub.lease {
		r.lease = "same"
	}
	if at, ok := sub.firstAt(statemachine.Degraded, start); ok {
		r.toDegraded = at.Sub(start)
	}
	failedAt, failed := sub.firstAt(statemachine.Failed, start)
	if failed {
		r.toFailed = failedAt.Sub(start)
	}
	for _, sub := range s.subjects() {
		deletedAt, revoked := sub.revokedAt()
		switch {
		case revoked:
			if sub == s.subject {
				r.expiry = fmt.Sprintf("revoked by the server %v before the keeper's deadline", sub.deadlineAt.Sub(deletedAt).Round(10*time.Millisecond))
			}
		case !deletedAt.IsZero():
			at, failed := sub.firstAt(statemachine.Failed, start)
			if sub == s.subject {
				r.deleted, r.margin = true, deletedAt.Sub(at)
			}
			if !failed || !at.Before(deletedAt) {
				t.Errorf("%s: the server deleted the keys at +%v, before the keeper reported failed (%v)",
					s.name, deletedAt.Sub(start), at.Sub(start))
			}
		}
	}
	r.path = sub.path()
	if r.flaps > 0 && !s.flapsAllowed {
		t.Errorf("%s: %d flaps while the fault lasted: %s / %s", s.name, r.flaps, pathString(s.path()), pathString(s.plain.path()))
	}

	if testing.Verbose() {
		s.debug()
	}
	s.close()
	goleak.VerifyNone(t, s.ignore...)
	record(r)
	t.Logf("%s: path %s, degraded %s, failed %s, heal %s, etcd answers -> healthy %s, flaps %d", s.name, pathString(r.path),
		dur(r.toDegraded), dur(r.toFailed), dur(r.heal), durs(r.answersToHealthy), r.flaps)
	return r
}

// failedOnItsOwn reports whether either keeper went failed during the
// fault other than because the server revoked its lease.
func (s *scenario) failedOnItsOwn() bool {
	for _, sub := range s.subjects() {
		if sub.failedOnItsOwn(s.faultStart()) {
			return true
		}
	}
	return false
}

// healTarget is how soon after etcd answers again a keeper must be
// healthy again, whichever way its client was built.
const healTarget = 200 * time.Millisecond

// wantHealed fails the test unless every keeper that left healthy was
// healthy again within healTarget of etcd answering.
func wantHealed(t *testing.T, r result) {
	t.Helper()
	for i, d := range r.answersToHealthy {
		if d > healTarget {
			t.Errorf("%s: keeper %d healthy %v after etcd answered again, want within %v", r.scenario, i, d, healTarget)
		}
	}
}

// answersToHealthy is how long after etcd answered again the keeper was
// healthy again: from the prober's first answer after the keeper last left
// healthy to its return, or -1 if it never left healthy after since. A
// keeper that heard first counts 0.
func (s *scenario) answersToHealthy(sub *subject, since time.Time) time.Duration {
	var left, back time.Time
	for _, t := range sub.transitions() {
		switch {
		case t.At.Before(since):
		case t.From == statemachine.Healthy:
			left, back = t.At, time.Time{}
		case t.To == statemachine.Healthy:
			back = t.At
		}
	}
	if left.IsZero() || back.IsZero() {
		return -1
	}
	answered, ok := s.probe.answeredAfter(left)
	if !ok {
		s.t.Errorf("%s: the keeper was healthy again, but the prober never heard etcd answer", s.name)
		return -1
	}
	return max(back.Sub(answered), 0)
}

// checkKeys asserts every key of sub is on the server with its lease.
func (s *scenario) checkKeys(sub *subject) {
	s.t.Helper()
	id := sub.k.LeaseID()
	for _, key := range sub.keys {
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

// debug logs every transition and the gaps in etcd's answers, from the
// fault's start.
func (s *scenario) debug() {
	start := s.faultStart()
	for i, sub := range s.subjects() {
		for _, t := range sub.transitions() {
			s.t.Logf("keeper %d: +%v %v -> %v (%v)", i, t.At.Sub(start).Round(time.Millisecond), t.From, t.To, t.Cause)
		}
		sub.mu.Lock()
		for _, a := range sub.attempts {
			var ms int64
			var rest string
			_, _ = fmt.Sscanf(a, "%d", &ms)
			rest = a[strings.IndexByte(a, ' ')+1:]
			s.t.Logf("keeper %d: attempt ended +%v %s", i, time.UnixMilli(ms).Sub(start).Round(time.Millisecond), rest)
		}
		sub.mu.Unlock()
		for _, e := range sub.log.All() {
			var b strings.Builder
			for k, v := range e.ContextMap() {
				fmt.Fprintf(&b, " %s=%v", k, v)
			}
			s.t.Logf("keeper %d: log +%v %s%s", i, e.Time.Sub(start).Round(time.Millisecond), e.Message, b.String())
		}
	}
	s.probe.mu.Lock()
	defer s.probe.mu.Unlock()
	var prev time.Time
	for _, a := range s.probe.answers {
		if !prev.IsZero() && a.Sub(prev) > 200*time.Millisecond {
			s.t.Logf("etcd silent from +%v to +%v", prev.Sub(start).Round(time.Millisecond), a.Sub(start).Round(time.Millisecond))
		}
		prev = a
	}
	s.t.Logf("last answer +%v", prev.Sub(start).Round(time.Millisecond))
}
