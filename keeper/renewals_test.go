package keeper

import (
	"context"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
)

// fakeLeases are gRPC servers of etcd's Lease service whose keepalives the
// test answers by hand, to drive the hub's renewal stream.
type fakeLeases struct {
	streams atomic.Int32  // streams opened on any server
	reqs    chan fakeKA   // every keepalive received, in order
	ended   chan int      // streams that ended
	opened  chan openedAt // streams opened, and on which server
}

type openedAt struct{ stream, server int }

// fakeKA is one keepalive a fake server received: answer it with reply.
type fakeKA struct {
	stream int
	id     clientv3.LeaseID
	reply  func(ttl int64)
}

type fakeLeaseServer struct {
	pb.UnimplementedLeaseServer
	f      *fakeLeases
	server int
}

// LeaseGrant answers with the server's number as the lease ID.
func (s *fakeLeaseServer) LeaseGrant(context.Context, *pb.LeaseGrantRequest) (*pb.LeaseGrantResponse, error) {
	return &pb.LeaseGrantResponse{ID: int64(s.server), TTL: 10}, nil
}

func (s *fakeLeaseServer) LeaseKeepAlive(st pb.Lease_LeaseKeepAliveServer) error {
	n := int(s.f.streams.Add(1))
	s.f.opened <- openedAt{n, s.server}
	defer func() { s.f.ended <- n }()
	var mu sync.Mutex
	for {
		req, err := st.Recv()
		if err != nil {
			return err
		}
		s.f.reqs <- fakeKA{stream: n, id: clientv3.LeaseID(req.ID), reply: func(ttl int64) {
			mu.Lock()
			defer mu.Unlock()
			_ = st.Send(&pb.LeaseKeepAliveResponse{ID: req.ID, TTL: ttl})
		}}
	}
}

// startFakeLeases starts n fake servers and returns a client of all of
// them.
func startFakeLeases(t *testing.T, n int) (*fakeLeases, *clientv3.Client) {
	f := &fakeLeases{reqs: make(chan fakeKA, 16), ended: make(chan int, 16), opened: make(chan openedAt, 16)}
	var eps []string
	for i := range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		srv := grpc.NewServer()
		pb.RegisterLeaseServer(srv, &fakeLeaseServer{f: f, server: i})
		go func() { _ = srv.Serve(l) }()
		t.Cleanup(srv.Stop)
		eps = append(eps, l.Addr().String())
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: eps, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	require.NoError(t, err)
	t.Cleanup(func() { _ = cli.Close() })
	// Wait until the balancer has every server ready: then it sends
	// calls to them in turn.
	lease := pb.NewLeaseClient(cli.ActiveConnection())
	seen := map[int64]bool{}
	for deadline := time.Now().Add(10 * time.Second); len(seen) < n; {
		require.True(t, time.Now().Before(deadline), "servers ready: %v of %d", seen, n)
		r, err := lease.LeaseGrant(context.Background(), &pb.LeaseGrantRequest{TTL: 10}, grpc.WaitForReady(true))
		require.NoError(t, err)
		seen[r.ID] = true
	}
	return f, cli
}

// answer is what a keepAliveAsync call was told.
type answer struct {
	ttl int64
	err error
}

// ask sends a keepalive for id on r, as keepAliveAsync does, with done
// for its replier, and returns the func that gives it up.
func ask(r *renewals, id clientv3.LeaseID, hedge bool, done func(int64, error)) func() {
	return r.keepAliveAsync(id, hedge, replyFunc(done)).cancel
}

func answers() (chan answer, func(int64, error)) {
	ch := make(chan answer, 1)
	return ch, func(ttl int64, err error) { ch <- answer{ttl, err} }
}

func recvOrFail[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(10 * time.Second):
		t.Fatalf("no %s within 10s", what)
		panic("unreachable")
	}
}

