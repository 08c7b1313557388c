package keeper

import (
	"math"
	"strings"
	"testing"
	"time"
)

func TestDefaultConfigIsFreshAndValid(t *testing.T) {
	a, b := DefaultConfig(), DefaultConfig()
	a.TTL = time.Minute
	if b.TTL != 10*time.Second {
		t.Errorf("DefaultConfig().TTL = %v after changing another copy, want 10s", b.TTL)
	}
	if err := b.Validate(); err != nil {
		t.Errorf("DefaultConfig().Validate() = %v, want nil", err)
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name    string
		mutate  func(*Config)
		wantErr string // substring; empty means valid
	}{
		{"defaults", func(*Config) {}, ""},
		{"zero ttl", func(c *Config) { c.TTL = 0 }, "ttl must be positive, got 0s"},
		{"negative ttl", func(c *Config) { c.TTL = -time.Second }, "ttl must be positive, got -1s"},
		{"ttl above etcd's maximum", func(c *Config) { c.TTL = MaxTTL + time.Second }, "exceeds etcd's maximum"},
		{"ttl at the maximum", func(c *Config) { c.TTL = MaxTTL }, ""},
		{"sub-second ttl rounds up", func(c *Config) { c.TTL = 300 * time.Millisecond }, ""},
		{"renew timeout too long", func(c *Config) { c.RenewTimeout = 4 * time.Second }, "renew timeout (4s) must be less than a third of the ttl (10s)"},
		{"negative renew timeout", func(c *Config) { c.RenewTimeout = -1 }, "renew timeout must not be negative"},
		{"margin too large", func(c *Config) { c.Margin = 5 * time.Second }, "margin (5s) must be less than half the ttl (10s)"},
		{"negative margin", func(c *Config) { c.Margin = -time.Second }, "margin must not be negative, got -1s"},
		{"degrade after zero", func(c *Config) { c.DegradeAfter = 0 }, "degrade after must be at least 1, got 0"},
		{"threshold equals ttl", func(c *Config) { c.DegradeThreshold = 10 * time.Second }, "degrade threshold (10s) must be less than the ttl (10s)"},
		{"negative threshold", func(c *Config) { c.DegradeThreshold = -time.Second }, "degrade threshold must not be negative"},
		{"max txn ops zero", func(c *Config) { c.MaxTxnOps = 0 }, "max txn ops must be at least 1, got 0"},
		{"zero base delay", func(c *Config) { c.Backoff.BaseDelay = 0 }, "base delay must be positive, got 0s"},
		{"multiplier below one", func(c *Config) { c.Backoff.Multiplier = 0.5 }, "multiplier must be at least 1, got 0.5"},
		{"jitter one", func(c *Config) { c.Backoff.Jitter = 1 }, "jitter must be in [0, 1), got 1"},
		{"jitter NaN", func(c *Config) { c.Backoff.Jitter = math.NaN() }, "jitter must be in [0, 1), got NaN"},
		{"multiplier NaN", func(c *Config) { c.Backoff.Multiplier = math.NaN() }, "multiplier must be at least 1, got NaN"},
		{"cap below base", func(c *Config) { c.Backoff.MaxDelay = 10 * time.Millisecond }, "max delay (10ms) must not be less than the base delay (100ms)"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := DefaultConfig()
			tc.mutate(&c)
			err := c.Validate()
			switch {
			case tc.wantErr == "" && err != nil:
				t.Errorf("Validate() = %v, want nil", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Errorf("Validate() = %v, want an error containing %q", err, tc.wantErr)
			case err != nil && !strings.HasPrefix(err.Error(), "keeper: "):
				t.Errorf("Validate() = %q, want the keeper: prefix", err)
			}
			if tc.wantErr != "" {
				if _, nerr := newKeeper(newFake(), c); nerr == nil {
					t.Errorf("newKeeper accepted a config Validate rejects")
				}
			}
		})
	}
}

func TestResolvedDerivesFromTTL(t *testing.T) {
	c := DefaultConfig()
	c.TTL = 2500 * time.Millisecond
	r := c.resolved()
	if r.TTL != 3*time.Second || r.RenewTimeout != 300*time.Millisecond || r.Margin != 75*time.Millisecond || r.DegradeThreshold != 1500*time.Millisecond {
		t.Errorf("resolved() = ttl %v, renew timeout %v, margin %v, threshold %v; want 3s, 300ms, 75ms, 1.5s",
			r.TTL, r.RenewTimeout, r.Margin, r.DegradeThreshold)
	}
	if got := c.ttlSeconds(); got != 3 {
		t.Errorf("ttlSeconds() = %d, want 3", got)
	}
}
