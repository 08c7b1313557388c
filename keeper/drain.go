package keeper

import (
	"context"
	"errors"
	"time"

	"github.com/leasekeeper/leasekeeper/statemachine"
)

// Drain withdraws the registration for a planned shutdown. In order, it:
//
//  1. deregisters every key, deleting it from etcd, so that resolvers drop
//     the instance;
//  2. moves the keeper to Draining, which health adapters report as
//     NOT_SERVING to new clients, while Writable stays true: a planned drain
//     is not a registration at risk, and the clients still pinned to the
//     instance finish their work;
//  3. waits for delay while the service goes on serving, or less if ctx
//     ends first;
//  4. calls stop, when it is not nil, to stop the service (a gRPC server's
//     GracefulStop, say), and waits for it to return;
//  5. closes the keeper, which revokes the lease.
//
// The revoke is bounded by the renew timeout, not by ctx, so that a drain
// cut short by its context still leaves no lease behind. Register and Start
// return ErrDraining from step 2 on, and a second Drain returns ErrDraining
// at once. The error is the first of the deletes (the keys then go with the
// lease at step 5) or of the revoke. Drain on a closed keeper returns
// ErrClosed.
//
// Called from a callback or an observer, Drain holds back the callbacks
// queued after it until it returns.
func (k *Keeper) Drain(ctx context.Context, delay time.Duration, stop func()) error {
	if !k.life.begin() {
		return ErrClosed
	}
	err := k.reg.withdraw(ctx)
	k.life.end()
	if errors.Is(err, ErrDraining) || errors.Is(err, ErrClosed) {
		return err
	}
	if delay > 0 {
		t := time.NewTimer(delay)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
		}
	}
	if stop != nil {
		stop()
	}
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), k.loop.view(time.Now()).tm.call)
	defer cancel()
	if cerr := k.Close(cctx); err == nil {
		err = cerr
	}
	return err
}

// drain moves the machine to Draining. From then on only Close changes
// the state.
func (l *leaseLoop) drain() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.k.hub.timers.Stop(&l.sched.check)
	l.stepLocked(statemachine.Drain, nil, time.Now())
}