// TestRenewalsShareOneStream: keepalives of different leases, asked at
// different times, go on one stream, and each reply reaches the request
// for its lease, whatever the order of the replies.
func TestRenewalsShareOneStream(t *testing.T) {
	f, cli := startFakeLeases(t, 1)
	r := newRenewals(cli)
	defer r.close()
	got1, done1 := answers()
	got2, done2 := answers()
	ask(r, 1, false, done1)
	ka1 := recvOrFail(t, f.reqs, "keepalive for lease 1")
	ask(r, 2, false, done2)
	ka2 := recvOrFail(t, f.reqs, "keepalive for lease 2")
	assert.Equal(t, ka1.stream, ka2.stream, "two streams for two leases")
	ka2.reply(22)
	ka1.reply(11)
	assert.Equal(t, answer{ttl: 11}, recvOrFail(t, got1, "answer for lease 1"))
	assert.Equal(t, answer{ttl: 22}, recvOrFail(t, got2, "answer for lease 2"))
	assert.EqualValues(t, 1, f.streams.Load())

	// A lease the server does not know comes back as ErrLeaseNotFound.
	got3, done3 := answers()
	ask(r, 3, false, done3)
	recvOrFail(t, f.reqs, "keepalive for lease 3").reply(0)
	assert.ErrorIs(t, recvOrFail(t, got3, "answer for lease 3").err, rpctypes.ErrLeaseNotFound)
}

// TestRenewalsGivenUpKeepTheirPlace: the late reply to a request given up
// after it was sent is not taken for the reply to a later request for the
// same lease, which would date that renewal before it was sent.
func TestRenewalsGivenUpKeepTheirPlace(t *testing.T) {
	f, cli := startFakeLeases(t, 1)
	r := newRenewals(cli)
	defer r.close()
	gotOld, doneOld := answers()
	cancel := ask(r, 5, false, doneOld)
	old := recvOrFail(t, f.reqs, "first keepalive")
	cancel()
	got, done := answers()
	ask(r, 5, false, done)
	next := recvOrFail(t, f.reqs, "second keepalive")
	require.Equal(t, old.stream, next.stream)
	old.reply(1)
	next.reply(2)
	assert.Equal(t, answer{ttl: 2}, recvOrFail(t, got, "answer to the second keepalive"))
	assert.Equal(t, answer{ttl: 1}, recvOrFail(t, gotOld, "late answer to the keepalive given up"))
}

// TestRenewalsLeaveAnOverdueStream: a hedge for a keepalive that waits on
// the current stream goes on a new stream, which the balancer opens to the
// other member; later keepalives follow it, and the overdue stream ends
// once its request is given up.
func TestRenewalsLeaveAnOverdueStream(t *testing.T) {
	f, cli := startFakeLeases(t, 2)
	r := newRenewals(cli)
	defer r.close()
	gotStuck, doneStuck := answers()
	cancelStuck := ask(r, 7, false, doneStuck)
	stuck := recvOrFail(t, f.reqs, "the keepalive that gets no reply")
	first := recvOrFail(t, f.opened, "first stream")

	got, done := answers()
	ask(r, 7, true, done)
	hedge := recvOrFail(t, f.reqs, "the hedge")
	second := recvOrFail(t, f.opened, "second stream")
	assert.NotEqual(t, stuck.stream, hedge.stream, "the hedge went on the overdue stream")
	assert.NotEqual(t, first.server, second.server, "the new stream went to the same member")
	hedge.reply(10)
	assert.Equal(t, answer{ttl: 10}, recvOrFail(t, got, "answer to the hedge"))

	gotNext, doneNext := answers()
	ask(r, 8, false, doneNext)
	next := recvOrFail(t, f.reqs, "a later keepalive")
	assert.Equal(t, hedge.stream, next.stream, "a later keepalive went back to the overdue stream")
	next.reply(10)
	assert.Equal(t, answer{ttl: 10}, recvOrFail(t, gotNext, "answer to the later keepalive"))

	cancelStuck()
	assert.Equal(t, stuck.stream, recvOrFail(t, f.ended, "the overdue stream's end"))
	assert.Empty(t, gotStuck, "a request given up was answered")
	assert.EqualValues(t, 2, f.streams.Load())
}

