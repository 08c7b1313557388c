package metrics_test

import (
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/leasekeeper/leasekeeper/keeper/metrics"
	"github.com/leasekeeper/leasekeeper/statemachine"
)

// flipping is a keeper whose state moves on at every read, as a keeper's
// does when a scrape straddles its deadline.
type flipping struct{ reads atomic.Int32 }

func (f *flipping) State() statemachine.State {
	return statemachine.States()[int(f.reads.Add(1))%len(statemachine.States())]
}
func (f *flipping) Deadline() time.Time { return time.Time{} }
func (f *flipping) Keys() int           { return 1 }

// TestScrapeShowsOneState: however the state moves while a scrape runs,
// each scrape shows exactly one state at 1, read once.
func TestScrapeShowsOneState(t *testing.T) {
	reg := prometheus.NewRegistry()
	k := &flipping{}
	metrics.New(reg).Track(k)
	for range 10 {
		before := k.reads.Load()
		mfs, err := reg.Gather()
		require.NoError(t, err)
		var states []*dto.Metric
		for _, mf := range mfs {
			if mf.GetName() == "leasekeeper_state" {
				states = mf.GetMetric()
			}
		}
		require.Len(t, states, len(statemachine.States()))
		ones := 0
		for _, m := range states {
			if m.GetGauge().GetValue() == 1 {
				ones++
			}
		}
		assert.Equal(t, 1, ones, "states at 1 in one scrape")
		assert.Equal(t, before+1, k.reads.Load(), "State() reads per scrape")
	}
}
