package keeper

import (
	"context"
	"sync"

	"github.com/leasekeeper/leasekeeper/internal/alarm"
)

// hub is the transport the keepers of one etcd client share: the backend
// over the client, whose renewals of every lease go on one long-lived
// stream (renewals.go), and one watch for the keys of all of them
// (watch.go). keeper.New joins the client's hub, creating it for the
// first keeper; Close leaves it, and the last keeper to leave ends its
// stream and watch. So the cluster serves one renewal stream and one watch
// per client, as for etcd's own KeepAlive, however many keepers the client
// has. The keepers' timers run off one runtime timer too (internal/alarm): an
// idle keeper costs two alarms in its own state, not a goroutine.
type hub struct {
	key    any // the client, or the tests' fake backend
	b      backend
	watch  *watchHub
	timers alarm.Set // the keepers' timers
	refs   int       // keepers joined; guarded by hubs.mu
}

// hubs holds the hub of every client in use.
var hubs = struct {
	sync.Mutex
	m map[any]*hub
}{m: map[any]*hub{}}

// joinHub returns the hub for key, creating it over the backend that
// newBackend returns if no keeper uses key yet.
func joinHub(key any, newBackend func() backend) *hub {
	hubs.Lock()
	defer hubs.Unlock()
	h := hubs.m[key]
	if h == nil {
		b := newBackend()
		h = &hub{key: key, b: b, watch: newWatchHub(b)}
		hubs.m[key] = h
	}
	h.refs++
	return h
}

// leave drops one keeper's hold on h. The last one out ends the hub's
// watch and renewal stream, and waits, within ctx, for their goroutines.
func (h *hub) leave(ctx context.Context) error {
	hubs.Lock()
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
	return err
}
