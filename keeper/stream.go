package keeper

import (
	"context"
	"sync"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
)

// openTimeout bounds the opening of a renewal stream that outlives its
// attempt: with password auth the client authenticates first, which takes
// a bcrypt check on the server (about 70ms at etcd's default cost, several
// times that on a loaded server) and can outlast a short renew timeout.
const openTimeout = 10 * time.Second

// renewStream is one LeaseKeepAlive stream and the cancel that ends it.
type renewStream struct {
	pb.Lease_LeaseKeepAliveClient
	cancel context.CancelFunc
	kept   bool // it served a renewal before and was kept since
}

// streams hands out renewal streams. Without reuse every renewal opens a
// stream of its own, bound to its attempt, and closes it after the reply:
// an idle keeper then holds no stream and no gRPC goroutine.
//
// With reuse (password auth, where every stream opened costs the server an
// authentication), the stream is kept between renewals. Opening one runs on
// a goroutine of its own, bounded by openTimeout instead of the attempt's
// deadline, one at a time: an attempt that gives up waiting leaves the
// stream to the next one rather than authenticating again.
type streams struct {
	lease pb.LeaseClient
	reuse bool
	ctx   context.Context // ends kept streams and opens: the client's end or close
	stop  context.CancelFunc
	wg    sync.WaitGroup // counts the goroutines opening streams

	mu      sync.Mutex // guards everything below
	idle    *renewStream
	opening bool
	opened  int   // opens finished, so a waiter knows its open ended
	lastErr error // error of the last open that failed
	changed chan struct{}
	closed  bool
}

func newStreams(cli *clientv3.Client, reuse bool) *streams {
	s := &streams{lease: clientv3.RetryLeaseClient(cli), reuse: reuse, changed: make(chan struct{})}
	s.ctx, s.stop = context.WithCancel(cli.Ctx())
	return s
}

// get returns a stream for one renewal within ctx, and whether it was kept
// from an earlier one (and so may have died meanwhile).
func (s *streams) get(ctx context.Context) (*renewStream, bool, error) {
	if !s.reuse {
		sctx, cancel := context.WithCancel(ctx)
		st, err := s.lease.LeaseKeepAlive(sctx, grpc.WaitForReady(true))
		if err != nil {
			cancel()
			return nil, false, err
		}
		return &renewStream{Lease_LeaseKeepAliveClient: st, cancel: cancel}, false, nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for {
		switch {
		case s.closed:
			return nil, false, context.Canceled
		case s.idle != nil:
			st := s.idle
			s.idle = nil
			return st, st.kept, nil
		case !s.opening:
			s.opening = true
			s.wg.Add(1)
			go s.open()
		}
		n, changed := s.opened, s.changed
		s.mu.Unlock()
		select {
		case <-changed:
		case <-ctx.Done():
			s.mu.Lock()
			return nil, false, ctx.Err()
		}
		s.mu.Lock()
		if s.opened > n && s.idle == nil && s.lastErr != nil {
			return nil, false, s.lastErr
		}
	}
}

// open opens a stream and keeps it idle for the next get.
func (s *streams) open() {
	defer s.wg.Done()
	sctx, cancel := context.WithCancel(s.ctx)
	late := time.AfterFunc(openTimeout, cancel)
	st, err := s.lease.LeaseKeepAlive(sctx, grpc.WaitForReady(true))
	if !late.Stop() && err == nil {
		err = context.DeadlineExceeded
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.opening = false
	s.opened++
	s.lastErr = err
	if err != nil || s.closed || s.idle != nil {
		cancel()
	} else {
		s.idle = &renewStream{Lease_LeaseKeepAliveClient: st, cancel: cancel}
	}
	s.signalLocked()
}

// put keeps st for the next renewal, if streams are reused and none is
// kept; otherwise it ends st.
func (s *streams) put(st *renewStream) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.reuse || s.closed || s.idle != nil {
		st.cancel()
		return
	}
	st.kept = true
	s.idle = st
	s.signalLocked()
}

func (s *streams) signalLocked() {
	close(s.changed)
	s.changed = make(chan struct{})
}

// close ends the kept stream and any open in flight, and waits for it.
func (s *streams) close() {
	s.mu.Lock()
	s.closed = true
	if s.idle != nil {
		s.idle.cancel()
		s.idle = nil
	}
	s.mu.Unlock()
	s.stop()
	s.wg.Wait()
}
