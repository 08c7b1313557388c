package keeper

import (
	"context"
	"io"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/leasekeeper/leasekeeper/statemachine"
)

// TestBlockingCallbackNeverDelaysRenewals blocks the first callback for a
// long outage and recovery: renewals go on, the state moves, and the
// transitions arrive later in order.
func TestBlockingCallbackNeverDelaysRenewals(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake()
		release := make(chan struct{})
		var calls atomic.Int32
		rec := &recorder{}
		k, _ := newTest(t, f, func(c *Config) {
			c.Callbacks.OnTransition = func(tr statemachine.Transition) {
				if calls.Add(1) == 1 {
					<-release
				}
				rec.record(tr)
			}
		})
		startHealthy(t, k, "svc/a")
		f.setErr(rpctypes.ErrNoLeader)
		time.Sleep(15 * time.Second)
		synctest.Wait()
		if got := k.State(); got != statemachine.Failed {
			t.Fatalf("State() with the callback blocked = %v, want failed", got)
		}
		f.setErr(nil)
		before := f.count("keepalive")
		time.Sleep(20 * time.Second)
		synctest.Wait()
		if got := k.State(); got != statemachine.Healthy {
			t.Fatalf("State() with the callback blocked = %v, want healthy", got)
		}
		// Recovery within one backoff cap (5s), then one renewal per 3.33s.
		if got := f.count("keepalive") - before; got < 4 {
			t.Errorf("keepalives in 20s with a blocked callback = %d, want at least 4", got)
		}
		close(release)
		synctest.Wait()
		want := []statemachine.State{statemachine.Idle, statemachine.Healthy, statemachine.Degraded, statemachine.Failed, statemachine.Healthy}
		if !samePath(rec.path(), want...) {
			t.Errorf("path = %v, want %v", rec.path(), want)
		}
		mustClose(t, k)
	})
}

func TestPanickingCallbackIsContained(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake()
		core, logs := observer.New(zapcore.ErrorLevel)
		var lost, resumed, stopped atomic.Int32
		k, rec := newTest(t, f, func(c *Config) {
			c.Logger = zap.New(core)
			c.Callbacks.OnStopWrites = func(statemachine.Transition) {
				stopped.Add(1)
				panic("callback bug")
			}
			c.Callbacks.OnLost = func(statemachine.Transition) { lost.Add(1) }
			c.Callbacks.OnResumeWrites = func(statemachine.Transition) { resumed.Add(1) }
		})
		startHealthy(t, k, "svc/a")
		f.setErr(rpctypes.ErrNoLeader)
		time.Sleep(15 * time.Second)
		f.setErr(nil)
		time.Sleep(5 * time.Second)
		synctest.Wait()
		if got := k.State(); got != statemachine.Healthy {
			t.Errorf("State() = %v, want healthy after a panicking callback", got)
		}
		if got := len(rec.transitions()); got != 4 {
			t.Errorf("transitions = %d, want 4 (healthy, degraded, failed, healthy)", got)
		}
		// Stop: healthy -> degraded. Lost: degraded -> failed. Resume: idle
		// -> healthy and failed -> healthy.
		if stopped.Load() != 1 || lost.Load() != 1 || resumed.Load() != 2 {
			t.Errorf("OnStopWrites, OnLost, OnResumeWrites calls = %d, %d, %d; want 1, 1, 2",
				stopped.Load(), lost.Load(), resumed.Load())
		}
		if got := logs.FilterMessage("callback panicked").Len(); got != 1 {
			t.Errorf("panic log lines = %d, want 1", got)
		}
		mustClose(t, k)
	})
}

