package keeper

import (
	"context"
	"sync"
	"time"
)

// life is a keeper's lifecycle: a context that ends at Close and bounds
// all the keeper's work, and the count of that work in flight (attempts,
// the watches, Register and Deregister), which Close waits for within its
// own context. Unlike a sync.WaitGroup, waiting honours a context. mu
// guards n, idle, ended and the functions to call at it.
//
// The context is life itself, not a context.WithCancel: its AfterFunc lets
// the contexts derived from it register with it for the time they live,
// where a cancelCtx would keep a map of its children for as long as the
// keeper lives, after the first one. Its Done channel is made only when
// asked for: the keeper's own RPCs take contexts from within, which ends
// them at Close by AfterFunc instead.
type life struct {
	mu    sync.Mutex
	n     int32         // work in flight
	ended bool          // Close was called
	idle  chan struct{} // closed when n drops to zero; nil while nobody waits
	done  chan struct{} // closed at Close; made when first asked for
	after afterList     // called at Close
}

// ctx returns the life as a context.
func (l *life) ctx() context.Context { return lifeCtx{l} }

// closed reports whether Close was called.
func (l *life) closed() bool { return lifeCtx{l}.Err() != nil }

// begin counts one piece of work in flight. It returns false, counting
// nothing, once Close was called.
func (l *life) begin() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.ended {
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
	if l.ended {
		l.mu.Unlock()
		return false
	}
	l.ended = true
	if l.done == nil {
		l.done = closedChan
	} else {
		close(l.done)
	}
	cs := l.after.take()
	l.mu.Unlock()
	for _, c := range cs {
		c.onClose()
	}
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
	return l.tie(context.WithCancel(ctx))
}

// tie makes ctx, which cancel ends, end also when the life does, at once
// if it has, and returns it with the cancel that also undoes the tie.
func (l *life) tie(ctx context.Context, cancel context.CancelFunc) (context.Context, context.CancelFunc) {
	if l.closed() {
		cancel()
		return ctx, cancel
	}
	stop := l.afterClose(cancel)
	return ctx, func() {
		stop()
		cancel()
	}
}

// afterClose calls f once the life ends, as context.AfterFunc would,
// without the context it makes.
func (l *life) afterClose(f func()) (stop func() bool) { return lifeCtx{l}.AfterFunc(f) }

// within returns a context that ends after timeout, at limit if limit is
// set, still ahead and sooner, or at Close. It is not derived from the
// life's context, whose Done channel a keeper then never needs to make.
func (l *life) within(timeout time.Duration, limit time.Time) (context.Context, context.CancelFunc) {
	return l.tie(context.WithDeadline(context.Background(), attemptEnd(time.Now(), timeout, limit)))
}

// lifeCtx is a life as a context.Context. Its AfterFunc is what
// context.WithCancel and its kin use to hear of its end.
type lifeCtx struct{ l *life }

func (lifeCtx) Deadline() (time.Time, bool) { return time.Time{}, false }
func (c lifeCtx) Done() <-chan struct{} {
	c.l.mu.Lock()
	defer c.l.mu.Unlock()
	if c.l.done == nil {
		c.l.done = make(chan struct{})
	}
	return c.l.done
}
func (lifeCtx) Value(any) any { return nil }

func (c lifeCtx) Err() error {
	c.l.mu.Lock()
	defer c.l.mu.Unlock()
	if c.l.ended {
		return context.Canceled
	}
	return nil
}

// AfterFunc calls f once the life ends, at once (on a goroutine of its own)
// if it has; stop undoes that if f was not called yet.
func (c lifeCtx) AfterFunc(f func()) (stop func() bool) {
	e := &afterEntry{}
	if !c.l.onClose(e, afterFunc(f)) {
		go f()
		return func() bool { return false }
	}
	return func() bool { return c.l.removeOnClose(e) }
}

// onClose has c's onClose called once the life ends, through e, which the
// caller keeps (in an object it allocates anyway, so that this allocates
// nothing); removeOnClose(e) undoes it. It returns false, and does
// nothing, if the life has ended.
func (l *life) onClose(e *afterEntry, c closer) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.ended {
		return false
	}
	e.c = c
	l.after.add(e)
	return true
}

// removeOnClose undoes onClose, and reports whether it did before the
// life ended.
func (l *life) removeOnClose(e *afterEntry) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.after.remove(e)
}

// closer is what a life calls at its end.
type closer interface{ onClose() }

// afterFunc is a function as a closer; a func fits in an interface without
// an allocation.
type afterFunc func()

func (f afterFunc) onClose() { f() }

// afterList is a list of closers, each entry in the list only while it is
// to be called.
type afterList struct{ head *afterEntry }

type afterEntry struct {
	c          closer
	prev, next *afterEntry
	in         bool
}

func (a *afterList) add(e *afterEntry) {
	e.next, e.in = a.head, true
	if a.head != nil {
		a.head.prev = e
	}
	a.head = e
}

func (a *afterList) remove(e *afterEntry) bool {
	if !e.in {
		return false
	}
	e.in = false
	if e.prev != nil {
		e.prev.next = e.next
	} else {
		a.head = e.next
	}
	if e.next != nil {
		e.next.prev = e.prev
	}
	e.prev, e.next = nil, nil
	return true
}

// take empties the list and returns its closers.
func (a *afterList) take() []closer {
	var cs []closer
	for e := a.head; e != nil; e = e.next {
		e.in = false
		cs = append(cs, e.c)
	}
	a.head = nil
	return cs
}
