// Package alarm runs many timers off one runtime timer: the timers of
// every keeper on one etcd client (when each keeper's next attempt is due,
// when its state moves at the degrade threshold or at its deadline, when
// an attempt's next keepalive goes out).
package alarm

import (
	"sync"
	"sync/atomic"
	"time"
)

// Set runs its alarms off one runtime timer, on one goroutine at a time.
// Keepers renew together on the renewal grid: with a runtime timer each, a
// thousand keepers due at one point would start a thousand goroutines at
// once, whose descriptors the runtime then keeps for good, and a thousand
// timers in the heap besides. In a Set they cost an Alarm each, in the
// keeper, and a slot in one heap while set. Its zero value is ready.
//
// An alarm rings on the goroutine of the runtime timer, one after the
// other with every alarm due at the same time: its Ringer must not block.
type Set struct {
	ringing atomic.Bool // fire rings a batch
	after   func()      // run after every batch; set before the first alarm

	mu    sync.Mutex
	heap  []slot      // by at, earliest first
	t     *time.Timer // fires at armed, for heap[0]
	armed time.Time   // zero while t is stopped or firing
	base  time.Time   // what the alarms' times count from: the first set
}

// Alarm is one timer in a Set: its Ringer rings at its time, unless it
// is stopped first. Its zero value, given a Ringer with On, is ready.
type Alarm struct {
	r  Ringer
	at time.Duration // since the Set's base: 8 bytes, not a time.Time's 24
	i  int           // index in the heap plus one; 0 while not set
}

// slot is an alarm in the heap, with its time beside it: the heap's
// comparisons read the slots, which lie together, and not the alarms,
// which lie wherever their keepers do.
type slot struct {
	at time.Duration
	a  *Alarm
}

// Ringer is what an Alarm calls.
type Ringer interface{ Ring() }

// On makes r what a rings; a must not be set.
func (a *Alarm) On(r Ringer) { a.r = r }

// Set makes a ring at at, whether or not it was set.
func (s *Set) Set(a *Alarm, at time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.base.IsZero() {
		s.base = at
	}
	a.at = at.Sub(s.base)
	if a.i == 0 {
		s.heap = append(s.heap, slot{a.at, a})
		a.i = len(s.heap)
		s.up(a.i - 1)
	} else if s.heap[a.i-1].at = a.at; !s.up(a.i - 1) {
		s.down(a.i - 1)
	}
	s.armLocked()
}

// Stop unsets a; it reports whether a was set.
func (s *Set) Stop(a *Alarm) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if a.i == 0 {
		return false
	}
	s.removeLocked(a)
	return true
}

// Pending reports whether a is set.
func (s *Set) Pending(a *Alarm) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return a.i != 0
}

// When returns when a rings, and whether it is set.
func (s *Set) When(a *Alarm) (time.Time, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.base.Add(a.at), a.i != 0
}

// Close stops the runtime timer; every alarm must be stopped already.
func (s *Set) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.t != nil {
		s.t.Stop()
	}
	s.armed = time.Time{}
}

// fire is the runtime timer's function: it takes every alarm due and runs
// them in order.
func (s *Set) fire() {
	s.mu.Lock()
	s.armed = time.Time{}
	now := time.Since(s.base)
	var due []*Alarm
	for len(s.heap) > 0 && s.heap[0].at <= now {
		a := s.heap[0].a
		s.removeLocked(a)
		due = append(due, a)
	}
	s.armLocked()
	s.mu.Unlock()
	s.ringing.Store(true)
	for _, a := range due {
		a.r.Ring()
	}
	s.ringing.Store(false)
	if s.after != nil {
		s.after()
	}
}

// AfterRings makes f run after every batch of alarms rung together, on
// their goroutine, once the last of them returned: what their Ringers
// began together (keepalives queued to be sent) can end together. It must
// not block. Call it before the first Set.
func (s *Set) AfterRings(f func()) { s.after = f }

// Ringing reports whether a batch of alarms is ringing: a Ringer's work
// may then wait for the batch's end (AfterRings).
func (s *Set) Ringing() bool { return s.ringing.Load() }

// armLocked makes the runtime timer fire when the earliest alarm is due,
// unless it already fires no later.
func (s *Set) armLocked() {
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

func (s *Set) removeLocked(a *Alarm) {
	i, last := a.i-1, len(s.heap)-1
	if i != last {
		s.swap(i, last)
	}
	s.heap[last] = slot{}
	s.heap = s.heap[:last]
	a.i = 0
	if i != last && !s.up(i) {
		s.down(i)
	}
}

func (s *Set) less(i, j int) bool { return s.heap[i].at < s.heap[j].at }

func (s *Set) swap(i, j int) {
	s.heap[i], s.heap[j] = s.heap[j], s.heap[i]
	s.heap[i].a.i, s.heap[j].a.i = i+1, j+1
}

// up moves the alarm at i towards the root while it is due sooner than
// its parent; it reports whether it moved.
func (s *Set) up(i int) bool {
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

func (s *Set) down(i int) {
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
