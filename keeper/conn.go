package keeper

import (
	"context"
	"math/rand/v2"

	"google.golang.org/grpc/connectivity"
)

// connWatch is one running watch of the client's connection; stop ends it.
type connWatch struct {
	stop context.CancelFunc
}

// watchConnLocked starts, unless one runs, a goroutine that follows the
// client's connection while it is not READY. In TRANSIENT_FAILURE it asks
// gRPC to reconnect at once, every Backoff.BaseDelay (jittered), instead of
// after gRPC's own reconnect backoff, which grows to two minutes by
// default: a client built with default options then hears of etcd coming
// back within a fraction of a second. It does not while the last error is
// one retrying cannot fix soon (a refused certificate), which would only
// cost the server a handshake each time. Once the connection is READY it
// runs the next attempt at once instead of waiting out the keeper's
// backoff, and ends. It starts only while the connection is not READY, so a
// failure on a READY connection cannot loop through it.
func (l *leaseLoop) watchConnLocked() {
	if l.conn != nil || l.k.life.closed() || l.k.hub.b.connState() == connectivity.Ready || !l.k.life.begin() {
		return
	}
	ctx, cancel := context.WithCancel(l.k.life.ctx())
	w := &connWatch{stop: cancel}
	l.conn = w
	go func() {
		defer l.k.life.end()
		defer cancel()
		ready := l.followConn(ctx)
		l.mu.Lock()
		defer l.mu.Unlock()
		if l.conn == w {
			l.conn = nil
		}
		if ready && !l.k.life.closed() && !l.running && l.k.hub.timers.Pending(&l.sched.attempt) {
			l.k.logger().Debug("connection ready: attempting now")
			l.scheduleLocked(0)
		}
	}()
}

// followConn waits until the connection is READY (true) or ctx ends or the
// connection shuts down (false), asking for reconnects on the way.
func (l *leaseLoop) followConn(ctx context.Context) bool {
	for {
		s := l.k.hub.b.connState()
		switch s {
		case connectivity.Ready:
			return true
		case connectivity.Shutdown:
			return false
		case connectivity.Idle:
			l.k.hub.b.connect()
		case connectivity.TransientFailure:
			l.mu.Lock()
			hopeless := l.fails.permanent()
			l.mu.Unlock()
			if !hopeless {
				l.k.hub.b.resetConnectBackoff()
			}
		}
		every := l.k.cfg.Backoff.BaseDelay
		wctx, cancel := context.WithTimeout(ctx, every/2+rand.N(every))
		l.k.hub.b.waitStateChange(wctx, s)
		cancel()
		if ctx.Err() != nil {
			return false
		}
	}
}

// stopConnWatchLocked ends the connection watch, if one runs.
func (l *leaseLoop) stopConnWatchLocked() {
	if l.conn != nil {
		l.conn.stop()
		l.conn = nil
	}
}
