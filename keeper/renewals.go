package keeper

import (
	"context"
	"errors"
	"io"
	"sync"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
)

// openTimeout bounds the opening of a renewal stream: with password auth
// the client authenticates first, which takes a bcrypt check on the server
// (about 70ms at etcd's default cost, several times that on a loaded
// server) and can outlast a short renew timeout, so opening is not bound
// to any one renewal's deadline.
const openTimeout = 10 * time.Second

// renewals carries the keepalives of every keeper on one client on one
// long-lived LeaseKeepAlive stream, as etcd's own lessor does, while each
// keepalive keeps its own deadline: the caller waits for its reply, matched
// by lease ID, until its own context ends, and the send time it took sets
// its keeper's D.
//
// A stream a keepalive was overdue on is left: a hedge (the caller asks
// again because its request went unanswered for a third of the renew
// timeout) goes on a new stream, which the client's balancer opens to the
// next member, and becomes the stream of every renewal after it. The left
// stream ends once nothing waits on it. So a silent member costs the
// keepers a third of the renew timeout, once, and never holds the renewals
// of a client hostage, which a single shared stream without deadlines of
// its own would.
//
// etcd answers the keepalives of one stream in order, so a reply goes to
// the oldest request for its lease on that stream. A request given up after
// it was sent stays in line, so that its late reply is not taken for the
// reply to a later request: that would date the renewal after it happened
// and set D too late.
type renewals struct {
	lease pb.LeaseClient
	ctx   context.Context // ends every stream: the client's end or close
	stop  context.CancelFunc
	wg    sync.WaitGroup // counts the streams' goroutines

	mu     sync.Mutex // guards cur, closed and every stream's line
	cur    *renewStream
	closed bool
}

// renewStream is one LeaseKeepAlive stream and the keepalives waiting on it.
type renewStream struct {
	cancel context.CancelFunc
	st     pb.Lease_LeaseKeepAliveClient

	sendMu  sync.Mutex         // guards queue and sending
	queue   []clientv3.LeaseID // to send
	sending bool               // a sender sends the queue

	// Guarded by renewals.mu.
	line    map[clientv3.LeaseID][]*keepalive // by lease, oldest first
	early   []unsent                          // put in line before the stream opened: run sends them
	waiting int                               // requests in line not given up
	up      bool                              // opened: requests put in line are sent at once
	dead    bool                              // broke or ended: takes no request
	left    bool                              // a newer stream took over: ends when nothing waits
}

// unsent is a request put in line before its stream opened.
type unsent struct {
	id clientv3.LeaseID
	ka *keepalive
}

// keepalive is one request in a stream's line.
type keepalive struct {
	done    func(keepaliveReply) // called once, without the lock held; given up, only with its reply
	fresh   bool                 // its stream was opened for it
	sent    bool
	givenUp bool
}

type keepaliveReply struct {
	ttl int64
	err error
}

func newRenewals(cli *clientv3.Client) *renewals {
	r := &renewals{lease: clientv3.RetryLeaseClient(cli)}
	r.ctx, r.stop = context.WithCancel(cli.Ctx())
	return r
}

// keepAliveAsync sends a keepalive for id and calls done once with the TTL
// the server reset it to or the error, from the goroutine that received
// the reply; it never blocks, and done must not either. cancel gives the
// request up: after it, done is called at most once more, with the reply if
// it comes (the renewal it carries happened, late), never with the error of
// a stream that broke. hedge says that an earlier request
// for id, in the same attempt, went unanswered for too long: the stream it
// waits on is left for a new one.
//
// A stream that was open before the call may have died meanwhile (a
// restarted member, an expired token) without anyone noticing: if it fails
// the request, the request goes again once on a new stream.
func (r *renewals) keepAliveAsync(id clientv3.LeaseID, hedge bool, done func(int64, error)) (cancel func()) {
	c := &call{r: r, id: id, done: done}
	c.start(hedge, false)
	return c.cancel
}

// call is one keepalive a keeper asked for, through its retry.
type call struct {
	r    *renewals
	id   clientv3.LeaseID
	done func(int64, error)

	mu       sync.Mutex // guards s, ka and canceled
	s        *renewStream
	ka       *keepalive
	canceled bool
}

