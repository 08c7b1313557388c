package keeper

import (
	"time"

	lkerrors "github.com/leasekeeper/leasekeeper/errors"
)

// delay returns the wait before the n-th consecutive retry (n >= 1) after an
// error of kind k. u in [0, 1) draws the jitter.
//
// Errors that retrying cannot fix quickly wait MaxDelay or a little more,
// so a revoked permission or a full disk is retried at most once per
// MaxDelay and never becomes a hot loop; a rate limit counts as one more
// failure than it is.
func (b BackoffConfig) delay(n int, k lkerrors.Kind, u float64) time.Duration {
	switch k {
	case lkerrors.PermissionDenied, lkerrors.InvalidArgument, lkerrors.NoSpace:
		// Jitter only upwards: never retry sooner than the cap.
		return time.Duration(float64(b.MaxDelay) * (1 + b.Jitter*u))
	case lkerrors.RateLimited:
		n++
	}
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
