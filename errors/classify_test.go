package errors_test

import (
	"context"
	"crypto/x509"
	stderrors "errors"
	"fmt"
	"io"
	"net"
	"syscall"
	"testing"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/status"

	lkerrors "github.com/leasekeeper/leasekeeper/errors"
)

func TestClassify(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want lkerrors.Kind
	}{
		{"context canceled", context.Canceled, lkerrors.Canceled},
		{"context deadline", context.DeadlineExceeded, lkerrors.Timeout},
		{"grpc canceled status", status.Error(codes.Canceled, "grpc: the client connection is closing"), lkerrors.Canceled},
		{"grpc deadline status", status.Error(codes.DeadlineExceeded, "context deadline exceeded"), lkerrors.Timeout},
		{"grpc unavailable without reply", status.Error(codes.Unavailable, "connection error: desc = \"transport: Error while dialing: dial tcp 127.0.0.1:1: connect: connection refused\""), lkerrors.ClusterUnreachable},
		{"no leader", rpctypes.ErrNoLeader, lkerrors.Unavailable},
		{"no leader as status", rpctypes.ErrGRPCNoLeader, lkerrors.Unavailable},
		{"not primary lessor", status.Error(codes.Unknown, "not a primary lessor"), lkerrors.Unavailable},
		{"too many requests", rpctypes.ErrTooManyRequests, lkerrors.RateLimited},
		{"no space", rpctypes.ErrNoSpace, lkerrors.NoSpace},
		{"lease not found", rpctypes.ErrLeaseNotFound, lkerrors.LeaseExpired},
		{"member not found is not a lease", rpctypes.ErrMemberNotFound, lkerrors.Unknown},
		{"unknown NotFound status", status.Error(codes.NotFound, "etcdserver: something else not found"), lkerrors.Unknown},
		{"permission denied", rpctypes.ErrPermissionDenied, lkerrors.PermissionDenied},
		{"auth failed", rpctypes.ErrAuthFailed, lkerrors.PermissionDenied},
		{"user not found", rpctypes.ErrUserNotFound, lkerrors.PermissionDenied},
		{"invalid token", rpctypes.ErrInvalidAuthToken, lkerrors.PermissionDenied},
		{"bare unauthenticated", status.Error(codes.Unauthenticated, "bad token"), lkerrors.PermissionDenied},
		{"empty key", rpctypes.ErrEmptyKey, lkerrors.InvalidArgument},
		{"ttl too large", rpctypes.ErrLeaseTTLTooLarge, lkerrors.InvalidArgument},
		{"too many ops", rpctypes.ErrTooManyOps, lkerrors.InvalidArgument},
		{"keepalive halted", clientv3.ErrKeepAliveHalted{Reason: rpctypes.ErrNoLeader}, lkerrors.Unavailable},
		{"keepalive halted by cancel", clientv3.ErrKeepAliveHalted{Reason: context.Canceled}, lkerrors.Canceled},
		{"keepalive halted without reason", clientv3.ErrKeepAliveHalted{}, lkerrors.Unknown},
		{"no endpoints", clientv3.ErrNoAvailableEndpoints, lkerrors.ClusterUnreachable},
		{"connection refused", &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}, lkerrors.ClusterUnreachable},
		{"errno reset", syscall.ECONNRESET, lkerrors.ClusterUnreachable},
		{"eof", io.EOF, lkerrors.ClusterUnreachable},
		{"plain error", stderrors.New("something odd"), lkerrors.Unknown},
		// What gRPC v1.85 and crypto/tls returned against an etcd that
		// requires client certificates (see the keeper's secure tests).
		{"server certificate untrusted", status.Error(codes.Unavailable, `connection error: desc = "transport: authentication handshake failed: tls: failed to verify certificate: x509: certificate signed by unknown authority"`), lkerrors.PermissionDenied},
		{"client certificate refused", status.Error(codes.Unavailable, `connection error: desc = "error reading server preface: remote error: tls: unknown certificate authority"`), lkerrors.PermissionDenied},
		{"refused while waiting for a connection", status.Error(codes.DeadlineExceeded, `latest balancer error: connection error: desc = "transport: authentication handshake failed: tls: failed to verify certificate: x509: certificate has expired or is not yet valid"`), lkerrors.PermissionDenied},
		{"typed unknown authority", x509.UnknownAuthorityError{}, lkerrors.PermissionDenied},
		{"typed hostname mismatch", x509.HostnameError{Host: "etcd-1"}, lkerrors.PermissionDenied},
		{"remote certificate alert", &net.OpError{Op: "remote error", Err: stderrors.New("tls: bad certificate")}, lkerrors.PermissionDenied},
		{"remote alert about something else", &net.OpError{Op: "remote error", Err: stderrors.New("tls: internal error")}, lkerrors.ClusterUnreachable},
		{"connection closed without a tls word", status.Error(codes.Unavailable, "write tcp 127.0.0.1:1->127.0.0.1:2: write: broken pipe"), lkerrors.ClusterUnreachable},
		{"tls words under another code", status.Error(codes.Internal, "x509: certificate signed by unknown authority"), lkerrors.Unknown},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for _, form := range []struct {
				name string
				err  error
			}{
				{"direct", tc.err},
				{"wrapped", fmt.Errorf("keeper attempt: %w", tc.err)},
				{"wrapped twice", fmt.Errorf("outer: %w", fmt.Errorf("inner: %w", tc.err))},
			} {
				got := lkerrors.Classify(form.err)
				var e *lkerrors.Error
				if !stderrors.As(got, &e) {
					t.Fatalf("%s: Classify(%v) = %T, want *Error", form.name, form.err, got)
				}
				if e.Kind != tc.want {
					t.Errorf("%s: Classify(%v).Kind = %v, want %v", form.name, form.err, e.Kind, tc.want)
				}
				if !stderrors.Is(got, tc.want.Sentinel()) || !stderrors.Is(got, tc.err) {
					t.Errorf("%s: errors.Is misses the kind or the cause of %v", form.name, got)
				}
				if e.Retryable() != tc.want.Retryable() {
					t.Errorf("%s: Retryable() = %v, want %v", form.name, e.Retryable(), tc.want.Retryable())
				}
			}
		})
	}
}

