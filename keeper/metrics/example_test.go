package metrics_test

import (
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"

	lkerrors "github.com/leasekeeper/leasekeeper/errors"
	"github.com/leasekeeper/leasekeeper/keeper/metrics"
	"github.com/leasekeeper/leasekeeper/statemachine"
)

// The observer counts what the keeper reports; add it to
// keeper.Config.Observers and call Track with the keeper for the gauges.
func Example() {
	reg := prometheus.NewRegistry()
	m := metrics.New(reg)
	m.ObserveAttempt("renew", 3*time.Millisecond, nil)
	m.ObserveAttempt("renew", time.Second, lkerrors.Classify(rpctypes.ErrNoLeader))
	m.ObserveTransition(statemachine.Transition{From: statemachine.Failed, To: statemachine.Healthy})
	n, err := testutil.GatherAndCount(reg, "leasekeeper_attempts_total", "leasekeeper_recoveries_total")
	fmt.Println(n, err)
	// Output:
	// 3 <nil>
}
