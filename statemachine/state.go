package statemachine

import (
	"strconv"
	"time"
)

// State is the health of a keeper's registration.
type State int

const (
	// Idle means the keeper has not started: no lease is held yet. It is the
	// zero value, so an unset State never reads as Healthy.
	Idle State = iota
	// Healthy means the lease is confirmed alive and every registered key is
	// written. Writes are safe.
	Healthy
	// Degraded means the lease is still alive by the local deadline, but
	// renewals are failing or time is running short. Stop accepting writes
	// and serve reads from cache.
	Degraded
	// Failed means the registration must be assumed gone. The keeper keeps
	// recovering in the background unless recovery is disabled.
	Failed
	// Closed means the keeper was closed. Nothing changes any more.
	Closed
	// Draining means the service is shutting down as planned: its keys are
	// deregistered and it serves for a last while before it closes. Writes
	// stay open: a drain is not a registration at risk. Only Close leaves
	// it.
	Draining

	numStates = iota
)

var stateNames = [numStates]string{"idle", "healthy", "degraded", "failed", "closed", "draining"}

// String returns the state's name in lower case, for example "healthy".
func (s State) String() string {
	if s >= 0 && int(s) < len(stateNames) {
		return stateNames[s]
	}
	return "state(" + strconv.Itoa(int(s)) + ")"
}

// States returns every state in order.
func States() []State {
	ss := make([]State, numStates)
	for i := range ss {
		ss[i] = State(i)
	}
	return ss
}

// Transition is one change of state.
type Transition struct {
	// From is the state before the change.
	From State
	// To is the state after the change; never equal to From.
	To State
	// Cause is the error that caused the change, nil for successes and Close.
	Cause error
	// At is when the change happened.
	At time.Time
}

// String returns "from -> to", with the cause when there is one.
func (t Transition) String() string {
	s := t.From.String() + " -> " + t.To.String()
	if t.Cause != nil {
		s += " (" + t.Cause.Error() + ")"
	}
	return s
}
