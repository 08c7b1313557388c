package errors

import (
	"context"
	stderrors "errors"
	"io"
	"net"
	"strings"
	"syscall"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/status"
)

// connKnowledge is what the caller knows about its connection when an error
// arrived; it only changes how deadlines are classified.
type connKnowledge uint8

const (
	connUnknown connKnowledge = iota
	connReady
	connNotReady
)

// Classify returns err wrapped in an *Error carrying its Kind, or nil for
// nil. An err that already holds an *Error is returned unchanged; one whose
// Is method matches a kind sentinel keeps that kind. Deadlines
// are reported as Timeout; use ClassifyConn where the connection state is
// known.
func Classify(err error) error {
	return wrap(err, connUnknown)
}

// ClassifyConn is Classify for a caller that knows the state of its client
// connection when err arrived: a deadline while the connection was not READY
// is ClusterUnreachable rather than Timeout.
func ClassifyConn(err error, state connectivity.State) error {
	if state == connectivity.Ready {
		return wrap(err, connReady)
	}
	return wrap(err, connNotReady)
}

func wrap(err error, conn connKnowledge) error {
	if err == nil {
		return nil
	}
	var e *Error
	if stderrors.As(err, &e) {
		return err
	}
	if k, ok := declaredKind(err); ok {
		return &Error{Kind: k, Err: err}
	}
	return &Error{Kind: classify(err, conn), Err: err}
}

// classify decides the kind of a non-nil error that holds no *Error.
func classify(err error, conn connKnowledge) Kind {
	var halted clientv3.ErrKeepAliveHalted
	if stderrors.As(err, &halted) {
		if halted.Reason == nil {
			return Unknown
		}
		return classify(halted.Reason, conn)
	}
	if k, ok := etcdKind(err); ok {
		return k
	}
	if tlsRefusal(err) {
		return PermissionDenied
	}
	switch {
	case stderrors.Is(err, context.Canceled):
		return Canceled
	case stderrors.Is(err, context.DeadlineExceeded):
		return deadlineKind(conn)
	case stderrors.Is(err, clientv3.ErrNoAvailableEndpoints):
		return ClusterUnreachable
	}
	if s, ok := status.FromError(err); ok && s.Code() != codes.Unknown {
		return codeKind(s.Code(), conn)
	}
	if isTransport(err) {
		return ClusterUnreachable
	}
	// etcd sends lease.ErrNotPrimary as a bare codes.Unknown status; its text
	// is all there is to match, and only under code Unknown.
	if s, ok := status.FromError(err); ok && strings.Contains(s.Message(), "not a primary lessor") {
		return Unavailable
	}
	return Unknown
}

func deadlineKind(conn connKnowledge) Kind {
	if conn == connNotReady {
		return ClusterUnreachable
	}
	return Timeout
}

// codeKind maps a gRPC code that matched no etcd value. etcd's own
// Unavailable replies are all matched by value first, so a bare Unavailable
// comes from gRPC's transport: no server replied.
func codeKind(c codes.Code, conn connKnowledge) Kind {
	switch c {
	case codes.Canceled:
		return Canceled
	case codes.DeadlineExceeded:
		return deadlineKind(conn)
	case codes.InvalidArgument, codes.AlreadyExists, codes.OutOfRange, codes.Unimplemented:
		return InvalidArgument
	case codes.PermissionDenied, codes.Unauthenticated:
		return PermissionDenied
	case codes.ResourceExhausted:
		return RateLimited
	case codes.Unavailable:
		return ClusterUnreachable
	case codes.Aborted, codes.DataLoss:
		return Unavailable
	}
	// OK, Unknown, NotFound, FailedPrecondition, Internal: nothing specific
	// to say, and a retry may help.
	return Unknown
}

// isTransport reports errors raised below gRPC: refused or reset
// connections, DNS failures, closed sockets.
func isTransport(err error) bool {
	var ne net.Error
	var oe *net.OpError
	switch {
	case stderrors.As(err, &oe), stderrors.As(err, &ne):
		return true
	case stderrors.Is(err, syscall.ECONNREFUSED), stderrors.Is(err, syscall.ECONNRESET),
		stderrors.Is(err, syscall.EHOSTUNREACH), stderrors.Is(err, syscall.ENETUNREACH),
		stderrors.Is(err, syscall.EPIPE), stderrors.Is(err, io.EOF),
		stderrors.Is(err, io.ErrUnexpectedEOF), stderrors.Is(err, net.ErrClosed):
		return true
	}
	return false
}
