package keeper

import (
	"time"

	"github.com/leasekeeper/leasekeeper/statemachine"
)

// Observer is told what a keeper does, for metrics and health adapters
// (see the keeper/metrics and keeper/grpchealth packages). Its methods are
// called without the keeper's locks held and must return quickly; a panic
// is recovered and logged.
type Observer interface {
	// ObserveAttempt reports one finished attempt: "renew" or "grant", how
	// long it took, and its classified error, nil on success.
	ObserveAttempt(op string, took time.Duration, err error)
	// ObserveTransition reports each transition, in order, from the
	// goroutine that runs the callbacks, before the callbacks.
	ObserveTransition(t statemachine.Transition)
}

// Writable reports whether the service may accept writes now: the keeper is
// Healthy. It is as cheap as State.
func (k *Keeper) Writable() bool {
	return k.State() == statemachine.Healthy
}

// Keys returns the number of registered keys.
func (k *Keeper) Keys() int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return len(k.keys)
}

func (k *Keeper) observeAttempt(op string, took time.Duration, err error) {
	for _, o := range k.cfg.Observers {
		func() {
			defer k.recoverObserver("ObserveAttempt")
			o.ObserveAttempt(op, took, err)
		}()
	}
}

func (k *Keeper) observeTransition(t statemachine.Transition) {
	for _, o := range k.cfg.Observers {
		func() {
			defer k.recoverObserver("ObserveTransition")
			o.ObserveTransition(t)
		}()
	}
}
