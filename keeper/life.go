package keeper

import (
	"context"
	"sync"
)

// life is a keeper's lifecycle: a context that ends at Close and bounds
// all the keeper's work, and the count of that work in flight (attempts,
// the watches, Register and Deregister), which Close waits for within its
// own context. Unlike a sync.WaitGroup, waiting honours a context. mu
// guards n and idle.
type life struct {
	ctx    context.Context
	cancel context.CancelFunc

	mu   sync.Mutex
	n    int
	idle chan struct{} // closed when n drops to zero; nil while nobody waits
}

func newLife() *life {
	l := &life{}
	l.ctx, l.cancel = context.WithCancel(context.Background())
	return l
}

// closed reports whether Close was called.
func (l *life) closed() bool { return l.ctx.Err() != nil }

// begin counts one piece of work in flight. It returns false, counting
// nothing, once Close was called.
func (l *life) begin() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.ctx.Err() != nil {
		return false
	}
	l.n++
	return true
}

// end ends a piece of work that begin counted.
func (l *life) end() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.n--; l.n == 0 && l.idle != nil {
		close(l.idle)
		l.idle = nil
	}
}

// close ends the context, which makes the work in flight end promptly and
// refuses new work. Only the first call returns true.
func (l *life) close() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.ctx.Err() != nil {
		return false
	}
	l.cancel()
	return true
}

// wait waits until no work is in flight, or ctx ends.
func (l *life) wait(ctx context.Context) error {
	l.mu.Lock()
	if l.n == 0 {
		l.mu.Unlock()
		return nil
	}
	if l.idle == nil {
		l.idle = make(chan struct{})
	}
	idle := l.idle
	l.mu.Unlock()
	select {
	case <-idle:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// bound returns ctx, ended also when the keeper closes, so that no call
// made for a caller outlives Close.
func (l *life) bound(ctx context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(l.ctx, cancel)
	return ctx, func() {
		stop()
		cancel()
	}
}
