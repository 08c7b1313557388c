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

	"github.com/leasekeeper/leasekeeper/keeper/internal/alarm"
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

	// batch is the alarms of the keepers (gatherOn): a keepalive queued
	// while a batch of them rings goes out when the batch has rung, with
	// the others of the batch. gatherMu guards gathered, the streams with
	// keepalives queued for the batch's end.
	batch    *alarm.Set
	gatherMu sync.Mutex
	gathered []*renewStream
}

// renewStream is one LeaseKeepAlive stream and the keepalives waiting on it.
type renewStream struct {
	cancel context.CancelFunc
	st     pb.Lease_LeaseKeepAliveClient

	sendMu  sync.Mutex         // guards queue and sending
	queue   []clientv3.LeaseID // to send
	sending bool               // a sender sends the queue

	// Guarded by renewals.mu.
	line    map[clientv3.LeaseID]*keepalive // by lease, the oldest first, each the next behind it
	early   []unsent                        // put in line before the stream opened: run sends them
	waiting int                             // requests in line not given up
	up      bool                            // opened: requests put in line are sent at once
	dead    bool                            // broke or ended: takes no request
	left    bool                            // a newer stream took over: ends when nothing waits
}

// unsent is a request put in line before its stream opened.
type unsent struct {
	id clientv3.LeaseID
	ka *keepalive
}

// keepalive is one request in a stream's line.
type keepalive struct {
	c       *call      // its finish is called once, without the lock held; given up, only with the reply
	next    *keepalive // the next request for its lease in its stream's line
	fresh   bool       // its stream was opened for it
	sent    bool
	givenUp bool
}

// done hands rep to the call ka belongs to.
func (ka *keepalive) done(rep keepaliveReply) { ka.c.finish(ka, rep) }

type keepaliveReply struct {
	ttl int64
	err error
}

func newRenewals(cli *clientv3.Client) *renewals {
	r := &renewals{lease: clientv3.RetryLeaseClient(cli)}
	r.ctx, r.stop = context.WithCancel(cli.Ctx())
	return r
}

// keepAliveAsync sends a keepalive for id and gives rep once the TTL the
// server reset it to or the error, from the goroutine that received the
// reply; it never blocks, and rep must not either. Canceling gives the
// request up: after it, rep is given at most one more reply, if it comes (the renewal it carries happened, late), never with the error of
// a stream that broke. hedge says that an earlier request
// for id, in the same attempt, went unanswered for too long: the stream it
// waits on is left for a new one.
//
// A stream that was open before the call may have died meanwhile (a
// restarted member, an expired token) without anyone noticing: if it fails
// the request, the request goes again once on a new stream.
func (r *renewals) keepAliveAsync(id clientv3.LeaseID, hedge bool, rep replier) canceler {
	c := &call{r: r, id: id, rep: rep}
	c.start(hedge, false)
	return c
}

// call is one keepalive a keeper asked for, through its retry.
type call struct {
	r   *renewals
	id  clientv3.LeaseID
	rep replier

	mu       sync.Mutex // guards s, ka and canceled
	s        *renewStream
	ka       *keepalive
	canceled bool

	first keepalive // the first request's, which most calls send alone
}

// start puts the request in a stream's line and sends it, at once if the
// stream is open; else the stream sends it once it is (run), so that
// requests waiting for a stream take no goroutine each. retried says this
// is the one retry.
func (c *call) start(hedge, retried bool) {
	ka := &c.first
	if retried {
		ka = new(keepalive)
	}
	ka.c = c
	s, now, err := c.r.enqueue(c.id, hedge, ka)
	if err != nil {
		c.rep.reply(0, err)
		return
	}
	c.mu.Lock()
	c.s, c.ka = s, ka
	canceled := c.canceled
	c.mu.Unlock()
	if now {
		// enqueue marked it sent: it goes, given up or not, so that no
		// reply is taken for its.
		c.r.queue(s, c.id)
	}
	if canceled {
		c.r.giveUp(s, c.id, ka)
	}
}

