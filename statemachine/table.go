package statemachine

// table is the whole transition relation: table[state][event] is the next
// state. doc.go lists the same edges; TestTable walks every pair.
//
// Rules it encodes: successes lead to Healthy from any live state; failures
// while time is left never lead to Failed; only the deadline, the server's
// word or a permanent error do; Closed absorbs everything; Draining absorbs
// everything but Close.
var table = [numStates][numEvents]State{
	Idle: {
		RenewOK:          Healthy,
		Recovered:        Healthy,
		RenewFailed:      Failed, // no lease yet: nothing is registered
		FailuresExceeded: Failed,
		TimeLow:          Idle,
		DeadlineReached:  Idle,
		LeaseLost:        Failed,
		PermanentFailure: Failed,
		Close:            Closed,
		Drain:            Draining,
	},
	Healthy: {
		RenewOK:          Healthy,
		Recovered:        Healthy,
		RenewFailed:      Healthy,
		FailuresExceeded: Degraded,
		TimeLow:          Degraded,
		DeadlineReached:  Failed,
		LeaseLost:        Failed,
		PermanentFailure: Failed,
		Close:            Closed,
		Drain:            Draining,
	},
	Degraded: {
		RenewOK:          Healthy,
		Recovered:        Healthy,
		RenewFailed:      Degraded,
		FailuresExceeded: Degraded,
		TimeLow:          Degraded,
		DeadlineReached:  Failed,
		LeaseLost:        Failed,
		PermanentFailure: Failed,
		Close:            Closed,
		Drain:            Draining,
	},
	Failed: {
		RenewOK:          Healthy,
		Recovered:        Healthy,
		RenewFailed:      Failed,
		FailuresExceeded: Failed,
		TimeLow:          Failed,
		DeadlineReached:  Failed,
		LeaseLost:        Failed,
		PermanentFailure: Failed,
		Close:            Closed,
		Drain:            Draining,
	},
	Closed: {
		RenewOK:          Closed,
		Recovered:        Closed,
		RenewFailed:      Closed,
		FailuresExceeded: Closed,
		TimeLow:          Closed,
		DeadlineReached:  Closed,
		LeaseLost:        Closed,
		PermanentFailure: Closed,
		Close:            Closed,
		Drain:            Closed,
	},
	Draining: {
		RenewOK:          Draining,
		Recovered:        Draining,
		RenewFailed:      Draining,
		FailuresExceeded: Draining,
		TimeLow:          Draining,
		DeadlineReached:  Draining,
		LeaseLost:        Draining,
		PermanentFailure: Draining,
		Close:            Closed,
		Drain:            Draining,
	},
}

// Next returns the state that event e leads to from state s, without the
// failure counting a Machine does. Out-of-range arguments return s.
func Next(s State, e Event) State {
	if s < 0 || int(s) >= len(table) || e < 0 || int(e) >= numEvents {
		return s
	}
	return table[s][e]
}
