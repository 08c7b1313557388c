package keeper

import (
	"context"
	"fmt"
	"time"

	"google.golang.org/grpc/connectivity"

	"github.com/leasekeeper/leasekeeper/statemachine"
)

func withLast(cause, last error) error {
	if last == nil {
		return cause
	}
	return fmt.Errorf("%w: last error: %w", cause, last)
}

// checkTimeLocked steps the machine for the deadline and the degrade
// threshold as they stand at now. Everything that reports a state calls it
// first, so no caller sees a state the clock already contradicts.
func (k *Keeper) checkTimeLocked(now time.Time) {
	st := k.m.State()
	if (st != statemachine.Healthy && st != statemachine.Degraded) || k.leaseID == 0 || k.gone {
		return
	}
	switch {
	case !now.Before(k.deadline):
		k.stepLocked(statemachine.DeadlineReached, withLast(ErrDeadline, k.lastErr), now)
		// Timers that fired late (a paused process) may have left no
		// attempt behind: recovery starts now.
		if k.attemptT == nil && !k.running && k.recoveringLocked() {
			k.scheduleLocked(0)
		}
	case st == statemachine.Healthy && !now.Before(k.deadline.Add(-k.timing().threshold)):
		k.stepLocked(statemachine.TimeLow, withLast(ErrTimeLow, k.lastErr), now)
		k.rearmCheckLocked(now)
	}
}

// rearmCheckLocked sets the check timer to the next time boundary that may
// change the state: the degrade threshold while Healthy, then the deadline.
func (k *Keeper) rearmCheckLocked(now time.Time) {
	k.stopTimer(&k.checkT)
	st := k.m.State()
	if k.closed || k.leaseID == 0 || k.gone || (st != statemachine.Healthy && st != statemachine.Degraded) {
		return
	}
	at := k.deadline
	if low := k.deadline.Add(-k.timing().threshold); st == statemachine.Healthy && now.Before(low) {
		at = low
	}
	k.checkT = time.AfterFunc(at.Sub(now), k.onCheck)
}

func (k *Keeper) onCheck() {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.closed {
		return
	}
	k.checkT = nil
	now := time.Now()
	k.checkTimeLocked(now)
	if k.checkT == nil {
		k.rearmCheckLocked(now)
	}
}

// stepLocked applies an event and queues the transition, if any, for the
// callbacks.
func (k *Keeper) stepLocked(e statemachine.Event, cause error, now time.Time) {
	t, changed := k.m.Step(e, cause, now)
	if !changed {
		return
	}
	k.signalLocked()
	k.enqueueLocked(t)
}

// signalLocked wakes everyone waiting for progress (Start).
func (k *Keeper) signalLocked() {
	close(k.progress)
	k.progress = make(chan struct{})
}

// watchConnLocked starts, unless one runs, a goroutine that waits for the
// client connection to become READY and then runs the next attempt at once
// instead of waiting out the backoff. It only starts while the connection
// is not READY, so a failure on a READY connection cannot loop through it.
func (k *Keeper) watchConnLocked() {
	if k.watching || k.closed || k.b.connState() == connectivity.Ready {
		return
	}
	ctx, cancel := context.WithCancel(k.ctx)
	k.watching, k.unwatch = true, cancel
	k.wg.Add(1)
	go func() {
		defer k.wg.Done()
		defer cancel()
		ready := k.b.waitReady(ctx)
		k.mu.Lock()
		defer k.mu.Unlock()
		k.watching, k.unwatch = false, nil
		if ready && !k.closed && !k.running && k.attemptT != nil {
			k.log.Debug("connection ready: attempting now")
			k.scheduleLocked(0)
		}
	}()
}

func (k *Keeper) stopWatchLocked() {
	if k.unwatch != nil {
		k.unwatch()
	}
}