// TestNoLogFloodDuringOutage: ten minutes of outage log one line per
// transition, not one per attempt.
func TestNoLogFloodDuringOutage(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake()
		core, logs := observer.New(zapcore.InfoLevel)
		k, _ := newTest(t, f, func(c *Config) { c.Logger = zap.New(core) })
		startHealthy(t, k, "svc/a")
		f.setErr(rpctypes.ErrNoLeader)
		time.Sleep(10 * time.Minute)
		synctest.Wait()
		if attempts := f.count("keepalive") + f.count("grant"); attempts < 100 {
			t.Fatalf("attempts in the outage = %d, want many (the test would prove nothing)", attempts)
		}
		// Three transitions, and a "renewal failing" warning at the first
		// failure and then once per 30s: 3 + 1 + 20 at most.
		entries := logs.All()
		if len(entries) > 24 || logs.FilterMessageSnippet("renewal failing").Len() < 2 {
			t.Errorf("log lines = %d (%d failing), want at most 24 with a sampled warning", len(entries),
				logs.FilterMessageSnippet("renewal failing").Len())
		}
		for _, e := range entries {
			if !strings.HasPrefix(e.Message, "lease keeper ") {
				t.Errorf("unexpected log line %q", e.Message)
			}
		}
		tr := logs.FilterMessage("lease keeper failed").All()
		if len(tr) != 1 {
			t.Fatalf("failed transition lines = %d, want 1", len(tr))
		}
		fields := tr[0].ContextMap()
		for _, f := range []string{"from", "to", "kind", "lease", "time_left"} {
			if _, ok := fields[f]; !ok {
				t.Errorf("transition line lacks %q: %v", f, fields)
			}
		}
		f.setErr(nil)
		mustClose(t, k)
	})
}

// TestIdleKeeperHasNoGoroutine: a Healthy keeper between renewals costs
// timers, not goroutines.
func TestIdleKeeperHasNoGoroutine(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake()
		synctest.Wait()
		before := runtime.NumGoroutine()
		ks := make([]*Keeper, 100)
		for i := range ks {
			ks[i], _ = newTest(t, f, nil)
			startHealthy(t, ks[i])
		}
		time.Sleep(time.Second)
		synctest.Wait()
		if extra := runtime.NumGoroutine() - before; extra > 2 {
			t.Errorf("goroutines for 100 idle keepers = %d, want none", extra)
		}
		for _, k := range ks {
			mustClose(t, k)
		}
	})
}

func TestDegradeAfterConsecutiveFailures(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake()
		k, rec := newTest(t, f, func(c *Config) { c.DegradeAfter = 3 })
		start := time.Now()
		startHealthy(t, k, "svc/a")
		// The keeper learned its path at Start with keepalives the fake
		// answered at once; the next renewal is due 3.33s to 3.75s after
		// the last of them.
		sent := k.Deadline().Add(-10*time.Second + 250*time.Millisecond)
		require.Equal(t, time.Duration(0), sent.Sub(start), "last keepalive of Start")
		next := dueAfter(k, sent, 10*time.Second).Sub(start)
		// Errors that return at once: the count, not the time, degrades.
		f.setErr(rpctypes.ErrNoLeader)
		time.Sleep(next + 2*time.Second - time.Since(start))
		synctest.Wait()
		at := rec.at(statemachine.Degraded).Sub(start)
		// Failures from that renewal, then ~0.1s and ~0.3s later:
		// degraded by the third, long before time runs low at 7.125s.
		if at < next+200*time.Millisecond || at > next+time.Second {
			t.Errorf("degraded %v after start, want after the third failure from %v, well before 7.125s", at, next)
		}
		if got := k.Err(); got == nil {
			t.Errorf("Err() = nil while failing, want the last error")
		}
		f.setErr(nil)
		time.Sleep(2 * time.Second)
		synctest.Wait()
		if got := k.State(); got != statemachine.Healthy || k.Err() != nil {
			t.Errorf("State(), Err() = %v, %v; want healthy, nil", got, k.Err())
		}
		mustClose(t, k)
	})
}