// finish hands the reply to ka to done, or retries once on a new stream
// when a stream that was open before failed the request.
func (c *call) finish(ka *keepalive, rep keepaliveReply) {
	retried := ka != &c.first
	c.mu.Lock()
	canceled := c.canceled
	c.mu.Unlock()
	switch {
	case rep.err != nil && !ka.fresh && !retried && !canceled:
		c.start(false, true)
	case rep.err != nil:
		c.rep.reply(0, rep.err)
	case rep.ttl <= 0:
		c.rep.reply(0, rpctypes.ErrLeaseNotFound)
	default:
		c.rep.reply(rep.ttl, nil)
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
// stream was opened for it. now says the stream is open: ka is marked
// sent, and the caller queues it (queue); otherwise the stream sends it
// once open.
func (r *renewals) enqueue(id clientv3.LeaseID, hedge bool, ka *keepalive) (s *renewStream, now bool, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil, false, context.Canceled
	}
	s = r.cur
	if s != nil && hedge && s.up && !s.dead && s.line[id] != nil {
		r.leaveLocked(s)
		s = nil
	}
	ka.fresh = s == nil || s.dead
	if ka.fresh {
		s = r.openLocked()
	}
	ka.next = nil
	if q := s.line[id]; q == nil {
		s.line[id] = ka
	} else {
		for q.next != nil {
			q = q.next
		}
		q.next = ka
	}
	s.waiting++
	if !s.up {
		s.early = append(s.early, unsent{id, ka})
	}
	ka.sent = s.up
	return s, s.up, nil
}

// sendGather is how long the first of the keepalives queued outside a
// batch of the keepers' alarms (a hedge, a retry) waits for others: the
// keepers renewing on one grid point are gathered by their batch instead
// (gatherOn).
const sendGather = 2 * time.Millisecond

// queue queues a keepalive for id, marked sent, to go out on s with the
// others gathered. The keepalives of keepers that renew together go out
// together: the first one queued waits sendGather for the others, then all
// go in one go, which gRPC writes in one or a few system calls, and etcd
// reads in as few.
func (r *renewals) queue(s *renewStream, id clientv3.LeaseID) {
	s.sendMu.Lock()
	defer s.sendMu.Unlock()
	s.queue = append(s.queue, id)
	if s.sending {
		return
	}
	s.sending = true
	if r.batch != nil && r.batch.Ringing() {
		r.gatherMu.Lock()
		r.gathered = append(r.gathered, s)
		r.gatherMu.Unlock()
		return
	}
	time.AfterFunc(sendGather, func() { r.flush(s) })
}

// gatherOn makes the keepalives queued while a batch of batch's alarms
// rings go out when it has rung (sendGathered): the keepers renewing on
// one point of the renewal grid are rung in one batch, and their
// keepalives then go in one go, however long the batch took to ring.
func (r *renewals) gatherOn(batch *alarm.Set) {
	r.batch = batch
	batch.AfterRings(r.sendGathered)
}

// sendGathered sends the keepalives queued while the batch rang, on a
// goroutine of their own: a send may wait for the stream's flow control.
func (r *renewals) sendGathered() {
	r.gatherMu.Lock()
	ss := r.gathered
	r.gathered = nil
	r.gatherMu.Unlock()
	for _, s := range ss {
		go r.flush(s)
	}
}

// flush sends the queue of s until it is empty. One request message
// carries every ID in turn: Send encodes it before it returns.
func (r *renewals) flush(s *renewStream) {
	var req pb.LeaseKeepAliveRequest
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
			req.ID = int64(id)
			err := s.st.Send(&req)
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
	s := &renewStream{cancel: cancel, line: map[clientv3.LeaseID]*keepalive{}}
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
	ka := s.line[id]
	if ka == nil {
		r.mu.Unlock()
		return
	}
	if ka.next == nil {
		delete(s.line, id)
	} else {
		s.line[id] = ka.next
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
	var prev *keepalive
	x := s.line[id]
	for x != nil && x != ka {
		prev, x = x, x.next
	}
	if x == nil || ka.givenUp {
		return // answered, or failed with the stream
	}
	ka.givenUp = true
	s.waiting--
	if !ka.sent {
		switch {
		case prev != nil:
			prev.next = ka.next
		case ka.next == nil:
			delete(s.line, id)
		default:
			s.line[id] = ka.next
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
		for ka := q; ka != nil; ka = ka.next {
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