// start puts the request in a stream's line and sends it, at once if the
// stream is open; else the stream sends it once it is (run), so that
// requests waiting for a stream take no goroutine each. retried says this
// is the one retry.
func (c *call) start(hedge, retried bool) {
	ka := &keepalive{}
	ka.done = func(rep keepaliveReply) { c.finish(ka, rep, retried) }
	s, now, err := c.r.enqueue(c.id, hedge, ka)
	if err != nil {
		c.done(0, err)
		return
	}
	c.mu.Lock()
	c.s, c.ka = s, ka
	canceled := c.canceled
	c.mu.Unlock()
	switch {
	case canceled:
		c.r.giveUp(s, c.id, ka)
	case now:
		c.r.send(s, c.id, ka)
	}
}

// finish hands the reply to ka to done, or retries once on a new stream
// when a stream that was open before failed the request.
func (c *call) finish(ka *keepalive, rep keepaliveReply, retried bool) {
	c.mu.Lock()
	canceled := c.canceled
	c.mu.Unlock()
	switch {
	case rep.err != nil && !ka.fresh && !retried && !canceled:
		c.start(false, true)
	case rep.err != nil:
		c.done(0, rep.err)
	case rep.ttl <= 0:
		c.done(0, rpctypes.ErrLeaseNotFound)
	default:
		c.done(rep.ttl, nil)
	}
}

// cancel gives the request up.
func (c *call) cancel() {
	c.mu.Lock()
	if c.canceled {
		c.mu.Unlock()
		return
	}
	c.canceled = true
	s, ka := c.s, c.ka
	c.mu.Unlock()
	if s != nil {
		c.r.giveUp(s, c.id, ka)
	}
}

// enqueue puts ka, a request for id, in the line of the current stream,
// opening one if there is none, or if hedge and the current stream holds
// an earlier request for id: then that stream is left. ka.fresh says the
// stream was opened for it. now says the stream is open, and the caller
// sends ka; otherwise the stream sends it once open.
func (r *renewals) enqueue(id clientv3.LeaseID, hedge bool, ka *keepalive) (s *renewStream, now bool, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil, false, context.Canceled
	}
	s = r.cur
	if s != nil && hedge && s.up && !s.dead && len(s.line[id]) > 0 {
		r.leaveLocked(s)
		s = nil
	}
	ka.fresh = s == nil || s.dead
	if ka.fresh {
		s = r.openLocked()
	}
	s.line[id] = append(s.line[id], ka)
	s.waiting++
	if !s.up {
		s.early = append(s.early, unsent{id, ka})
	}
	return s, s.up, nil
}

// sendGather is how long the first of the keepalives sent together waits
// for the others: keepers renewing on one grid point (onGrid) start their
// attempts within it.
const sendGather = 2 * time.Millisecond

// send sends ka, a keepalive for id, on s. The keepalives of keepers that
// renew together go out together: the first one queued waits sendGather
// for the others, then all go in one go, which gRPC writes in one or a few
// system calls, and etcd reads in as few.
func (r *renewals) send(s *renewStream, id clientv3.LeaseID, ka *keepalive) {
	r.mu.Lock()
	ka.sent = true
	r.mu.Unlock()
	r.queue(s, id)
}

// queue queues a keepalive for id, marked sent, to go out on s with the
// others gathered.
func (r *renewals) queue(s *renewStream, id clientv3.LeaseID) {
	s.sendMu.Lock()
	defer s.sendMu.Unlock()
	s.queue = append(s.queue, id)
	if !s.sending {
		s.sending = true
		time.AfterFunc(sendGather, func() { r.flush(s) })
	}
}

// flush sends the queue of s until it is empty.
func (r *renewals) flush(s *renewStream) {
	for {
		s.sendMu.Lock()
		q := s.queue
		s.queue = nil
		if len(q) == 0 {
			s.sending = false
			s.sendMu.Unlock()
			return
		}
		s.sendMu.Unlock()
		for _, id := range q {
			err := s.st.Send(&pb.LeaseKeepAliveRequest{ID: int64(id)})
			if err != nil && !errors.Is(err, io.EOF) {
				// A broken stream's Send says only EOF, and its receiver
				// says why; any other error the receiver may never see.
				r.fail(s, err)
			}
		}
	}
}

