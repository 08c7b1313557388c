// Command schedule measures how the keeper schedules its renewals: it
// prints, a line each with tab-separated fields (design, lateness p50,
// lateness p99, bytes per renewal), the figures of n pending renewals kept
// as alarms of one alarm.Set, as time.AfterFunc timers, and as entries of
// a heap a ticker polls. The compare command runs it and writes the table
// of BENCHMARKS.md; it lives here because alarm is the keeper's own.
package main

import (
	"container/heap"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/leasekeeper/leasekeeper/keeper/internal/alarm"
)

func main() {
	n := flag.Int("timers", 1000000, "pending renewals")
	flag.Parse()
	if *n < 1 {
		fmt.Fprintln(os.Stderr, "schedule: -timers must be positive")
		os.Exit(2)
	}
	for _, r := range timerFigure(*n) {
		fmt.Println(strings.Join(r, "\t"))
	}
}

func progress(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "%s  %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
}

// timerFigure schedules n renewals due over one to eleven seconds
// (100,000 a second for a million, the rate of a million 30 s leases), as
// alarms of one alarm.Set (the keeper's design: one runtime timer over a
// heap, per client), as time.AfterFunc timers, and as entries of a heap
// that one goroutine polls with a 10 ms ticker, and returns a row of
// lateness and memory for each.
func timerFigure(n int) [][]string {
	progress("scheduling: %d alarms of one alarm.Set", n)
	sLate, sMem := alarmSet(n)
	progress("scheduling: %d AfterFunc timers", n)
	aLate, aMem := afterFuncTimers(n)
	progress("scheduling: a ticker loop over %d entries", n)
	tLate, tMem := tickerLoop(n)
	row := func(name string, late []time.Duration, mem float64) []string {
		slices.Sort(late)
		p := func(q float64) string { return late[int(q*float64(len(late)-1))].Round(10 * time.Microsecond).String() }
		return []string{name, p(0.5), p(0.99), fmt.Sprintf("%.0f", mem)}
	}
	return [][]string{
		row("one runtime timer over a heap, keeper/internal/alarm (the keeper)", sLate, sMem),
		row("time.AfterFunc per renewal", aLate, aMem),
		row("one goroutine, 10 ms ticker over a heap", tLate, tMem),
	}
}

func heapInUse() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapInuse
}

func dueTimes(n int) []time.Duration {
	d := make([]time.Duration, n)
	for i := range d {
		d[i] = time.Second + time.Duration(rand.Int64N(int64(10*time.Second)))
	}
	return d
}

func afterFuncTimers(n int) ([]time.Duration, float64) {
	due := dueTimes(n)
	late := make([]time.Duration, n)
	var wg sync.WaitGroup
	wg.Add(n)
	before := heapInUse()
	timers := make([]*time.Timer, n)
	for i := range n {
		at := time.Now().Add(due[i])
		timers[i] = time.AfterFunc(due[i], func() {
			late[i] = time.Since(at)
			wg.Done()
		})
	}
	mem := float64(heapInUse()-min(heapInUse(), before)) / float64(n)
	wg.Wait()
	runtime.KeepAlive(timers)
	return late, mem
}

// timedRing is one pending renewal of alarmSet: its alarm, and what it
// notes when it rings.
type timedRing struct {
	a    alarm.Alarm
	at   time.Time
	late *time.Duration
	wg   *sync.WaitGroup
}

func (r *timedRing) Ring() {
	*r.late = time.Since(r.at)
	r.wg.Done()
}

func alarmSet(n int) ([]time.Duration, float64) {
	due := dueTimes(n)
	late := make([]time.Duration, n)
	var wg sync.WaitGroup
	wg.Add(n)
	before := heapInUse()
	var s alarm.Set
	defer s.Close()
	rings := make([]timedRing, n)
	for i := range rings {
		r := &rings[i]
		r.at, r.late, r.wg = time.Now().Add(due[i]), &late[i], &wg
		r.a.On(r)
		s.Set(&r.a, r.at)
	}
	mem := float64(heapInUse()-min(heapInUse(), before)) / float64(n)
	wg.Wait()
	return late, mem
}

type entry struct {
	at time.Time
	i  int
}

type entries []entry

func (h entries) Len() int           { return len(h) }
func (h entries) Less(i, j int) bool { return h[i].at.Before(h[j].at) }
func (h entries) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *entries) Push(x any)        { *h = append(*h, x.(entry)) }
func (h *entries) Pop() any {
	old := *h
	e := old[len(old)-1]
	*h = old[:len(old)-1]
	return e
}

func tickerLoop(n int) ([]time.Duration, float64) {
	due := dueTimes(n)
	late := make([]time.Duration, n)
	before := heapInUse()
	h := make(entries, 0, n)
	var mu sync.Mutex
	for i := range n {
		h = append(h, entry{time.Now().Add(due[i]), i})
	}
	heap.Init(&h)
	mem := float64(heapInUse()-min(heapInUse(), before)) / float64(n)
	var fired atomic.Int64
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for fired.Load() < int64(n) {
		now := <-t.C
		mu.Lock()
		for len(h) > 0 && !h[0].at.After(now) {
			e := heap.Pop(&h).(entry)
			late[e.i] = time.Since(e.at)
			fired.Add(1)
		}
		mu.Unlock()
	}
	return late, mem
}
