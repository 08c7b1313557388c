package keeper

import (
	"fmt"
	"time"

	"go.uber.org/zap"

	"github.com/leasekeeper/leasekeeper/statemachine"
)

// MaxTTL is the largest lease TTL etcd grants (lease.MaxLeaseTTL seconds).
const MaxTTL = 9_000_000_000 * time.Second

// Config configures a Keeper. Start from DefaultConfig; fields left zero where
// the doc says so are derived from TTL.
type Config struct {
	// TTL is the lease TTL asked of etcd. etcd grants whole seconds, so it is
	// rounded up, and the server may grant more (its minimum is about 2s with
	// default timings); the keeper times everything from the granted TTL.
	// Must be positive and at most MaxTTL. Default 10s.
	TTL time.Duration

	// RenewTimeout bounds each attempt (one keepalive, grant or write); an
	// attempt never runs past the local deadline either. A short timeout lets
	// the next attempt reach another member when one goes silent. Zero means
	// TTL/10. Must be less than a third of TTL.
	RenewTimeout time.Duration

	// Margin is subtracted from the server's earliest expiry to get the local
	// deadline; it covers the local clock running slower than the server's.
	// Zero means TTL/40 (250ms at a TTL of 10s), far more than clocks
	// drift apart over a TTL. Must be less than half of TTL.
	Margin time.Duration

	// DegradeAfter is the number of consecutive failed attempts that makes a
	// Healthy keeper Degraded. Default 2. Must be at least 1.
	DegradeAfter int

	// DegradeThreshold makes a Healthy keeper Degraded once the time left
	// before the local deadline falls below it, whichever of this and
	// DegradeAfter comes first. Zero means TTL/2. Must be less than TTL.
	DegradeThreshold time.Duration

	// Backoff paces the retries after a failed attempt.
	Backoff BackoffConfig

	// DisableRecovery stops the keeper from re-renewing or re-granting in the
	// background once it is Failed. Default false: the keeper heals itself.
	DisableRecovery bool

	// WatchKeys has the keeper watch its keys from Start on, and act on
	// keys deleted or overwritten behind its back by their Policy; it
	// reports each change as a KeyEvent, and retakes an exclusive key the
	// moment its holder lets it go. The keepers of one client share one
	// watch of the smallest key range that holds all their keys (keep them
	// under one prefix). Default false: the watch costs the cluster a
	// stream per client, and each client a stream and a goroutine, that
	// etcd's own KeepAlive does not; without it the keeper writes its keys
	// at Start, on Register and after a re-grant, and retries an exclusive
	// key by the backoff. Turn it on where others may delete or take the
	// keys.
	WatchKeys bool

	// MaxTxnOps is the number of keys written per transaction when all keys
	// are written again; it must not exceed the server's --max-txn-ops.
	// Default 128, etcd's default.
	MaxTxnOps int

	// Logger receives one line per transition and debug lines per failed
	// attempt. Nil means no logging.
	Logger *zap.Logger

	// Callbacks receive every transition.
	Callbacks Callbacks

	// Observers are told of every attempt and transition, for metrics and
	// health adapters. Nil means none.
	Observers []Observer
}

// BackoffConfig paces retries: the n-th consecutive retry waits
// BaseDelay*Multiplier^(n-1), at most MaxDelay, spread by Jitter.
type BackoffConfig struct {
	// BaseDelay is the wait before the first retry. Default 100ms. It also
	// paces the keeper's tries to reach etcd again once no lease is live:
	// a fresh keepalive, and a reconnect asked of gRPC while the connection
	// is in transient failure, about every BaseDelay (jittered).
	BaseDelay time.Duration
	// Multiplier grows the wait after each failed retry. Default 2.
	Multiplier float64
	// Jitter spreads each wait uniformly over [1-Jitter, 1+Jitter] times its
	// value, so that keepers restarted together do not retry together.
	// Default 0.2; must be in [0, 1).
	Jitter float64
	// MaxDelay caps the waits of retryable errors. Errors that retrying
	// cannot fix quickly (permission denied, no space, invalid argument)
	// wait at least this long, spread upwards by Jitter, so such an error is
	// retried at most once per MaxDelay. Default 5s.
	MaxDelay time.Duration
}

// Callbacks are called with every transition, in order, one at a time, from
// a goroutine that holds none of the keeper's locks. A slow callback delays
// later callbacks but never a renewal; a panicking one is recovered and
// logged. For each transition OnTransition runs first, then the matching
// write callbacks. Any field may be nil.
type Callbacks struct {
	// OnTransition receives every transition.
	OnTransition func(statemachine.Transition)
	// OnStopWrites is called when Writable turns false: the keeper leaves
	// Healthy for Degraded, Failed or Closed, or Draining for Closed. The
	// service should stop accepting writes and serve reads from cache.
	// Entering Draining from Healthy does not call it: a planned drain
	// keeps writes open.
	OnStopWrites func(statemachine.Transition)
	// OnResumeWrites is called when Writable turns true: the keeper becomes
	// Healthy, or enters Draining from a state that was not writable.
	// Writes may resume.
	OnResumeWrites func(statemachine.Transition)
	// OnLost is called when the keeper enters Failed: the registration must
	// be assumed gone.
	OnLost func(statemachine.Transition)
	// OnKeyEvent is called when a registered key was deleted or overwritten
	// behind the keeper's back, or an exclusive key was taken or acquired,
	// once the keeper acted on it by the key's policy.
	OnKeyEvent func(KeyEvent)
}