// openLocked starts a new stream and makes it the current one.
func (r *renewals) openLocked() *renewStream {
	if r.cur != nil {
		r.leaveLocked(r.cur)
	}
	ctx, cancel := context.WithCancel(r.ctx)
	s := &renewStream{cancel: cancel, line: map[clientv3.LeaseID][]*keepalive{}}
	r.cur = s
	r.wg.Add(1)
	go r.run(ctx, s)
	return s
}

// run opens s, then hands each reply to the request it answers until the
// stream breaks or ends.
func (r *renewals) run(ctx context.Context, s *renewStream) {
	defer r.wg.Done()
	late := time.AfterFunc(openTimeout, s.cancel)
	st, err := r.lease.LeaseKeepAlive(ctx, grpc.WaitForReady(true))
	if !late.Stop() && err == nil {
		err = context.DeadlineExceeded
	}
	if err != nil {
		r.fail(s, err)
		return
	}
	s.st = st
	r.mu.Lock()
	s.up = true
	var early []clientv3.LeaseID
	for _, u := range s.early {
		if !u.ka.givenUp && !s.dead {
			u.ka.sent = true
			early = append(early, u.id)
		}
	}
	s.early = nil
	r.mu.Unlock()
	for _, id := range early {
		r.queue(s, id)
	}
	for {
		resp, err := st.Recv()
		if err != nil {
			r.fail(s, err)
			return
		}
		r.deliver(s, resp)
	}
}

// deliver hands resp to the oldest request in line for its lease.
func (r *renewals) deliver(s *renewStream, resp *pb.LeaseKeepAliveResponse) {
	id := clientv3.LeaseID(resp.ID)
	r.mu.Lock()
	q := s.line[id]
	if len(q) == 0 {
		r.mu.Unlock()
		return
	}
	ka := q[0]
	if len(q) == 1 {
		delete(s.line, id)
	} else {
		s.line[id] = q[1:]
	}
	if !ka.givenUp {
		s.waiting--
		r.endIfLeftLocked(s)
	}
	r.mu.Unlock()
	// A request given up still gets its reply, late: the renewal it
	// carries happened, and says how late the path answers.
	ka.done(keepaliveReply{ttl: resp.TTL})
}

// giveUp takes ka out of s's line, or, if it was sent, leaves it there
// given up, so that its reply is not taken for another's.
func (r *renewals) giveUp(s *renewStream, id clientv3.LeaseID, ka *keepalive) {
	r.mu.Lock()
	defer r.mu.Unlock()
	q := s.line[id]
	i := -1
	for j, x := range q {
		if x == ka {
			i = j
		}
	}
	if i < 0 || ka.givenUp {
		return // answered, or failed with the stream
	}
	ka.givenUp = true
	s.waiting--
	if !ka.sent {
		if q = append(q[:i], q[i+1:]...); len(q) == 0 {
			delete(s.line, id)
		} else {
			s.line[id] = q
		}
	}
	r.endIfLeftLocked(s)
}

// fail ends s with err: every request in its line fails with it.
func (r *renewals) fail(s *renewStream, err error) {
	r.mu.Lock()
	if s.dead {
		r.mu.Unlock()
		return
	}
	s.dead = true
	if r.cur == s {
		r.cur = nil
	}
	var failed []*keepalive
	for _, q := range s.line {
		for _, ka := range q {
			if !ka.givenUp {
				failed = append(failed, ka)
			}
		}
	}
	clear(s.line)
	s.early = nil
	s.waiting = 0
	s.cancel()
	r.mu.Unlock()
	for _, ka := range failed {
		ka.done(keepaliveReply{err: err})
	}
}

// leaveLocked makes s take no new request, and ends it once nothing waits.
func (r *renewals) leaveLocked(s *renewStream) {
	s.left = true
	if r.cur == s {
		r.cur = nil
	}
	r.endIfLeftLocked(s)
}

func (r *renewals) endIfLeftLocked(s *renewStream) {
	if s.left && s.waiting == 0 {
		s.cancel()
	}
}

// close ends every stream and waits for their goroutines.
func (r *renewals) close() {
	r.mu.Lock()
	r.closed = true
	r.cur = nil
	r.mu.Unlock()
	r.stop()
	r.wg.Wait()
}
