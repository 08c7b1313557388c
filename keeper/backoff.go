package keeper

import (
	"time"

	lkerrors "github.com/leasekeeper/leasekeeper/errors"
)

// retryPolicy is what a failure of one kind means for the keeper's next
// tries.
type retryPolicy struct {
	// permanent: retrying soon cannot help. An attempt that fails so makes
	// the keeper Failed at once, and a key etcd refuses so is held and
	// retried by the backoff.
	permanent bool
	// slowest: wait at least MaxDelay before trying again.
	slowest bool
	// steps: count the failure as this many more, to back off faster.
	steps int
	// silent: the failure carries no word from the server. After failures
	// at the slowest pace it keeps that pace (failures.add): nothing says
	// a refusal is over.
	silent bool
}

// retryPolicies is the one table every retry decision reads; kinds not in
// it retry by the plain backoff. LeaseExpired is not retried at all: the
// keeper grants a new lease at once.
var retryPolicies = map[lkerrors.Kind]retryPolicy{
	lkerrors.PermissionDenied:   {permanent: true, slowest: true},
	lkerrors.InvalidArgument:    {permanent: true, slowest: true},
	lkerrors.NoSpace:            {slowest: true},
	lkerrors.RateLimited:        {steps: 1},
	lkerrors.Timeout:            {silent: true},
	lkerrors.ClusterUnreachable: {silent: true},
}

func policyOf(k lkerrors.Kind) retryPolicy { return retryPolicies[k] }

// delay returns the wait before the n-th consecutive retry (n >= 1) after an
// error of kind k. u in [0, 1) draws the jitter.
//
// Errors that retrying cannot fix quickly wait MaxDelay or a little more
// (jitter only upwards), so a revoked permission or a full disk is retried
// at most once per MaxDelay and never becomes a hot loop.
func (b BackoffConfig) delay(n int, k lkerrors.Kind, u float64) time.Duration {
	p := policyOf(k)
	if p.slowest {
		return time.Duration(float64(b.MaxDelay) * (1 + b.Jitter*u))
	}
	n += p.steps
	d := float64(b.BaseDelay)
	for i := 1; i < n && d < float64(b.MaxDelay); i++ {
		d *= b.Multiplier
	}
	d *= 1 + b.Jitter*(2*u-1)
	if d > float64(b.MaxDelay) {
		d = float64(b.MaxDelay)
	}
	return time.Duration(d)
}
