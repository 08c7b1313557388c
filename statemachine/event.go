package statemachine

import "strconv"

// Event is something that happened to a keeper's registration.
type Event int

const (
	// RenewOK means a renewal of the held lease succeeded and every
	// registered key is written.
	RenewOK Event = iota
	// Recovered means a new lease was granted and every key was written with
	// it.
	Recovered
	// RenewFailed means an attempt failed with a retryable error; the lease
	// may still be alive.
	RenewFailed
	// FailuresExceeded is RenewFailed once the consecutive failures reach the
	// machine's DegradeAfter. The machine derives it; callers send RenewFailed.
	FailuresExceeded
	// TimeLow means the time left before the local deadline fell below the
	// degrade threshold.
	TimeLow
	// DeadlineReached means the local deadline passed without a successful
	// renewal: the lease may be gone on the server.
	DeadlineReached
	// LeaseLost means the server said the lease is gone.
	LeaseLost
	// PermanentFailure means an error that retrying at once cannot fix, such
	// as a denied permission.
	PermanentFailure
	// Close means the keeper was closed.
	Close
	// Drain means the service began a planned shutdown.
	Drain

	numEvents = iota
)

var eventNames = [numEvents]string{
	"renew ok", "recovered", "renew failed", "failures exceeded", "time low",
	"deadline reached", "lease lost", "permanent failure", "close", "drain",
}

// String returns the event's name in lower case, for example "lease lost".
func (e Event) String() string {
	if e >= 0 && int(e) < len(eventNames) {
		return eventNames[e]
	}
	return "event(" + strconv.Itoa(int(e)) + ")"
}

// Events returns every event in order.
func Events() []Event {
	es := make([]Event, numEvents)
	for i := range es {
		es[i] = Event(i)
	}
	return es
}
