package keeper

import (
	"context"
	"math/rand/v2"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/leasekeeper/leasekeeper/keeper/internal/alarm"
)

// hub is the transport the keepers of one etcd client share: the backend
// over the client, whose renewals of every lease go on one long-lived
// stream (renewals.go), and one watch for the keys of all of them
// (watch.go). keeper.New joins the client's hub, creating it for the
// first keeper; Close leaves it, and the last keeper to leave ends its
// stream and watch. So the cluster serves one renewal stream and one watch
// per client, as for etcd's own KeepAlive, however many keepers the client
// has. The keepers' timers run off one runtime timer too (keeper/internal/alarm): an
// idle keeper costs two alarms in its own state, not a goroutine.
type hub struct {
	key    any // the client, or the tests' fake backend
	b      backend
	watch  *watchHub
	timers alarm.Set // the keepers' timers
	// ticks are the timers of the attempts in flight (a fresh keepalive
	// due, an attempt's end): set when an attempt starts and stopped when
	// it is answered, a few milliseconds later, so that the heap those
	// two changes go through at every renewal holds the attempts in
	// flight, not every keeper's.
	ticks alarm.Set
	calls callTiming // the round trips of unary calls (rtt.go)
	refs  int        // keepers joined; guarded by hubs.mu

	// configs are the configs keepers of the hub share, guarded by hubs.mu:
	// keepers configured alike, without callbacks or observers, point at one
	// copy rather than carry one each.
	configs configSet
}

// sharedConfig is a config shared by refs keepers of a hub.
type sharedConfig struct {
	key  configKey
	cfg  Config
	refs int
}

// configSet holds the configs the keepers of a hub share: the first one
// alone, so that a hub whose keepers are configured alike (or that has one
// keeper) makes no map, and the others in a map.
type configSet struct {
	one  *sharedConfig
	more map[configKey]*sharedConfig
}

// find returns the shared config of key ck, or nil.
func (s *configSet) find(ck configKey) *sharedConfig {
	if s.one != nil && s.one.key == ck {
		return s.one
	}
	return s.more[ck]
}

// join returns the shared copy of cfg, whose key is ck, adding it if the
// set has none.
func (s *configSet) join(ck configKey, cfg *Config) *Config {
	sc := s.find(ck)
	if sc == nil {
		sc = &sharedConfig{key: ck, cfg: *cfg}
		if s.one == nil {
			s.one = sc
		} else {
			if s.more == nil {
				s.more = make(map[configKey]*sharedConfig)
			}
			s.more[ck] = sc
		}
	}
	sc.refs++
	return &sc.cfg
}

// leave drops one hold on the shared config of key ck, and forgets it
// with its last.
func (s *configSet) leave(ck configKey) {
	sc := s.find(ck)
	if sc == nil {
		return
	}
	if sc.refs--; sc.refs > 0 {
		return
	}
	if sc == s.one {
		s.one = nil
	} else {
		delete(s.more, ck)
	}
}

// len returns how many configs the set holds.
func (s *configSet) len() int {
	n := len(s.more)
	if s.one != nil {
		n++
	}
	return n
}

// configKey is what identifies a Config without callbacks or observers:
// every other field of it. TestConfigKeyHasEveryField keeps the two in
// step.
type configKey struct {
	TTL              time.Duration
	RenewTimeout     time.Duration
	Margin           time.Duration
	DegradeAfter     int
	DegradeThreshold time.Duration
	Backoff          BackoffConfig
	DisableRecovery  bool
	WatchKeys        bool
	MaxTxnOps        int
	Logger           *zap.Logger
}

// keyOf returns cfg's key, and false if cfg has callbacks or observers,
// which are not compared and so never shared.
func keyOf(cfg *Config) (configKey, bool) {
	cb := cfg.Callbacks
	if len(cfg.Observers) > 0 || cb.OnTransition != nil || cb.OnStopWrites != nil || cb.OnResumeWrites != nil ||
		cb.OnLost != nil || cb.OnKeyEvent != nil {
		return configKey{}, false
	}
	return configKey{cfg.TTL, cfg.RenewTimeout, cfg.Margin, cfg.DegradeAfter, cfg.DegradeThreshold, cfg.Backoff,
		cfg.DisableRecovery, cfg.WatchKeys, cfg.MaxTxnOps, cfg.Logger}, true
}

// gridPhase shifts the renewal grid of every hub in this process off
// other processes' (renewalDue).
var gridPhase = time.Duration(rand.Int64N(int64(time.Hour)))

// hubs holds the hub of every client in use.
var hubs = struct {
	sync.Mutex
	m map[any]*hub
}{m: map[any]*hub{}}

// joinHub returns the hub for key, creating it over the backend that
// newBackend returns if no keeper uses key yet, and the config the joining
// keeper is to keep: a copy of cfg, shared with the keepers of the hub
// configured alike where it can be.
func joinHub(key any, newBackend func() backend, cfg *Config) (*hub, *Config) {
	hubs.Lock()
	defer hubs.Unlock()
	h := hubs.m[key]
	if h == nil {
		b := newBackend()
		h = &hub{key: key, b: b}
		h.watch = newWatchHub(b, &h.calls)
		if g, ok := b.(gatherer); ok {
			// The keepers renewing on one grid point are rung together:
			// their keepalives go out once all are queued.
			g.gatherOn(&h.timers)
		}
		hubs.m[key] = h
	}
	h.refs++
	ck, ok := keyOf(cfg)
	if !ok {
		own := *cfg
		return h, &own
	}
	return h, h.configs.join(ck, cfg)
}

// leave drops the hold on h of one keeper, configured by cfg (what joinHub
// returned). The last one out ends the hub's watch and renewal stream, and
// waits, within ctx, for their goroutines.
func (h *hub) leave(ctx context.Context, cfg *Config) error {
	hubs.Lock()
	if ck, ok := keyOf(cfg); ok {
		h.configs.leave(ck)
	}
	h.refs--
	last := h.refs == 0
	if last {
		delete(hubs.m, h.key)
	}
	hubs.Unlock()
	if !last {
		return nil
	}
	err := h.watch.close(ctx)
	h.b.close()
	h.timers.Close()
	h.ticks.Close()
	return err
}
