package statemachine_test

import (
	"errors"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/leasekeeper/leasekeeper/statemachine"
)

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func TestNewRejectsBadDegradeAfter(t *testing.T) {
	for _, n := range []int{0, -1} {
		if _, err := statemachine.New(n); err == nil {
			t.Errorf("New(%d) error = nil, want error", n)
		}
	}
}

func TestMachineSteps(t *testing.T) {
	cause := errors.New("boom")
	tests := []struct {
		name         string
		degradeAfter int
		events       []statemachine.Event
		want         []statemachine.State // state after each event
	}{
		{
			name:         "start then degrade after two failures",
			degradeAfter: 2,
			events:       []statemachine.Event{statemachine.Recovered, statemachine.RenewFailed, statemachine.RenewFailed, statemachine.RenewOK},
			want:         []statemachine.State{statemachine.Healthy, statemachine.Healthy, statemachine.Degraded, statemachine.Healthy},
		},
		{
			name:         "success resets the failure count",
			degradeAfter: 2,
			events:       []statemachine.Event{statemachine.RenewOK, statemachine.RenewFailed, statemachine.RenewOK, statemachine.RenewFailed},
			want:         []statemachine.State{statemachine.Healthy, statemachine.Healthy, statemachine.Healthy, statemachine.Healthy},
		},
		{
			name:         "degrade after one",
			degradeAfter: 1,
			events:       []statemachine.Event{statemachine.RenewOK, statemachine.RenewFailed},
			want:         []statemachine.State{statemachine.Healthy, statemachine.Degraded},
		},
		{
			name:         "time low degrades before failures do",
			degradeAfter: 5,
			events:       []statemachine.Event{statemachine.RenewOK, statemachine.RenewFailed, statemachine.TimeLow, statemachine.DeadlineReached, statemachine.RenewFailed, statemachine.RenewOK},
			want:         []statemachine.State{statemachine.Healthy, statemachine.Healthy, statemachine.Degraded, statemachine.Failed, statemachine.Failed, statemachine.Healthy},
		},
		{
			name:         "lease lost then recovered",
			degradeAfter: 2,
			events:       []statemachine.Event{statemachine.RenewOK, statemachine.LeaseLost, statemachine.Recovered},
			want:         []statemachine.State{statemachine.Healthy, statemachine.Failed, statemachine.Healthy},
		},
		{
			name:         "close absorbs",
			degradeAfter: 2,
			events:       []statemachine.Event{statemachine.RenewOK, statemachine.Close, statemachine.RenewOK, statemachine.LeaseLost},
			want:         []statemachine.State{statemachine.Healthy, statemachine.Closed, statemachine.Closed, statemachine.Closed},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m, err := statemachine.New(tc.degradeAfter)
			if err != nil {
				t.Fatal(err)
			}
			for i, e := range tc.events {
				before := m.State()
				at := t0.Add(time.Duration(i) * time.Second)
				tr, changed := m.Step(e, cause, at)
				if got := m.State(); got != tc.want[i] {
					t.Fatalf("after event %d (%v): State() = %v, want %v", i, e, got, tc.want[i])
				}
				if changed != (before != m.State()) {
					t.Errorf("event %d (%v): changed = %v, want %v", i, e, changed, before != m.State())
				}
				if changed && (tr.From != before || tr.To != m.State() || !errors.Is(tr.Cause, cause) || !tr.At.Equal(at)) {
					t.Errorf("event %d (%v): Transition = %+v, want %v -> %v at %v", i, e, tr, before, m.State(), at)
				}
			}
		})
	}
}

// TestMachineInvariants drives long random event sequences and checks the
// promises of the package documentation after every step.
func TestMachineInvariants(t *testing.T) {
	events := statemachine.Events()
	for seed := range uint64(200) {
		rng := rand.New(rand.NewPCG(seed, 7))
		degradeAfter := 1 + rng.IntN(4)
		m, err := statemachine.New(degradeAfter)
		if err != nil {
			t.Fatal(err)
		}
		deadlinePassed := false // a deadline event came with no success since
		consecutive := 0
		closed, draining := false, false
		for i := range 2000 {
			e := events[rng.IntN(len(events))]
			if e == statemachine.FailuresExceeded {
				e = statemachine.RenewFailed // callers never send it
			}
			before := m.State()
			tr, changed := m.Step(e, nil, t0)
			after := m.State()
			switch e {
			case statemachine.RenewOK, statemachine.Recovered:
				deadlinePassed, consecutive = false, 0
			case statemachine.DeadlineReached:
				if before != statemachine.Idle {
					deadlinePassed = true
				}
			case statemachine.RenewFailed:
				consecutive++
			}
			if closed && (changed || after != statemachine.Closed) {
				t.Fatalf("seed %d step %d: %v after close gave %v (changed %v)", seed, i, e, after, changed)
			}
			if draining && !closed && after != statemachine.Draining && e != statemachine.Close {
				t.Fatalf("seed %d step %d: %v while draining gave %v", seed, i, e, after)
			}
			if e == statemachine.Close {
				closed = true
			}
			if e == statemachine.Drain {
				draining = true
			}
			if changed && (tr.From == tr.To || tr.From != before || tr.To != after) {
				t.Fatalf("seed %d step %d: bad transition %+v for %v -> %v", seed, i, tr, before, after)
			}
			if !changed && before != after {
				t.Fatalf("seed %d step %d: state changed %v -> %v without a transition", seed, i, before, after)
			}
			if deadlinePassed && (after == statemachine.Healthy || after == statemachine.Degraded) {
				t.Fatalf("seed %d step %d: %v after the deadline with no success since", seed, i, after)
			}
			if after == statemachine.Failed && (before == statemachine.Healthy || before == statemachine.Degraded) {
				switch e {
				case statemachine.DeadlineReached, statemachine.LeaseLost, statemachine.PermanentFailure:
				default:
					t.Fatalf("seed %d step %d: %v -> failed on %v while time was left", seed, i, before, e)
				}
			}
			if after == statemachine.Degraded && before == statemachine.Healthy &&
				e != statemachine.TimeLow && consecutive < degradeAfter {
				t.Fatalf("seed %d step %d: degraded after %d failures, want at least %d", seed, i, consecutive, degradeAfter)
			}
			if m.Failures() != consecutive && !closed {
				t.Fatalf("seed %d step %d: Failures() = %d, want %d", seed, i, m.Failures(), consecutive)
			}
		}
	}
}

func BenchmarkStep(b *testing.B) {
	m, _ := statemachine.New(2)
	seq := []statemachine.Event{statemachine.RenewOK, statemachine.RenewFailed, statemachine.RenewFailed, statemachine.TimeLow, statemachine.DeadlineReached}
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		m.Step(seq[i%len(seq)], nil, t0)
	}
}