func TestClassifyNil(t *testing.T) {
	if got := lkerrors.Classify(nil); got != nil {
		t.Errorf("Classify(nil) = %v, want nil", got)
	}
	if got := lkerrors.ClassifyConn(nil, connectivity.Ready); got != nil {
		t.Errorf("ClassifyConn(nil) = %v, want nil", got)
	}
	if lkerrors.IsRetryable(nil) {
		t.Errorf("IsRetryable(nil) = true, want false")
	}
	if stderrors.Is(nil, lkerrors.ErrLeaseExpired) {
		t.Errorf("errors.Is(nil, ErrLeaseExpired) = true, want false")
	}
}

func TestClassifyIsIdempotent(t *testing.T) {
	once := lkerrors.Classify(rpctypes.ErrNoLeader)
	twice := lkerrors.ClassifyConn(fmt.Errorf("again: %w", once), connectivity.TransientFailure)
	if lkerrors.KindOf(twice) != lkerrors.Unavailable {
		t.Errorf("KindOf(reclassified) = %v, want %v", lkerrors.KindOf(twice), lkerrors.Unavailable)
	}
}

func TestClassifyConnDeadline(t *testing.T) {
	tests := []struct {
		name  string
		state connectivity.State
		err   error
		want  lkerrors.Kind
	}{
		{"ready context deadline", connectivity.Ready, context.DeadlineExceeded, lkerrors.Timeout},
		{"connecting context deadline", connectivity.Connecting, context.DeadlineExceeded, lkerrors.ClusterUnreachable},
		{"transient failure status deadline", connectivity.TransientFailure, status.Error(codes.DeadlineExceeded, "x"), lkerrors.ClusterUnreachable},
		{"idle context deadline", connectivity.Idle, context.DeadlineExceeded, lkerrors.ClusterUnreachable},
		{"not ready but server said no leader", connectivity.Connecting, rpctypes.ErrNoLeader, lkerrors.Unavailable},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := lkerrors.KindOf(lkerrors.ClassifyConn(tc.err, tc.state)); got != tc.want {
				t.Errorf("KindOf(ClassifyConn(%v, %v)) = %v, want %v", tc.err, tc.state, got, tc.want)
			}
		})
	}
}

// TestEveryGRPCCode walks every code gRPC defines, as an unmatched status.
func TestEveryGRPCCode(t *testing.T) {
	want := map[codes.Code]lkerrors.Kind{
		codes.OK:                 lkerrors.Unknown,
		codes.Canceled:           lkerrors.Canceled,
		codes.Unknown:            lkerrors.Unknown,
		codes.InvalidArgument:    lkerrors.InvalidArgument,
		codes.DeadlineExceeded:   lkerrors.Timeout,
		codes.NotFound:           lkerrors.Unknown,
		codes.AlreadyExists:      lkerrors.InvalidArgument,
		codes.PermissionDenied:   lkerrors.PermissionDenied,
		codes.ResourceExhausted:  lkerrors.RateLimited,
		codes.FailedPrecondition: lkerrors.Unknown,
		codes.Aborted:            lkerrors.Unavailable,
		codes.OutOfRange:         lkerrors.InvalidArgument,
		codes.Unimplemented:      lkerrors.InvalidArgument,
		codes.Internal:           lkerrors.Unknown,
		codes.Unavailable:        lkerrors.ClusterUnreachable,
		codes.DataLoss:           lkerrors.Unavailable,
		codes.Unauthenticated:    lkerrors.PermissionDenied,
	}
	for c := codes.OK; c <= codes.Unauthenticated; c++ {
		t.Run(c.String(), func(t *testing.T) {
			w, ok := want[c]
			if !ok {
				t.Fatalf("code %v has no expectation", c)
			}
			// status.Error returns nil for OK; build the error by hand.
			err := status.New(c, "unmatched text").Err()
			if c == codes.OK {
				err = okStatusError{}
			}
			if got := lkerrors.KindOf(lkerrors.Classify(err)); got != w {
				t.Errorf("KindOf(Classify(status %v)) = %v, want %v", c, got, w)
			}
		})
	}
}

