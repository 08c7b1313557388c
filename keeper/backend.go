package keeper

import (
	"context"
	"errors"
	"io"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/connectivity"
)

// kv is one registered key and its value.
type kv struct{ key, value string }

// backend is everything the keeper asks of etcd. The real one wraps a
// clientv3.Client; tests substitute a fake that runs on synctest's fake time.
// Every method returns when ctx ends.
type backend interface {
	// grant asks for a lease of ttl seconds and returns its ID and the TTL
	// the server granted.
	grant(ctx context.Context, ttl int64) (clientv3.LeaseID, int64, error)
	// keepAliveOnce renews lease id once and returns the TTL the server
	// reset it to; a lease the server does not know is rpctypes.ErrLeaseNotFound.
	keepAliveOnce(ctx context.Context, id clientv3.LeaseID) (int64, error)
	// revoke revokes lease id, deleting its keys.
	revoke(ctx context.Context, id clientv3.LeaseID) error
	// put writes kvs attached to lease id in one transaction.
	put(ctx context.Context, id clientv3.LeaseID, kvs []kv) error
	// del deletes key if it is attached to lease id.
	del(ctx context.Context, id clientv3.LeaseID, key string) error
	// connState is the state of the client's connection now.
	connState() connectivity.State
	// waitReady returns true once the connection is READY, false when ctx
	// ends first.
	waitReady(ctx context.Context) bool
	// close releases what the backend keeps between calls; the keeper
	// calls it once, at Close, after its last attempt.
	close()
}

// clientBackend is the backend over a real etcd client.
type clientBackend struct {
	cli     *clientv3.Client
	lease   pb.LeaseClient
	streams *streams
}

// newClientBackend returns the backend over cli. Renewal streams are kept
// open between renewals when cli authenticates with a password: etcd's
// client authenticates again at every stream it opens.
func newClientBackend(cli *clientv3.Client) *clientBackend {
	return &clientBackend{cli: cli, lease: clientv3.RetryLeaseClient(cli),
		streams: newStreams(cli, cli.Username != "" && cli.Password != "")}
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

// keepAliveOnce sends one keepalive and waits for its reply. Unlike
// clientv3's KeepAliveOnce it does not retry inside the call, so the
// attempt's deadline and the keeper's backoff stay in charge. A stream that
// is abandoned at the deadline or fails is closed, so the next attempt opens
// a new one, which the balancer may send to another member.
func (b *clientBackend) keepAliveOnce(ctx context.Context, id clientv3.LeaseID) (int64, error) {
	for {
		s, reused, err := b.streams.get(ctx)
		if err != nil {
			return 0, clientv3.ContextError(ctx, err)
		}
		ttl, err := b.keepAliveOn(ctx, s, id)
		if err != nil && reused && ctx.Err() == nil {
			// A stream kept idle may have died meanwhile (a restarted
			// member, an expired token): try again on a new one.
			continue
		}
		return ttl, err
	}
}

// keepAliveOn renews id on s within ctx; s ends if ctx ends first.
func (b *clientBackend) keepAliveOn(ctx context.Context, s *renewStream, id clientv3.LeaseID) (int64, error) {
	stop := context.AfterFunc(ctx, s.cancel)
	err := s.Send(&pb.LeaseKeepAliveRequest{ID: int64(id)})
	var resp *pb.LeaseKeepAliveResponse
	if err == nil || errors.Is(err, io.EOF) {
		// A broken stream's Send says only EOF; Recv says why.
		resp, err = s.Recv()
	}
	if stopped := stop(); err != nil || !stopped {
		s.cancel()
	} else {
		b.streams.put(s)
	}
	if err != nil {
		return 0, clientv3.ContextError(ctx, err)
	}
	if resp.TTL <= 0 {
		return 0, rpctypes.ErrLeaseNotFound
	}
	return resp.TTL, nil
}

// close ends the renewal stream kept between renewals.
func (b *clientBackend) close() { b.streams.close() }

func (b *clientBackend) revoke(ctx context.Context, id clientv3.LeaseID) error {
	_, err := b.cli.Revoke(ctx, id)
	return err
}

func (b *clientBackend) put(ctx context.Context, id clientv3.LeaseID, kvs []kv) error {
	ops := make([]clientv3.Op, len(kvs))
	for i, p := range kvs {
		ops[i] = clientv3.OpPut(p.key, p.value, clientv3.WithLease(id))
	}
	_, err := b.cli.Txn(ctx).Then(ops...).Commit()
	return err
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

func (b *clientBackend) waitReady(ctx context.Context) bool {
	conn := b.cli.ActiveConnection()
	for {
		s := conn.GetState()
		switch s {
		case connectivity.Ready:
			return true
		case connectivity.Idle:
			conn.Connect()
		case connectivity.Shutdown:
			return false
		}
		if !conn.WaitForStateChange(ctx, s) {
			return false
		}
	}
}
