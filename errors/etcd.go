package errors

import (
	stderrors "errors"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// etcdKey identifies one of etcd's error values: rpctypes.Error converts a
// status to an EtcdError with the same code and text, so the pair matches
// both forms and nothing else.
type etcdKey struct {
	code codes.Code
	desc string
}

// etcdErrors lists every server error value etcd defines in rpctypes with its
// kind. The client-side EtcdError values share their code and text, so they
// match the same entries. A test parses rpctypes' source so that a value
// added there cannot be missing here.
var etcdErrors = []struct {
	err  error
	kind Kind
}{
	// The request is wrong: retrying it unchanged cannot help.
	{rpctypes.ErrGRPCEmptyKey, InvalidArgument},
	{rpctypes.ErrGRPCKeyNotFound, InvalidArgument},
	{rpctypes.ErrGRPCValueProvided, InvalidArgument},
	{rpctypes.ErrGRPCLeaseProvided, InvalidArgument},
	{rpctypes.ErrGRPCTooManyOps, InvalidArgument},
	{rpctypes.ErrGRPCDuplicateKey, InvalidArgument},
	{rpctypes.ErrGRPCInvalidClientAPIVersion, InvalidArgument},
	{rpctypes.ErrGRPCInvalidSortOption, InvalidArgument},
	{rpctypes.ErrGRPCCompacted, InvalidArgument},
	{rpctypes.ErrGRPCFutureRev, InvalidArgument},
	{rpctypes.ErrGRPCLeaseExist, InvalidArgument},
	{rpctypes.ErrGRPCLeaseTTLTooLarge, InvalidArgument},
	{rpctypes.ErrGRPCRequestTooLarge, InvalidArgument},
	{rpctypes.ErrGRPCMemberExist, InvalidArgument},
	{rpctypes.ErrGRPCPeerURLExist, InvalidArgument},
	{rpctypes.ErrGRPCMemberBadURLs, InvalidArgument},
	{rpctypes.ErrGRPCMemberNotLearner, InvalidArgument},
	{rpctypes.ErrGRPCTooManyLearners, InvalidArgument},
	{rpctypes.ErrGRPCClusterIDMismatch, InvalidArgument},
	{rpctypes.ErrGRPCRootUserNotExist, InvalidArgument},
	{rpctypes.ErrGRPCRootRoleNotExist, InvalidArgument},
	{rpctypes.ErrGRPCUserAlreadyExist, InvalidArgument},
	{rpctypes.ErrGRPCUserEmpty, InvalidArgument},
	{rpctypes.ErrGRPCRoleAlreadyExist, InvalidArgument},
	{rpctypes.ErrGRPCRoleEmpty, InvalidArgument},
	{rpctypes.ErrGRPCAuthNotEnabled, InvalidArgument},
	{rpctypes.ErrGRPCInvalidAuthMgmt, InvalidArgument},
	{rpctypes.ErrGRPCBadLeaderTransferee, InvalidArgument},
	{rpctypes.ErrGRPCWrongDowngradeVersionFormat, InvalidArgument},
	{rpctypes.ErrGRPCInvalidDowngradeTargetVersion, InvalidArgument},
	{rpctypes.ErrGRPCDowngradeInProcess, InvalidArgument},
	{rpctypes.ErrGRPCNoInflightDowngrade, InvalidArgument},

	// The cluster answered but cannot serve now: no quorum, no leader, or a
	// member that is stopping, behind or not a voter.
	{rpctypes.ErrGRPCNoLeader, Unavailable},
	{rpctypes.ErrGRPCNotLeader, Unavailable},
	{rpctypes.ErrGRPCLeaderChanged, Unavailable},
	{rpctypes.ErrGRPCNotCapable, Unavailable},
	{rpctypes.ErrGRPCStopped, Unavailable},
	{rpctypes.ErrGRPCTimeout, Unavailable},
	{rpctypes.ErrGRPCTimeoutDueToLeaderFail, Unavailable},
	{rpctypes.ErrGRPCTimeoutDueToConnectionLost, Unavailable},
	{rpctypes.ErrGRPCTimeoutWaitAppliedIndex, Unavailable},
	{rpctypes.ErrGRPCUnhealthy, Unavailable},
	{rpctypes.ErrGRPCCorrupt, Unavailable},
	{rpctypes.ErrGRPCNotSupportedForLearner, Unavailable},
	{rpctypes.ErrGRPCMemberNotEnoughStarted, Unavailable},
	{rpctypes.ErrGRPCLearnerNotReady, Unavailable},
	{rpctypes.ErrGRPCClusterVersionUnavailable, Unavailable},
	{rpctypes.ErrGRPCCanceled, Unavailable},
	// The auth store moved on while the request was in flight; the client
	// refreshes its token and a retry succeeds.
	{rpctypes.ErrGRPCAuthOldRevision, Unavailable},

	{rpctypes.ErrGRPCDeadlineExceeded, Timeout},
	{rpctypes.ErrGRPCRequestTooManyRequests, RateLimited},
	{rpctypes.ErrGRPCNoSpace, NoSpace},
	{rpctypes.ErrGRPCLeaseNotFound, LeaseExpired},

	{rpctypes.ErrGRPCAuthFailed, PermissionDenied},
	{rpctypes.ErrGRPCPermissionNotGiven, PermissionDenied},
	{rpctypes.ErrGRPCPermissionDenied, PermissionDenied},
	{rpctypes.ErrGRPCRoleNotGranted, PermissionDenied},
	{rpctypes.ErrGRPCPermissionNotGranted, PermissionDenied},
	{rpctypes.ErrGRPCUserNotFound, PermissionDenied},
	{rpctypes.ErrGRPCRoleNotFound, PermissionDenied},
	{rpctypes.ErrGRPCInvalidAuthToken, PermissionDenied},

	// Only member and watch APIs return these; they say nothing about a lease.
	{rpctypes.ErrGRPCMemberNotFound, Unknown},
	{rpctypes.ErrGRPCWatchCanceled, Unknown},
}

var etcdKinds = func() map[etcdKey]Kind {
	m := make(map[etcdKey]Kind, len(etcdErrors))
	for _, e := range etcdErrors {
		s, _ := status.FromError(e.err)
		m[etcdKey{s.Code(), s.Message()}] = e.kind
	}
	return m
}()

// grpcStatus is implemented by gRPC status errors.
type grpcStatus interface{ GRPCStatus() *status.Status }

// etcdKind matches err against etcd's error values, looking through wraps.
func etcdKind(err error) (Kind, bool) {
	var key etcdKey
	var ee rpctypes.EtcdError
	var gs grpcStatus
	switch {
	case stderrors.As(err, &ee):
		key = etcdKey{ee.Code(), ee.Error()}
	case stderrors.As(err, &gs) && gs.GRPCStatus() != nil:
		s := gs.GRPCStatus()
		key = etcdKey{s.Code(), s.Message()}
	default:
		return Unknown, false
	}
	k, ok := etcdKinds[key]
	return k, ok
}