// TestLastAttemptBeforeDeadline: with a long backoff the keeper still makes
// an attempt that can finish before the deadline, and it saves the lease.
func TestLastAttemptBeforeDeadline(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake()
		f.setLatency(300 * time.Millisecond) // under RenewTimeout/3: no hedge
		k, rec := newTest(t, f, func(c *Config) {
			c.Backoff.BaseDelay = 3 * time.Second
			c.Backoff.MaxDelay = 20 * time.Second
			c.Backoff.Jitter = 0
		})
		startHealthy(t, k, "svc/a")
		id := k.LeaseID()
		// Start took 0.6s (grant, put); the keeper learns its path with
		// three keepalives in a row from the grant on, the last sent at
		// 0.9s: D = 0.9s + 9.75s - 0.3s (b, the grant's round trip) =
		// 10.35s.
		time.Sleep(time.Second)
		learned := f.count("keepalive")
		f.setErr(rpctypes.ErrNoLeader)
		// The first renewal, due 3.33s to 3.75s after 0.9s, fails, as do
		// the retries after it; the backoff would then wait past D, but
		// a last attempt still fits. The server answers again at 9.1s.
		time.Sleep(7500 * time.Millisecond)
		f.setErr(nil)
		time.Sleep(2 * time.Second)
		synctest.Wait()
		for _, tr := range rec.transitions() {
			if tr.To == statemachine.Failed {
				t.Errorf("transition %v: the last attempt did not fit before the deadline", tr)
			}
		}
		if got := k.State(); got != statemachine.Healthy {
			t.Errorf("State() = %v, want healthy", got)
		}
		if got := k.LeaseID(); got != id {
			t.Errorf("LeaseID() = %d, want the same lease %d", got, id)
		}
		// At most one keepalive per backoff, and the last one in time.
		if got := f.count("keepalive") - learned; got < 3 || got > 4 {
			t.Errorf("keepalives = %d, want 3 or 4 (one per backoff, the last one in time)", got)
		}
		mustClose(t, k)
	})
}

// TestReportsNobodyHearsAreDropped: a report is delivered only when it
// would log a line or reach a callback or an observer; a keeper with none
// of those queues nothing, and so starts no goroutine, at its transitions.
func TestReportsNobodyHearsAreDropped(t *testing.T) {
	healthy := transition{t: statemachine.Transition{From: statemachine.Idle, To: statemachine.Healthy}}
	failed := transition{t: statemachine.Transition{From: statemachine.Healthy, To: statemachine.Failed}}
	theirs := KeyEvent{Key: "k", Change: Deleted}
	ours := KeyEvent{Key: "k", Change: Acquired, Ours: true}
	warnOnly := zap.New(zapcore.NewCore(zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig()), zapcore.AddSync(io.Discard), zapcore.WarnLevel))
	for _, tc := range []struct {
		name string
		cfg  func(*Config)
		want map[report]bool
	}{
		{"nothing", func(*Config) {}, map[report]bool{healthy: false, failed: false, theirs: false, ours: false}},
		{"a warning logger", func(c *Config) { c.Logger = warnOnly },
			map[report]bool{healthy: false, failed: true, theirs: true, ours: false}},
		{"OnLost", func(c *Config) { c.Callbacks.OnLost = func(statemachine.Transition) {} },
			map[report]bool{healthy: true, failed: true, theirs: false, ours: false}},
		{"OnKeyEvent", func(c *Config) { c.Callbacks.OnKeyEvent = func(KeyEvent) {} },
			map[report]bool{healthy: false, failed: false, theirs: true, ours: true}},
		{"an observer", func(c *Config) { c.Observers = []Observer{nopObserver{}} },
			map[report]bool{healthy: true, failed: true, theirs: false, ours: false, attemptReport{op: "renew"}: true}},
	} {
		for r, want := range tc.want {
			cfg := DefaultConfig()
			tc.cfg(&cfg)
			k := &Keeper{cfg: &cfg}
			k.disp.init(k)
			assert.Equal(t, want, r.heard(&k.disp), "%s: %#v", tc.name, r)
			k.disp.push(r)
			if !want {
				k.disp.mu.Lock()
				assert.Empty(t, k.disp.queue, "%s: %#v queued", tc.name, r)
				assert.Equal(t, closedChan, k.disp.drained, "%s: %#v started a delivery", tc.name, r)
				k.disp.mu.Unlock()
			}
			k.disp.wait(context.Background())
		}
	}
}

type nopObserver struct{}

func (nopObserver) ObserveAttempt(string, time.Duration, error) {}
func (nopObserver) ObserveTransition(statemachine.Transition)   {}
