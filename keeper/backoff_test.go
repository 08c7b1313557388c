package keeper

import (
	"testing"
	"time"

	lkerrors "github.com/leasekeeper/leasekeeper/errors"
)

func TestBackoffBounds(t *testing.T) {
	b := DefaultConfig().Backoff
	tests := []struct {
		name     string
		n        int
		kind     lkerrors.Kind
		min, max time.Duration
	}{
		{"first retry", 1, lkerrors.Unavailable, 80 * time.Millisecond, 120 * time.Millisecond},
		{"second retry", 2, lkerrors.Timeout, 160 * time.Millisecond, 240 * time.Millisecond},
		{"fifth retry", 5, lkerrors.ClusterUnreachable, 1280 * time.Millisecond, 1920 * time.Millisecond},
		{"capped", 30, lkerrors.Unknown, 4 * time.Second, 5 * time.Second},
		{"rate limited is one step slower", 1, lkerrors.RateLimited, 160 * time.Millisecond, 240 * time.Millisecond},
		{"permission denied waits the cap", 1, lkerrors.PermissionDenied, 5 * time.Second, 6 * time.Second},
		{"no space waits the cap", 1, lkerrors.NoSpace, 5 * time.Second, 6 * time.Second},
		{"invalid argument waits the cap", 1, lkerrors.InvalidArgument, 5 * time.Second, 6 * time.Second},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			a, z := b.delay(tc.n, tc.kind, 0), b.delay(tc.n, tc.kind, 0.999999)
			lo, hi := min(a, z), max(a, z)
			if lo < tc.min || hi > tc.max {
				t.Errorf("delay(%d, %v) spans [%v, %v], want within [%v, %v]", tc.n, tc.kind, lo, hi, tc.min, tc.max)
			}
			if mid := b.delay(tc.n, tc.kind, 0.5); mid < lo || mid > hi {
				t.Errorf("delay(%d, %v, 0.5) = %v, want within [%v, %v]", tc.n, tc.kind, mid, lo, hi)
			}
		})
	}
}

func TestBackoffJitterSpreads(t *testing.T) {
	b := DefaultConfig().Backoff
	seen := map[time.Duration]bool{}
	for i := range 100 {
		seen[b.delay(3, lkerrors.Unavailable, float64(i)/100)] = true
	}
	if len(seen) < 90 {
		t.Errorf("distinct delays over 100 draws = %d, want jitter to spread them", len(seen))
	}
	b.Jitter = 0
	if lo, hi := b.delay(3, lkerrors.Unavailable, 0), b.delay(3, lkerrors.Unavailable, 0.99); lo != hi || lo != 400*time.Millisecond {
		t.Errorf("delay without jitter = %v..%v, want 400ms exactly", lo, hi)
	}
}

func TestBackoffNeverZero(t *testing.T) {
	b := BackoffConfig{BaseDelay: time.Millisecond, Multiplier: 1, Jitter: 0.99, MaxDelay: time.Millisecond}
	for _, k := range lkerrors.Kinds() {
		if d := b.delay(1, k, 0); d <= 0 {
			t.Errorf("delay(1, %v, 0) = %v, want positive", k, d)
		}
	}
}

// BenchmarkScheduleRenewal is the cost of scheduling a renewal the way the
// keeper does: an AfterFunc timer replacing the previous one.
func BenchmarkScheduleRenewal(b *testing.B) {
	k, err := newKeeper(newFake(), DefaultConfig())
	if err != nil {
		b.Fatal(err)
	}
	l := &k.loop
	l.started = true
	b.ReportAllocs()
	l.mu.Lock()
	for b.Loop() {
		l.scheduleLocked(time.Hour)
	}
	l.k.hub.timers.Stop(&l.sched.attempt)
	l.mu.Unlock()
}

func BenchmarkBackoffDelay(b *testing.B) {
	c := DefaultConfig().Backoff
	for i := 0; b.Loop(); i++ {
		_ = c.delay(i%10+1, lkerrors.Unavailable, 0.5)
	}
}
