package statemachine_test

import (
	"testing"

	"github.com/leasekeeper/leasekeeper/statemachine"
)

// wantEdges is the relation written out independently of table.go: every
// (state, event) pair that changes state. Every other pair keeps the state.
var wantEdges = map[statemachine.State]map[statemachine.Event]statemachine.State{
	statemachine.Idle: {
		statemachine.RenewOK:          statemachine.Healthy,
		statemachine.Recovered:        statemachine.Healthy,
		statemachine.RenewFailed:      statemachine.Failed,
		statemachine.FailuresExceeded: statemachine.Failed,
		statemachine.LeaseLost:        statemachine.Failed,
		statemachine.PermanentFailure: statemachine.Failed,
		statemachine.Close:            statemachine.Closed,
		statemachine.Drain:            statemachine.Draining,
	},
	statemachine.Healthy: {
		statemachine.FailuresExceeded: statemachine.Degraded,
		statemachine.TimeLow:          statemachine.Degraded,
		statemachine.DeadlineReached:  statemachine.Failed,
		statemachine.LeaseLost:        statemachine.Failed,
		statemachine.PermanentFailure: statemachine.Failed,
		statemachine.Close:            statemachine.Closed,
		statemachine.Drain:            statemachine.Draining,
	},
	statemachine.Degraded: {
		statemachine.RenewOK:          statemachine.Healthy,
		statemachine.Recovered:        statemachine.Healthy,
		statemachine.DeadlineReached:  statemachine.Failed,
		statemachine.LeaseLost:        statemachine.Failed,
		statemachine.PermanentFailure: statemachine.Failed,
		statemachine.Close:            statemachine.Closed,
		statemachine.Drain:            statemachine.Draining,
	},
	statemachine.Failed: {
		statemachine.RenewOK:   statemachine.Healthy,
		statemachine.Recovered: statemachine.Healthy,
		statemachine.Close:     statemachine.Closed,
		statemachine.Drain:     statemachine.Draining,
	},
	statemachine.Closed: {},
	statemachine.Draining: {
		statemachine.Close: statemachine.Closed,
	},
}

func TestTable(t *testing.T) {
	for _, s := range statemachine.States() {
		for _, e := range statemachine.Events() {
			want, ok := wantEdges[s][e]
			if !ok {
				want = s
			}
			if got := statemachine.Next(s, e); got != want {
				t.Errorf("Next(%v, %v) = %v, want %v", s, e, got, want)
			}
		}
	}
}

func TestNextOutOfRange(t *testing.T) {
	if got := statemachine.Next(statemachine.Healthy, statemachine.Event(99)); got != statemachine.Healthy {
		t.Errorf("Next(healthy, event(99)) = %v, want healthy", got)
	}
	if got := statemachine.Next(statemachine.State(-1), statemachine.Close); got != statemachine.State(-1) {
		t.Errorf("Next(state(-1), close) = %v, want state(-1)", got)
	}
}

func TestStrings(t *testing.T) {
	tests := []struct {
		name string
		got  string
		want string
	}{
		{"idle", statemachine.Idle.String(), "idle"},
		{"healthy", statemachine.Healthy.String(), "healthy"},
		{"degraded", statemachine.Degraded.String(), "degraded"},
		{"failed", statemachine.Failed.String(), "failed"},
		{"closed", statemachine.Closed.String(), "closed"},
		{"draining", statemachine.Draining.String(), "draining"},
		{"drain", statemachine.Drain.String(), "drain"},
		{"bad state", statemachine.State(42).String(), "state(42)"},
		{"lease lost", statemachine.LeaseLost.String(), "lease lost"},
		{"bad event", statemachine.Event(-3).String(), "event(-3)"},
		{"transition", statemachine.Transition{From: statemachine.Healthy, To: statemachine.Degraded}.String(), "healthy -> degraded"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if tc.got != tc.want {
				t.Errorf("String() = %q, want %q", tc.got, tc.want)
			}
		})
	}
	var zero statemachine.State
	if zero != statemachine.Idle {
		t.Errorf("zero State = %v, want idle", zero)
	}
}
