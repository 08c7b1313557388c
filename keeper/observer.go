package keeper

import (
	"time"

	"github.com/leasekeeper/leasekeeper/statemachine"
)

// Observer is told what a keeper does, for metrics and health adapters
// (see the keeper/metrics and keeper/grpchealth packages). Its methods are
// called from the goroutine that runs the callbacks, in order with them,
// without the keeper's locks held; they may call any method of the keeper.
// A slow observer delays later callbacks, never an attempt; a panic is
// recovered and logged.
type Observer interface {
	// ObserveAttempt reports one finished attempt: "renew" or "grant", how
	// long it took, and its classified error, nil on success.
	ObserveAttempt(op string, took time.Duration, err error)
	// ObserveTransition reports each transition, in order, before the
	// callbacks.
	ObserveTransition(t statemachine.Transition)
}
