package keeper

import (
	"sync"
	"time"

	lkerrors "github.com/leasekeeper/leasekeeper/errors"
	"github.com/leasekeeper/leasekeeper/statemachine"
)

// AttemptLog is an Observer that records every attempt a keeper reports,
// for the tests of this package and of keeper_test.
type AttemptLog struct {
	mu  sync.Mutex
	all []Attempt
}

// Attempt is one attempt: its op, when it started (the backoff counts from
// there), and its error and that error's kind.
type Attempt struct {
	Op   string
	At   time.Time
	Took time.Duration
	Kind lkerrors.Kind
	Err  error
}

func (a *AttemptLog) ObserveAttempt(op string, took time.Duration, err error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.all = append(a.all, Attempt{op, time.Now().Add(-took), took, lkerrors.KindOf(err), err})
}

func (a *AttemptLog) ObserveTransition(statemachine.Transition) {}

// Since returns the attempts started at or after t.
func (a *AttemptLog) Since(t time.Time) []Attempt {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []Attempt
	for _, x := range a.all {
		if !x.At.Before(t) {
			out = append(out, x)
		}
	}
	return out
}
