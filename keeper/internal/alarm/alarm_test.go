package alarm

import (
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// ringLog is a ringer that notes when it rang, under a name.
type ringLog struct {
	name string
	mu   *sync.Mutex
	log  *[]string
	at   *[]time.Duration
	t0   time.Time
}

func (r ringLog) Ring() {
	r.mu.Lock()
	defer r.mu.Unlock()
	*r.log = append(*r.log, r.name)
	*r.at = append(*r.at, time.Since(r.t0))
}

// TestAlarmsRingInOrder: alarms ring at their time, in the order of their
// times whatever the order they were set in, each once; set again while
// pending, an alarm moves; stopped, it does not ring; alarms due together
// ring one after the other on one goroutine.
func TestAlarmsRingInOrder(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var s Set
		defer s.Close()
		var mu sync.Mutex
		var log []string
		var at []time.Duration
		t0 := time.Now()
		mk := func(name string) *Alarm {
			return &Alarm{r: ringLog{name: name, mu: &mu, log: &log, at: &at, t0: t0}}
		}
		a, b, c, d, e := mk("a"), mk("b"), mk("c"), mk("d"), mk("e")
		s.Set(c, t0.Add(3*time.Second))
		s.Set(a, t0.Add(1*time.Second))
		s.Set(b, t0.Add(5*time.Second))
		s.Set(d, t0.Add(2*time.Second))
		s.Set(e, t0.Add(2*time.Second))
		s.Set(b, t0.Add(2500*time.Millisecond)) // moved earlier while pending
		assert.True(t, s.Stop(d), "a pending alarm was not stopped")
		assert.False(t, s.Stop(d), "a stopped alarm was stopped again")
		when, ok := s.When(c)
		assert.True(t, ok)
		assert.Equal(t, t0.Add(3*time.Second), when)

		time.Sleep(10 * time.Second)
		synctest.Wait()
		mu.Lock()
		assert.Equal(t, []string{"a", "e", "b", "c"}, log)
		assert.Equal(t, []time.Duration{time.Second, 2 * time.Second, 2500 * time.Millisecond, 3 * time.Second}, at)
		mu.Unlock()
		for _, x := range []*Alarm{a, b, c, d, e} {
			assert.False(t, s.Pending(x), "an alarm that rang is still set")
		}
		assert.Empty(t, s.heap)

		// Set from its own ring, an alarm rings again; one set in the past
		// rings at once.
		var again Alarm
		var n atomic.Int32
		again.On(ringFunc(func() {
			if n.Add(1) < 3 {
				s.Set(&again, time.Now().Add(time.Second))
			}
		}))
		s.Set(&again, time.Now().Add(-time.Second))
		synctest.Wait()
		require.EqualValues(t, 1, n.Load(), "an alarm set in the past did not ring at once")
		time.Sleep(5 * time.Second)
		synctest.Wait()
		assert.EqualValues(t, 3, n.Load())
	})
}

type ringFunc func()

func (f ringFunc) Ring() { f() }