// DefaultConfig returns a fresh Config with the documented defaults.
func DefaultConfig() Config {
	return Config{
		TTL:          10 * time.Second,
		DegradeAfter: 2,
		Backoff: BackoffConfig{
			BaseDelay:  100 * time.Millisecond,
			Multiplier: 2,
			Jitter:     0.2,
			MaxDelay:   5 * time.Second,
		},
		MaxTxnOps: 128,
	}
}

// Validate checks every field and the fields against each other, with the
// offending values in the message. Zero fields that are derived from TTL are
// checked as derived.
func (c Config) Validate() error {
	if c.TTL <= 0 {
		return fmt.Errorf("keeper: ttl must be positive, got %s", c.TTL)
	}
	if c.TTL > MaxTTL {
		return fmt.Errorf("keeper: ttl (%s) exceeds etcd's maximum (%s)", c.TTL, MaxTTL)
	}
	r := c.resolved()
	switch {
	case c.RenewTimeout < 0:
		return fmt.Errorf("keeper: renew timeout must not be negative, got %s", c.RenewTimeout)
	case r.RenewTimeout*3 >= r.TTL:
		return fmt.Errorf("keeper: renew timeout (%s) must be less than a third of the ttl (%s)", r.RenewTimeout, r.TTL)
	case c.Margin < 0:
		return fmt.Errorf("keeper: margin must not be negative, got %s", c.Margin)
	case r.Margin*2 >= r.TTL:
		return fmt.Errorf("keeper: margin (%s) must be less than half the ttl (%s)", r.Margin, r.TTL)
	case c.DegradeAfter < 1:
		return fmt.Errorf("keeper: degrade after must be at least 1, got %d", c.DegradeAfter)
	case c.DegradeThreshold < 0:
		return fmt.Errorf("keeper: degrade threshold must not be negative, got %s", c.DegradeThreshold)
	case r.DegradeThreshold >= r.TTL:
		return fmt.Errorf("keeper: degrade threshold (%s) must be less than the ttl (%s)", r.DegradeThreshold, r.TTL)
	case c.MaxTxnOps < 1:
		return fmt.Errorf("keeper: max txn ops must be at least 1, got %d", c.MaxTxnOps)
	}
	return c.Backoff.validate()
}

func (b BackoffConfig) validate() error {
	switch {
	case b.BaseDelay <= 0:
		return fmt.Errorf("keeper: backoff base delay must be positive, got %s", b.BaseDelay)
	case !(b.Multiplier >= 1): // NaN too
		return fmt.Errorf("keeper: backoff multiplier must be at least 1, got %g", b.Multiplier)
	case !(b.Jitter >= 0 && b.Jitter < 1): // NaN too
		return fmt.Errorf("keeper: backoff jitter must be in [0, 1), got %g", b.Jitter)
	case b.MaxDelay < b.BaseDelay:
		return fmt.Errorf("keeper: backoff max delay (%s) must not be less than the base delay (%s)", b.MaxDelay, b.BaseDelay)
	}
	return nil
}

// resolved returns c with TTL rounded up to whole seconds and the zero
// fields derived from it.
func (c Config) resolved() Config {
	tm := c.timingFor(0)
	if rem := c.TTL % time.Second; rem != 0 {
		c.TTL += time.Second - rem
	}
	c.RenewTimeout, c.Margin, c.DegradeThreshold = tm.renewTimeout, tm.margin, tm.threshold
	return c
}

// RenewalInterval is how long a Healthy keeper configured by c waits
// between its renewals on a path that answers at once (straight to a
// member, near or far), if etcd grants the TTL asked: as long as the
// degrade threshold allows, less a reply's room (half the renew timeout,
// or what the path's replies take where that is longer). With the
// defaults it is 0.418 TTL: 2.09s at a TTL of 5s, 4.18s at 10s, 12.55s at
// 30s, no shorter than etcd's own Lease.KeepAlive waits at any TTL from 4s
// (2s at 5s, 3.5s at 10s, 10.5s at 30s), so that the cluster serves no more
// keepalives for a keeper than for a KeepAlive. At 3s it is 1.25s, against
// KeepAlive's 1.5s, which would leave less than the degrade threshold of
// half the TTL before every renewal. The keepers of one process renew on a
// grid, together: its steps are an eighth of the interval, or as large a
// part of it as keeps them a second or more apart. Behind etcd's gRPC proxy a keeper
// renews on the proxy's schedule instead. c must be valid.
func (c Config) RenewalInterval() time.Duration {
	r := c.resolved()
	return renewalInterval(r.TTL, c.timingFor(0))
}

// ttlSeconds is the TTL to ask etcd for.
func (c Config) ttlSeconds() int64 {
	return int64(c.resolved().TTL / time.Second)
}
