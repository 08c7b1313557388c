// Package metrics exports a keeper's state and work to Prometheus. The
// keeper itself does not import Prometheus: Metrics is a keeper.Observer.
//
//	m := metrics.New(prometheus.DefaultRegisterer)
//	cfg.Observers = append(cfg.Observers, m)
//	k, _ := keeper.New(cli, cfg)
//	m.Track(k) // state, time left and keys, read at each scrape
package metrics

import (
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	lkerrors "github.com/leasekeeper/leasekeeper/errors"
	"github.com/leasekeeper/leasekeeper/statemachine"
)

// Keeper is what Track reads at each scrape; *keeper.Keeper implements it.
type Keeper interface {
	State() statemachine.State
	Deadline() time.Time
	Keys() int
}

// Metrics holds the collectors of one keeper.
type Metrics struct {
	reg         prometheus.Registerer
	transitions *prometheus.CounterVec
	attempts    *prometheus.CounterVec
	latency     *prometheus.HistogramVec
	recoveries  prometheus.Counter
	trackOnce   sync.Once
}

// New registers the counters with reg and returns the observer to put in
// keeper.Config.Observers.
func New(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		reg: reg,
		transitions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "leasekeeper_transitions_total", Help: "State transitions by from and to state.",
		}, []string{"from", "to"}),
		attempts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "leasekeeper_attempts_total", Help: "Renew and grant attempts by operation and result (ok or the error kind).",
		}, []string{"op", "result"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "leasekeeper_attempt_duration_seconds", Help: "Duration of renew and grant attempts.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 14),
		}, []string{"op"}),
		recoveries: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "leasekeeper_recoveries_total", Help: "Returns to healthy from failed.",
		}),
	}
	reg.MustRegister(m.transitions, m.attempts, m.latency, m.recoveries)
	return m
}

// Track registers the gauges read from k at each scrape: the current state,
// the time left before the local deadline, and the keys registered. Only
// the first call registers.
func (m *Metrics) Track(k Keeper) {
	m.trackOnce.Do(func() {
		m.reg.MustRegister(&stateCollector{k: k, desc: prometheus.NewDesc("leasekeeper_state",
			"1 for the keeper's current state, 0 for the others.", []string{"state"}, nil)})
		m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "leasekeeper_time_left_seconds", Help: "Time left before the local lease deadline; 0 without a lease.",
		}, func() float64 {
			d := k.Deadline()
			if d.IsZero() {
				return 0
			}
			return max(time.Until(d), 0).Seconds()
		}))
		m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "leasekeeper_keys", Help: "Keys registered.",
		}, func() float64 { return float64(k.Keys()) }))
	})
}

// stateCollector exports leasekeeper_state with one series per state. It
// reads the keeper's state once per scrape, so that a scrape shows exactly
// one state at 1 even when the state changes while it is collected.
type stateCollector struct {
	k    Keeper
	desc *prometheus.Desc
}

func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	now := c.k.State()
	for _, s := range statemachine.States() {
		v := 0.0
		if s == now {
			v = 1
		}
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, v, s.String())
	}
}

// ObserveAttempt counts an attempt by result and records its duration.
func (m *Metrics) ObserveAttempt(op string, took time.Duration, err error) {
	result := "ok"
	if err != nil {
		result = lkerrors.KindOf(err).String()
	}
	m.attempts.WithLabelValues(op, result).Inc()
	m.latency.WithLabelValues(op).Observe(took.Seconds())
}

// ObserveTransition counts a transition, and a recovery when it is
// failed -> healthy.
func (m *Metrics) ObserveTransition(t statemachine.Transition) {
	m.transitions.WithLabelValues(t.From.String(), t.To.String()).Inc()
	if t.From == statemachine.Failed && t.To == statemachine.Healthy {
		m.recoveries.Inc()
	}
}