// TestRenewalsEndWithTheHub: closing the hub ends its stream, which fails
// every request waiting on it, and a closed hub takes no new request.
func TestRenewalsEndWithTheHub(t *testing.T) {
	f, cli := startFakeLeases(t, 1)
	r := newRenewals(cli)
	got, done := answers()
	ask(r, 9, false, done)
	recvOrFail(t, f.reqs, "keepalive")
	r.close()
	assert.Error(t, recvOrFail(t, got, "the request's failure").err)
	gotAfter, doneAfter := answers()
	ask(r, 9, false, doneAfter)
	assert.Error(t, recvOrFail(t, gotAfter, "refusal after close").err, "a closed hub took a request")
}

// gatedLease holds the opening of every renewal stream until open closes.
type gatedLease struct {
	pb.LeaseClient
	open chan struct{}
}

func (g gatedLease) LeaseKeepAlive(ctx context.Context, opts ...grpc.CallOption) (pb.Lease_LeaseKeepAliveClient, error) {
	<-g.open
	return g.LeaseClient.LeaseKeepAlive(ctx, opts...)
}

// TestRenewalsWaitForTheStreamWithoutGoroutines: keepalives asked while
// the stream opens wait in its line, not each on a goroutine of its own,
// and go out once it is open, in order; one given up meanwhile never does.
func TestRenewalsWaitForTheStreamWithoutGoroutines(t *testing.T) {
	f, cli := startFakeLeases(t, 1)
	r := newRenewals(cli)
	defer r.close()
	gate := make(chan struct{})
	r.lease = gatedLease{LeaseClient: r.lease, open: gate}

	before := runtime.NumGoroutine()
	got1, done1 := answers()
	got3, done3 := answers()
	ask(r, 1, false, done1)
	cancel2 := ask(r, 2, false, func(int64, error) { t.Error("a request given up before it was sent was answered") })
	ask(r, 3, false, done3)
	// Ten for one lease, of which the first, the fifth and the last are
	// given up before the stream opens: the others keep their order.
	got4 := make(chan int, 10)
	var cancel4 []func()
	for i := range 10 {
		cancel4 = append(cancel4, ask(r, 4, false, func(int64, error) { got4 <- i }))
	}
	// The stream's own goroutine waits at the gate; the 13 requests wait
	// in its line.
	assert.LessOrEqual(t, runtime.NumGoroutine()-before, 2, "goroutines per request waiting for the stream")
	cancel2()
	for _, i := range []int{0, 4, 9} {
		cancel4[i]()
	}
	close(gate)

	first := recvOrFail(t, f.reqs, "first keepalive")
	second := recvOrFail(t, f.reqs, "second keepalive")
	assert.Equal(t, clientv3.LeaseID(1), first.id)
	assert.Equal(t, clientv3.LeaseID(3), second.id, "the request given up went out")
	first.reply(11)
	second.reply(33)
	assert.Equal(t, answer{ttl: 11}, recvOrFail(t, got1, "answer for lease 1"))
	assert.Equal(t, answer{ttl: 33}, recvOrFail(t, got3, "answer for lease 3"))
	for _, want := range []int{1, 2, 3, 5, 6, 7, 8} {
		ka := recvOrFail(t, f.reqs, "keepalive for lease 4")
		require.Equal(t, clientv3.LeaseID(4), ka.id)
		ka.reply(4)
		assert.Equal(t, want, recvOrFail(t, got4, "answer for lease 4"), "the request an answer for lease 4 reached")
	}
	assert.Empty(t, f.reqs, "requests given up before the stream opened went out")
	assert.EqualValues(t, 1, f.streams.Load())
}
