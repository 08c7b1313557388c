package main

import (
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/leasekeeper/leasekeeper/keeper"
	"github.com/leasekeeper/leasekeeper/statemachine"
)

// soakTTL is the lease TTL of the many-keepers run.
const soakTTL = 10 * time.Second

// renewalWatch follows one keeper's renewals from the outside: after each
// successful renewal it reads the keeper's deadline, D = sent + TTL -
// margin, to learn when the renewal was sent, and compares that with when
// it was due: TTL/3 after the previous one was sent, on the renewal grid,
// as keeper's doc says. It also counts the transitions away from Healthy.
type renewalWatch struct {
	k        atomic.Pointer[keeper.Keeper] // set once the keeper is made
	s        *soakStats
	lastSent time.Time
}

// soakStats gathers what every renewalWatch saw.
type soakStats struct {
	measuring atomic.Bool
	left      atomic.Int64 // transitions away from Healthy while measuring

	mu       sync.Mutex
	lateness []time.Duration
}

func (w *renewalWatch) ObserveAttempt(op string, _ time.Duration, err error) {
	if op != "renew" || err != nil {
		return
	}
	k := w.k.Load()
	if k == nil {
		return
	}
	sent := k.Deadline().Add(-soakTTL + soakTTL/40)
	prev := w.lastSent
	w.lastSent = sent
	if prev.IsZero() || !w.s.measuring.Load() || !sent.After(prev) {
		return
	}
	// The default timing: due TTL/3 after, on the next point of a grid of
	// an eighth of 0.375 TTL, but no later than 0.375 TTL after.
	latest := prev.Add(soakTTL * 375 / 1000)
	step := int64(soakTTL * 375 / 1000 / 8)
	due := prev.Add(soakTTL / 3)
	if rem := due.UnixNano() % step; rem != 0 {
		due = due.Add(time.Duration(step - rem))
	}
	if due.After(latest) {
		due = due.Add(-time.Duration(step))
	}
	w.s.mu.Lock()
	w.s.lateness = append(w.s.lateness, sent.Sub(due))
	w.s.mu.Unlock()
}

func (w *renewalWatch) ObserveTransition(t statemachine.Transition) {
	if w.s.measuring.Load() && t.From == statemachine.Healthy {
		w.s.left.Add(1)
	}
}

// soakFigure runs o.soakKeepers keepers on one client for o.soakFor and
// reports whether all stayed Healthy and how late their renewals were.
func soakFigure(bin string, o options, r *report) error {
	c, stop, err := oneMember(bin)
	if err != nil {
		return err
	}
	defer stop()
	m := c.Members[0]
	cli, err := newClient([]string{m.ClientURL})
	if err != nil {
		return err
	}
	defer func() { _ = cli.Close() }()
	progress("many keepers: starting %d keepers on one client", o.soakKeepers)
	s := &soakStats{}
	watches := make([]*renewalWatch, o.soakKeepers)
	t0 := time.Now()
	ks, err := startKeepers(cli, o.soakKeepers, soakTTL, "soak/", true, func(i int, cfg *keeper.Config) {
		watches[i] = &renewalWatch{s: s}
		cfg.Observers = []keeper.Observer{watches[i]}
	})
	defer closeKeepers(ks)
	if err != nil {
		return err
	}
	started := time.Since(t0)
	for i, k := range ks {
		watches[i].k.Store(k)
	}
	time.Sleep(settleDirect)
	progress("many keepers: %d keepers for %s", o.soakKeepers, o.soakFor)
	s.measuring.Store(true)
	before := measure(nil, m.Pid())
	time.Sleep(o.soakFor)
	after := measure(nil, m.Pid())
	s.measuring.Store(false)
	healthy := 0
	for _, k := range ks {
		if k.State() == statemachine.Healthy {
			healthy++
		}
	}
	s.mu.Lock()
	late := slices.Clone(s.lateness)
	s.mu.Unlock()
	slices.Sort(late)
	pct := func(p float64) string {
		if len(late) == 0 {
			return "n/a"
		}
		return late[min(len(late)-1, int(p*float64(len(late))))].Round(10 * time.Microsecond).String()
	}
	ok := s.left.Load() == 0 && healthy == len(ks)
	r.add(fmt.Sprintf("## 8. %d keepers on one client for %s\n\n", o.soakKeepers, o.soakFor) +
		fmt.Sprintf("TTL %s, one key each, watched (the default), against one etcd member; starting them took %s. "+
			"Lateness is when a renewal was sent (read from the keeper's deadline after it) less when it was due: "+
			"TTL/3 after the one before was sent, then the renewal grid's next point (0.375 TTL after it once on the grid).\n\n", soakTTL, started.Round(time.Second)) +
		table([]string{"measure", "value", "target"}, [][]string{
			{"keepers Healthy at the end", fmt.Sprintf("%d of %d", healthy, len(ks)), ""},
			{"transitions away from Healthy", fmt.Sprint(s.left.Load()), fmt.Sprintf("all Healthy throughout: %s", verdict(ok))},
			{"renewals measured", fmt.Sprint(len(late)), ""},
			{"renewal lateness p50 / p99 / max", strings.Join([]string{pct(0.5), pct(0.99), pct(1)}, " / "), "reported"},
			{"client CPU", fmt.Sprintf("%.1f s (%.0f%% of a core)", (after.cpu - before.cpu).Seconds(), 100*(after.cpu-before.cpu).Seconds()/o.soakFor.Seconds()), ""},
			{"etcd CPU", fmt.Sprintf("%.1f s (%.0f%% of a core)", (after.server - before.server).Seconds(), 100*(after.server-before.server).Seconds()/o.soakFor.Seconds()), ""},
		}))
	return nil
}
