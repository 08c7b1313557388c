package keeper

import (
	"context"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/status"

	"github.com/leasekeeper/leasekeeper/keeper/internal/alarm"
)

// putResult is what a successful put wrote: the revision of its
// transaction and each key's create revision, in the order of the kvs.
type putResult struct {
	rev    int64
	create []int64
}

// acquireResult is what an acquire found: on success the revisions as for
// a put; otherwise the lease and create revision of the holder.
type acquireResult struct {
	ok     bool
	rev    int64
	create int64
	holder clientv3.LeaseID
}

// replier takes the reply to one keepalive (backend.keepAliveAsync): an
// interface, not a func, so that the request that waits for the reply is
// the replier, and a renewal allocates no closure for it.
type replier interface {
	reply(ttl int64, err error)
}

// canceler gives up one keepalive (backend.keepAliveAsync).
type canceler interface {
	cancel()
}

// cancelFunc is a func as a canceler.
type cancelFunc func()

func (f cancelFunc) cancel() { f() }

// backend is everything the keeper asks of etcd. The real one wraps a
// clientv3.Client; tests substitute a fake that runs on synctest's fake time.
// Every method returns when ctx ends.
type backend interface {
	// grant asks for a lease of ttl seconds and returns its ID and the TTL
	// the server granted.
	grant(ctx context.Context, ttl int64) (clientv3.LeaseID, int64, error)
	// keepAliveAsync renews lease id once and gives rep once the TTL the
	// server reset it to, or the error; a lease the server does not know
	// is rpctypes.ErrLeaseNotFound. It does not block, and rep must not
	// either. The canceler gives the request up; rep may still be given
	// the reply after it. hedge says an earlier request of the same
	// attempt went unanswered too long: this one goes another way.
	keepAliveAsync(id clientv3.LeaseID, hedge bool, rep replier) canceler
	// timeToLive asks the server how long lease id has left, in whole
	// seconds rounded down; a lease it does not know has -1. It goes to
	// the server on every path, through a gRPC proxy too.
	timeToLive(ctx context.Context, id clientv3.LeaseID) (int64, error)
	// revoke revokes lease id, deleting its keys.
	revoke(ctx context.Context, id clientv3.LeaseID) error
	// put writes kvs attached to lease id in one transaction.
	put(ctx context.Context, id clientv3.LeaseID, kvs []kv) (putResult, error)
	// acquire writes p attached to lease id only if the key is absent or
	// already on lease id; otherwise it reports the holder's lease.
	acquire(ctx context.Context, id clientv3.LeaseID, p kv) (acquireResult, error)
	// read reads the keys in [start, end) and the revision it read them at.
	read(ctx context.Context, start, end string) (int64, []*mvccpb.KeyValue, error)
	// watch watches [start, end) from revision rev, until ctx ends.
	watch(ctx context.Context, start, end string, rev int64) (keyStream, error)
	// watches reports whether watch works; the tests' fake cannot watch.
	watches() bool
	// del deletes key if it is attached to lease id.
	del(ctx context.Context, id clientv3.LeaseID, key string) error
	// connState is the state of the client's connection now.
	connState() connectivity.State
	// waitStateChange waits until the connection's state differs from s,
	// and returns false if ctx ended first.
	waitStateChange(ctx context.Context, s connectivity.State) bool
	// connect makes an IDLE connection connect.
	connect()
	// resetConnectBackoff makes a connection in TRANSIENT_FAILURE try to
	// reconnect now instead of after gRPC's reconnect backoff.
	resetConnectBackoff()
	// close releases what the backend keeps between calls; the hub calls
	// it once, when the last keeper using the backend closed.
	close()
}

// keyStream is a watch's stream of changes.
type keyStream interface {
	// recv returns the watch's next response, or why it ended. A response
	// that says the watch was canceled ends it too.
	recv() (*pb.WatchResponse, error)
}

// clientBackend is the backend over a real etcd client.
type clientBackend struct {
	cli      *clientv3.Client
	lease    pb.LeaseClient
	watcher  pb.WatchClient
	renewals *renewals
}

// gatherer is a backend that sends the keepalives asked for by the alarms
// of one batch together (renewals.gatherOn).
type gatherer interface{ gatherOn(batch *alarm.Set) }

func (b *clientBackend) gatherOn(batch *alarm.Set) { b.renewals.gatherOn(batch) }

// newClientBackend returns the backend over cli; the keepers on cli share
// it through their hub.
func newClientBackend(cli *clientv3.Client) *clientBackend {
	return &clientBackend{cli: cli, lease: clientv3.RetryLeaseClient(cli), watcher: pb.NewWatchClient(cli.ActiveConnection()),
		renewals: newRenewals(cli)}
}

// grant waits for a ready connection like clientv3's Grant, but returns
// gRPC's status as it is: when the wait ends at ctx's deadline, its text
// says why no connection was ready (a refused certificate, say), which
// clientv3 would replace with the bare context error.
func (b *clientBackend) grant(ctx context.Context, ttl int64) (clientv3.LeaseID, int64, error) {
	r, err := b.lease.LeaseGrant(ctx, &pb.LeaseGrantRequest{TTL: ttl}, grpc.WaitForReady(true))
	if err != nil {
		return 0, 0, err
	}
	return clientv3.LeaseID(r.ID), r.TTL, nil
}

func (b *clientBackend) keepAliveAsync(id clientv3.LeaseID, hedge bool, rep replier) canceler {
	return b.renewals.keepAliveAsync(id, hedge, rep)
}

// close ends the renewal stream.
func (b *clientBackend) close() { b.renewals.close() }