type okStatusError struct{}

func (okStatusError) Error() string              { return "ok?" }
func (okStatusError) GRPCStatus() *status.Status { return status.New(codes.OK, "ok?") }

func TestKindString(t *testing.T) {
	seen := map[string]lkerrors.Kind{}
	for _, k := range lkerrors.Kinds() {
		s := k.String()
		if prev, dup := seen[s]; dup || s == "" {
			t.Errorf("Kind(%d).String() = %q, also used by %d", k, s, prev)
		}
		seen[s] = k
		if lkerrors.KindOf(k.Sentinel()) != k {
			t.Errorf("KindOf(%v.Sentinel()) = %v, want %v", k, lkerrors.KindOf(k.Sentinel()), k)
		}
	}
	if got := lkerrors.Kind(200).String(); got != "kind(200)" {
		t.Errorf("Kind(200).String() = %q, want %q", got, "kind(200)")
	}
	if lkerrors.Kind(200).Retryable() {
		t.Errorf("Kind(200).Retryable() = true, want false")
	}
}

func TestSentinelsAreDistinct(t *testing.T) {
	for _, a := range lkerrors.Kinds() {
		for _, b := range lkerrors.Kinds() {
			if got := stderrors.Is(a.Sentinel(), b.Sentinel()); got != (a == b) {
				t.Errorf("errors.Is(%v, %v) = %v, want %v", a, b, got, a == b)
			}
		}
	}
}

func FuzzClassify(f *testing.F) {
	f.Add(uint32(codes.NotFound), "etcdserver: requested lease not found", true)
	f.Add(uint32(codes.Unavailable), "etcdserver: no leader", false)
	f.Add(uint32(codes.Unknown), "not a primary lessor", true)
	f.Add(uint32(99), "", false)
	f.Fuzz(func(t *testing.T, code uint32, msg string, wrapped bool) {
		err := status.New(codes.Code(code), msg).Err()
		if err == nil {
			err = stderrors.New(msg)
		}
		if wrapped {
			err = fmt.Errorf("w: %w", clientv3.ErrKeepAliveHalted{Reason: rpctypes.Error(err)})
		}
		got := lkerrors.Classify(err)
		if got == nil {
			t.Fatalf("Classify(%v) = nil", err)
		}
		k := lkerrors.KindOf(got)
		if k.String() == "" || !stderrors.Is(got, k.Sentinel()) {
			t.Fatalf("Classify(%v) = %v: kind %v not matched by its sentinel", err, got, k)
		}
		for _, st := range []connectivity.State{connectivity.Ready, connectivity.TransientFailure} {
			if lkerrors.ClassifyConn(err, st) == nil {
				t.Fatalf("ClassifyConn(%v, %v) = nil", err, st)
			}
		}
	})
}

// declaresInvalid is an error type of another package that declares its kind
// through an Is method, as the keeper's usage errors do.
type declaresInvalid struct{}

func (declaresInvalid) Error() string        { return "caller mistake" }
func (declaresInvalid) Is(target error) bool { return target == lkerrors.ErrInvalidArgument }

func TestDeclaredKind(t *testing.T) {
	err := fmt.Errorf("wrapped: %w", declaresInvalid{})
	if got := lkerrors.KindOf(err); got != lkerrors.InvalidArgument {
		t.Errorf("KindOf(declaresInvalid) = %v, want %v", got, lkerrors.InvalidArgument)
	}
	c := lkerrors.Classify(err)
	var e *lkerrors.Error
	if !stderrors.As(c, &e) || e.Kind != lkerrors.InvalidArgument || !stderrors.Is(c, declaresInvalid{}) {
		t.Errorf("Classify(declaresInvalid) = %#v, want InvalidArgument wrapping the cause", c)
	}
}

func BenchmarkClassify(b *testing.B) {
	errs := []error{
		rpctypes.ErrLeaseNotFound,
		fmt.Errorf("wrapped: %w", rpctypes.ErrGRPCNoLeader),
		context.DeadlineExceeded,
		status.Error(codes.Unavailable, "connection refused"),
	}
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		_ = lkerrors.Classify(errs[i%len(errs)])
	}
}
