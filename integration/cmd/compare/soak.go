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
// margin, to learn when the renewal was sent. It also counts the
// transitions away from Healthy.
type renewalWatch struct {
	k        atomic.Pointer[keeper.Keeper] // set once the keeper is made
	s        *soakStats
	lastSent time.Time
}

// soakStats gathers what every renewalWatch saw.
type soakStats struct {
	measuring atomic.Bool
	left      atomic.Int64 // transitions away from Healthy while measuring

	mu   sync.Mutex
	sent []time.Time // renewals sent while measuring
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
	if !w.s.measuring.Load() || !sent.After(w.lastSent) {
		return
	}
	w.lastSent = sent
	w.s.mu.Lock()
	w.s.sent = append(w.s.sent, sent)
	w.s.mu.Unlock()
}

// gridStep is the step of the keepers' renewal grid for a renewal
// interval: an eighth of it, or as many points of a second or more as it
// holds, one at least (keeper's pointsIn, which the package keeps to
// itself).
func gridStep(interval time.Duration) time.Duration {
	return interval / max(1, min(8, interval/time.Second))
}

// lateness is how late each renewal in sent went against the renewal
// grid of step, whose phase (drawn at random by each process) it finds
// from the renewals themselves: a renewal goes on a grid point or after
// it, so their offsets into the step gather just after the points, and
// the longest stretch of the step without one ends at a point.
func lateness(sent []time.Time, step time.Duration) []time.Duration {
	if len(sent) == 0 || step <= 0 {
		return nil
	}
	offs := make([]time.Duration, len(sent))
	for i, t := range sent {
		offs[i] = time.Duration(t.UnixNano() % int64(step))
	}
	slices.Sort(offs)
	point, gap := offs[0], offs[0]+step-offs[len(offs)-1]
	for i := 1; i < len(offs); i++ {
		if d := offs[i] - offs[i-1]; d > gap {
			point, gap = offs[i], d
		}
	}
	late := make([]time.Duration, len(offs))
	for i, o := range offs {
		late[i] = (o - point + step) % step
	}
	slices.Sort(late)
	return late
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
	ks, err := startKeepers(cli, o.soakKeepers, soakTTL, "soak/", true, 0, func(i int, cfg *keeper.Config) {
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
	time.Sleep(settleDirect(soakTTL))
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
	cfg := keeper.DefaultConfig()
	cfg.TTL = soakTTL
	step := gridStep(cfg.RenewalInterval())
	s.mu.Lock()
	late := lateness(s.sent, step)
	s.mu.Unlock()
	pct := func(p float64) string {
		if len(late) == 0 {
			return "n/a"
		}
		return late[min(len(late)-1, int(p*float64(len(late))))].Round(10 * time.Microsecond).String()
	}
	ok := s.left.Load() == 0 && healthy == len(ks)
	r.add(fmt.Sprintf("## 8. %d keepers on one client for %s\n\n", o.soakKeepers, o.soakFor) +
		fmt.Sprintf("TTL %s, one key each, watched (the default), against one etcd member; starting them took %s. "+
			"Lateness is when a renewal was sent (read from the keeper's deadline after it) less the point of the renewal grid "+
			"(%s) it was due on.\n\n", soakTTL, started.Round(time.Second), step) +
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
