package keeper

import (
	"sync"
	"time"
)

// alarms runs the timers of every keeper on one hub (when each keeper's
// next attempt is due, when its state moves at the degrade threshold or at
// D, when an attempt's next keepalive goes out) off one runtime timer, on
// one goroutine at a time. Keepers renew together on the renewal grid: with
// a runtime timer each, a thousand keepers due at one point would start a
// thousand goroutines at once, whose descriptors the runtime then keeps for
// good, and a thousand timers in the heap besides. Here they cost an alarm
// each in the keeper, and a slot in one heap while set.
//
// An alarm rings on the goroutine of the runtime timer, one after
// the other with every alarm due at the same time: it must not block.
type alarms struct {
	mu    sync.Mutex
	heap  []*alarm    // by at, earliest first
	t     *time.Timer // fires at armed, for heap[0]
	armed time.Time   // zero while t is stopped or firing
	base  time.Time   // what the alarms' times count from: the first set
}

// alarm is one timer in alarms: r rings at at, unless stopped first.
type alarm struct {
	r  ringer
	at time.Duration // since the alarms' base: 8 bytes in the keeper, not a time.Time's 24
	i  int           // index in the heap plus one; 0 while not set
}

// ringer is what an alarm calls.
type ringer interface{ ring() }

// set makes a ring at at, whether or not it was set.
func (s *alarms) set(a *alarm, at time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.base.IsZero() {
		s.base = at
	}
	a.at = at.Sub(s.base)
	if a.i == 0 {
		s.heap = append(s.heap, a)
		a.i = len(s.heap)
		s.up(a.i - 1)
	} else if !s.up(a.i - 1) {
		s.down(a.i - 1)
	}
	s.armLocked()
}

// stop unsets a; it reports whether a was set.
func (s *alarms) stop(a *alarm) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if a.i == 0 {
		return false
	}
	s.removeLocked(a)
	return true
}

// pending reports whether a is set.
func (s *alarms) pending(a *alarm) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return a.i != 0
}

// when returns when a rings, and whether it is set.
func (s *alarms) when(a *alarm) (time.Time, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.base.Add(a.at), a.i != 0
}

// close stops the runtime timer; every alarm must be stopped already.
func (s *alarms) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.t != nil {
		s.t.Stop()
	}
	s.armed = time.Time{}
}

// fire is the runtime timer's function: it takes every alarm due and runs
// them in order.
func (s *alarms) fire() {
	s.mu.Lock()
	s.armed = time.Time{}
	now := time.Since(s.base)
	var due []*alarm
	for len(s.heap) > 0 && s.heap[0].at <= now {
		a := s.heap[0]
		s.removeLocked(a)
		due = append(due, a)
	}
	s.armLocked()
	s.mu.Unlock()
	for _, a := range due {
		a.r.ring()
	}
}

// armLocked makes the runtime timer fire when the earliest alarm is due,
// unless it already fires no later.
func (s *alarms) armLocked() {
	if len(s.heap) == 0 {
		return
	}
	at := s.base.Add(s.heap[0].at)
	if !s.armed.IsZero() && !s.armed.After(at) {
		return
	}
	s.armed = at
	if s.t == nil {
		s.t = time.AfterFunc(time.Until(at), s.fire)
		return
	}
	s.t.Reset(time.Until(at))
}

func (s *alarms) removeLocked(a *alarm) {
	i, last := a.i-1, len(s.heap)-1
	if i != last {
		s.swap(i, last)
	}
	s.heap[last] = nil
	s.heap = s.heap[:last]
	a.i = 0
	if i != last && !s.up(i) {
		s.down(i)
	}
}

func (s *alarms) less(i, j int) bool { return s.heap[i].at < s.heap[j].at }

func (s *alarms) swap(i, j int) {
	s.heap[i], s.heap[j] = s.heap[j], s.heap[i]
	s.heap[i].i, s.heap[j].i = i+1, j+1
}

// up moves the alarm at i towards the root while it is due sooner than
// its parent; it reports whether it moved.
func (s *alarms) up(i int) bool {
	moved := false
	for i > 0 {
		p := (i - 1) / 2
		if !s.less(i, p) {
			break
		}
		s.swap(i, p)
		i, moved = p, true
	}
	return moved
}

func (s *alarms) down(i int) {
	n := len(s.heap)
	for {
		c := 2*i + 1
		if c >= n {
			return
		}
		if r := c + 1; r < n && s.less(r, c) {
			c = r
		}
		if !s.less(c, i) {
			return
		}
		s.swap(i, c)
		i = c
	}
}
