// Package statemachine is the pure core of a lease keeper: events in,
// transitions out. It does no I/O, starts no goroutines and reads no clock,
// so every path through it is testable without etcd or time.
//
// # States
//
//	idle      not started; the zero value
//	healthy   lease confirmed alive, every key written
//	degraded  lease alive by the local deadline, renewals failing
//	failed    registration must be assumed gone; recovery goes on
//	draining  a planned shutdown: keys deregistered, writes still open
//	closed    closed; absorbs every event
//
// # Edges
//
// The table in table.go is the whole relation; these are its edges that
// change state:
//
//	idle     --renew ok, recovered-------------------------------> healthy
//	idle     --renew failed, lease lost, permanent failure-------> failed
//	healthy  --failures exceeded, time low-----------------------> degraded
//	healthy  --deadline reached, lease lost, permanent failure---> failed
//	degraded --renew ok, recovered-------------------------------> healthy
//	degraded --deadline reached, lease lost, permanent failure---> failed
//	failed   --renew ok, recovered-------------------------------> healthy
//	any live --drain---------------------------------------------> draining
//	any live --close---------------------------------------------> closed
//
// A Machine counts consecutive RenewFailed events and turns the one that
// reaches DegradeAfter into FailuresExceeded; any success resets the count.
//
// # Guarantees
//
//   - Failures while time is left (renew failed, failures exceeded, time
//     low) never lead to Failed: only the deadline, the server's word that
//     the lease is gone, or a permanent error do.
//   - After deadline reached, the state is Failed until a later success.
//   - After drain, only close changes the state: renewals, failures and the
//     deadline no longer move it, since the keys are withdrawn on purpose.
//   - After close, nothing changes and no transition is reported.
//   - Step reports a transition only when the state changes.
//
// # Non-guarantees
//
//   - The machine trusts its caller for time: it cannot tell that a deadline
//     passed unless it is told. The keeper computes its state against the
//     deadline whenever it is asked.
package statemachine
