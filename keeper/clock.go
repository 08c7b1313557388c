package keeper

import (
	"fmt"
	"time"

	"github.com/leasekeeper/leasekeeper/statemachine"
)

// The clock's part of the lease loop: the state moves at the degrade
// threshold and at the local deadline D by a timer, and whoever asks for
// the state in between gets what the clock says, without moving anything.

// stateAtLocked returns the state at now, changing nothing: the machine's
// state, unless the clock already contradicts it because the timer that
// moves the machine at the degrade threshold or at D has not fired yet, as
// after a pause of the process (GC, SIGSTOP, a suspended VM), whose timers
// fire late. So no caller sees Healthy or Degraded after D.
func (l *leaseLoop) stateAtLocked(now time.Time) statemachine.State {
	st := l.m.State()
	if (st != statemachine.Healthy && st != statemachine.Degraded) || l.lease.id == 0 || l.lease.gone {
		return st
	}
	switch {
	case !now.Before(l.lease.deadline):
		return statemachine.Failed
	case st == statemachine.Healthy && !now.Before(l.lease.deadline.Add(-l.timingLocked().threshold)):
		return statemachine.Degraded
	}
	return st
}

func withLast(cause, last error) error {
	if last == nil {
		return cause
	}
	return fmt.Errorf("%w: last error: %w", cause, last)
}

// checkTimeLocked moves the machine for the deadline and the degrade
// threshold as they stand at now. The check timer and the attempts call it;
// readers use stateAtLocked.
func (l *leaseLoop) checkTimeLocked(now time.Time) {
	st := l.m.State()
	if (st != statemachine.Healthy && st != statemachine.Degraded) || l.lease.id == 0 || l.lease.gone {
		return
	}
	switch {
	case !now.Before(l.lease.deadline):
		// The keeper is Failed from D on, as State said since: the
		// transition is dated D, however late its timer fired.
		l.stepLocked(statemachine.DeadlineReached, withLast(ErrDeadline, l.fails.last), l.lease.deadline)
		// Timers that fired late (a paused process) may have left no
		// attempt behind: recovery starts now.
		if !l.k.hub.timers.Pending(&l.sched.attempt) && !l.running && l.recoveringLocked() {
			l.scheduleLocked(0)
		}
	case st == statemachine.Healthy && !now.Before(l.lease.deadline.Add(-l.timingLocked().threshold)):
		l.stepLocked(statemachine.TimeLow, withLast(ErrTimeLow, l.fails.last), now)
		l.rearmCheckLocked(now)
	}
}

// rearmCheckLocked sets the check timer to the next time boundary that may
// change the state: the degrade threshold while Healthy, then the deadline.
func (l *leaseLoop) rearmCheckLocked(now time.Time) {
	st := l.m.State()
	if l.k.life.closed() || l.lease.id == 0 || l.lease.gone || (st != statemachine.Healthy && st != statemachine.Degraded) {
		l.k.hub.timers.Stop(&l.sched.check)
		return
	}
	at := l.lease.deadline
	if low := l.lease.deadline.Add(-l.timingLocked().threshold); st == statemachine.Healthy && now.Before(low) {
		at = low
	}
	l.k.hub.timers.Set(&l.sched.check, at)
}

// onCheck is the check alarm's function.
func (l *leaseLoop) onCheck() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.k.life.closed() {
		return
	}
	now := time.Now()
	l.checkTimeLocked(now)
	if !l.k.hub.timers.Pending(&l.sched.check) {
		l.rearmCheckLocked(now)
	}
}
