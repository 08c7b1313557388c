package statemachine

import (
	"fmt"
	"time"
)

// Machine tracks a keeper's state and its consecutive renewal failures. It
// does no I/O and reads no clock: the caller passes the time of each event.
// It is not safe for concurrent use; the keeper guards it with its lock.
type Machine struct {
	state        State
	failures     int
	degradeAfter int
}

// New returns a Machine in state Idle that turns degradeAfter consecutive
// RenewFailed events into FailuresExceeded. degradeAfter below 1 is an
// error.
func New(degradeAfter int) (*Machine, error) {
	if degradeAfter < 1 {
		return nil, fmt.Errorf("statemachine: degradeAfter must be at least 1, got %d", degradeAfter)
	}
	return &Machine{degradeAfter: degradeAfter}, nil
}

// State returns the current state.
func (m *Machine) State() State { return m.state }

// Failures returns the number of RenewFailed events since the last success.
func (m *Machine) Failures() int { return m.failures }

// Step applies event e, caused by cause at time at. It returns the
// transition and true when the state changed, and false otherwise (same
// state, or the machine is Closed).
func (m *Machine) Step(e Event, cause error, at time.Time) (Transition, bool) {
	if m.state == Closed {
		return Transition{}, false
	}
	switch e {
	case RenewOK, Recovered:
		m.failures = 0
	case RenewFailed:
		m.failures++
		if m.failures >= m.degradeAfter {
			e = FailuresExceeded
		}
	}
	next := Next(m.state, e)
	if next == m.state {
		return Transition{}, false
	}
	t := Transition{From: m.state, To: next, Cause: cause, At: at}
	m.state = next
	return t, true
}