func (b *clientBackend) timeToLive(ctx context.Context, id clientv3.LeaseID) (int64, error) {
	r, err := b.lease.LeaseTimeToLive(ctx, &pb.LeaseTimeToLiveRequest{ID: int64(id)})
	if err != nil {
		return 0, err
	}
	return r.TTL, nil
}

func (b *clientBackend) revoke(ctx context.Context, id clientv3.LeaseID) error {
	_, err := b.cli.Revoke(ctx, id)
	return err
}

func (b *clientBackend) put(ctx context.Context, id clientv3.LeaseID, kvs []kv) (putResult, error) {
	ops := make([]clientv3.Op, len(kvs))
	for i, p := range kvs {
		ops[i] = clientv3.OpPut(p.key, p.value, clientv3.WithLease(id), clientv3.WithPrevKV())
	}
	resp, err := b.cli.Txn(ctx).Then(ops...).Commit()
	if err != nil {
		return putResult{}, err
	}
	r := putResult{rev: resp.Header.Revision, create: make([]int64, len(kvs))}
	for i, op := range resp.Responses {
		r.create[i] = createRevision(op.GetResponsePut().GetPrevKv(), r.rev)
	}
	return r, nil
}

// createRevision is the create revision of a key put at rev whose previous
// value was prev (nil: the put created it).
func createRevision(prev *mvccpb.KeyValue, rev int64) int64 {
	if prev == nil {
		return rev
	}
	return prev.CreateRevision
}

// acquire puts p if the key does not exist, or else if it is on lease id;
// otherwise it reads the key to name its holder. One transaction, nested.
func (b *clientBackend) acquire(ctx context.Context, id clientv3.LeaseID, p kv) (acquireResult, error) {
	put := clientv3.OpPut(p.key, p.value, clientv3.WithLease(id), clientv3.WithPrevKV())
	resp, err := b.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(p.key), "=", 0)).
		Then(put).
		Else(clientv3.OpTxn(
			[]clientv3.Cmp{clientv3.Compare(clientv3.LeaseValue(p.key), "=", id)},
			[]clientv3.Op{put},
			[]clientv3.Op{clientv3.OpGet(p.key)})).
		Commit()
	if err != nil {
		return acquireResult{}, err
	}
	rev := resp.Header.Revision
	if resp.Succeeded {
		return acquireResult{ok: true, rev: rev, create: rev}, nil
	}
	inner := resp.Responses[0].GetResponseTxn()
	if inner.GetSucceeded() {
		prev := inner.Responses[0].GetResponsePut().GetPrevKv()
		return acquireResult{ok: true, rev: rev, create: createRevision(prev, rev)}, nil
	}
	r := acquireResult{rev: rev}
	if kvs := inner.Responses[0].GetResponseRange().GetKvs(); len(kvs) > 0 {
		r.holder, r.create = clientv3.LeaseID(kvs[0].Lease), kvs[0].CreateRevision
	}
	return r, nil
}

func (b *clientBackend) read(ctx context.Context, start, end string) (int64, []*mvccpb.KeyValue, error) {
	resp, err := b.cli.Get(ctx, start, clientv3.WithRange(end))
	if err != nil {
		return 0, nil, err
	}
	return resp.Header.Revision, resp.Kvs, nil
}

func (b *clientBackend) watches() bool { return true }

// watch opens a Watch stream of its own for the one watch of the hub,
// rather than going through clientv3's Watcher: the Watcher runs four
// goroutines and keeps buffers per client for a watch that changes rarely,
// where a stream read by the hub's own goroutine costs gRPC's one. It
// asks for a leader, so that a member cut off from its cluster ends the
// watch instead of holding it silent.
func (b *clientBackend) watch(ctx context.Context, start, end string, rev int64) (keyStream, error) {
	st, err := b.watcher.Watch(clientv3.WithRequireLeader(ctx))
	if err != nil {
		return nil, err
	}
	create := &pb.WatchCreateRequest{Key: []byte(start), RangeEnd: []byte(end), StartRevision: rev}
	if err := st.Send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_CreateRequest{CreateRequest: create}}); err != nil {
		if _, rerr := st.Recv(); rerr != nil {
			err = rerr // a broken stream's Send says only EOF
		}
		return nil, err
	}
	return grpcKeyStream{st}, nil
}

// grpcKeyStream is a keyStream over a Watch stream that carries one watch.
type grpcKeyStream struct{ st pb.Watch_WatchClient }

func (s grpcKeyStream) recv() (*pb.WatchResponse, error) {
	resp, err := s.st.Recv()
	if err != nil {
		return nil, err
	}
	return resp, watchEnded(resp)
}

// watchEnded is why a response ends its watch, as clientv3's Watcher
// tells it, or nil.
func watchEnded(resp *pb.WatchResponse) error {
	switch {
	case resp.CompactRevision != 0:
		return rpctypes.ErrCompacted
	case !resp.Canceled:
		return nil
	case resp.CancelReason != "":
		return rpctypes.Error(status.Error(codes.FailedPrecondition, resp.CancelReason))
	}
	return rpctypes.ErrFutureRev
}

func (b *clientBackend) del(ctx context.Context, id clientv3.LeaseID, key string) error {
	_, err := b.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.LeaseValue(key), "=", id)).
		Then(clientv3.OpDelete(key)).
		Commit()
	return err
}

func (b *clientBackend) connState() connectivity.State {
	return b.cli.ActiveConnection().GetState()
}

func (b *clientBackend) waitStateChange(ctx context.Context, s connectivity.State) bool {
	return b.cli.ActiveConnection().WaitForStateChange(ctx, s)
}

func (b *clientBackend) connect() { b.cli.ActiveConnection().Connect() }

func (b *clientBackend) resetConnectBackoff() { b.cli.ActiveConnection().ResetConnectBackoff() }
