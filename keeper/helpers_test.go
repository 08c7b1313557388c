package keeper

import (
	"context"
	"slices"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"go.uber.org/goleak"

	"github.com/leasekeeper/leasekeeper/statemachine"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// recorder keeps every transition a keeper reports.
type recorder struct {
	mu sync.Mutex
	ts []statemachine.Transition
}

func (r *recorder) record(t statemachine.Transition) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ts = append(r.ts, t)
}

func (r *recorder) transitions() []statemachine.Transition {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.ts)
}

// path returns the states visited: the first From, then every To.
func (r *recorder) path() []statemachine.State {
	ts := r.transitions()
	if len(ts) == 0 {
		return nil
	}
	p := []statemachine.State{ts[0].From}
	for _, t := range ts {
		p = append(p, t.To)
	}
	return p
}

// at returns when the keeper first entered s, or the zero time.
func (r *recorder) at(s statemachine.State) time.Time {
	for _, t := range r.transitions() {
		if t.To == s {
			return t.At
		}
	}
	return time.Time{}
}

// newTest returns a keeper on f with DefaultConfig changed by mutate, and a
// recorder of its transitions. The test must Close it.
func newTest(t *testing.T, b backend, mutate func(*Config)) (*Keeper, *recorder) {
	t.Helper()
	rec := &recorder{}
	cfg := DefaultConfig()
	cfg.Callbacks.OnTransition = rec.record
	if f, ok := b.(*fakeBackend); ok && f.watches() {
		cfg.WatchKeys = true // a fake made to be watched is for tests of the watch
	}
	if mutate != nil {
		mutate(&cfg)
	}
	k, err := newKeeper(b, cfg)
	if err != nil {
		t.Fatalf("newKeeper: %v", err)
	}
	return k, rec
}

// startHealthy registers keys, starts k and fails the test unless it is
// Healthy.
func startHealthy(t *testing.T, k *Keeper, keys ...string) {
	t.Helper()
	ctx := context.Background()
	for _, key := range keys {
		if err := k.Register(ctx, key, "v-"+key); err != nil {
			t.Fatalf("Register(%q) = %v", key, err)
		}
	}
	if err := k.Start(ctx); err != nil {
		t.Fatalf("Start() = %v, want nil", err)
	}
	if got := k.State(); got != statemachine.Healthy {
		t.Fatalf("State() after Start = %v, want healthy", got)
	}
	if _, fake := k.hub.b.(*fakeBackend); fake {
		// The fake answers at once: the keeper learns its path (path.go)
		// in the instant after Start; let it, so that a fault comes to a
		// path it knows, as it does a few round trips after Start.
		synctest.Wait()
	}
}

func mustClose(t *testing.T, k *Keeper) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if err := k.Close(ctx); err != nil {
		t.Errorf("Close() = %v, want nil", err)
	}
}

func samePath(got []statemachine.State, want ...statemachine.State) bool {
	return slices.Equal(got, want)
}

// replyFunc is a func as a replier.
type replyFunc func(int64, error)

func (f replyFunc) reply(ttl int64, err error) { f(ttl, err) }
