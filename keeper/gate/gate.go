// Package gate turns a keeper's state into a read-only fallback for the
// service that embeds it: gRPC interceptors and an HTTP middleware that
// reject writes while the keeper is not Healthy, and let reads through.
//
// A write rejected here answers codes.Unavailable (gRPC) or 503 with a
// Retry-After (HTTP), so clients retry elsewhere or later. The gate reads
// the keeper's state at each call; it holds no state of its own.
package gate

import (
	"context"
	"net/http"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Writable is what the gate asks; *keeper.Keeper implements it.
type Writable interface {
	Writable() bool
}

// IsWrite says whether a gRPC method (its full name, such as
// "/pkg.Service/Put") writes.
type IsWrite func(fullMethod string) bool

// Methods returns an IsWrite true for exactly the given full method names.
func Methods(names ...string) IsWrite {
	set := make(map[string]bool, len(names))
	for _, n := range names {
		set[n] = true
	}
	return func(m string) bool { return set[m] }
}

// errNotWritable is what a rejected write gets.
var errNotWritable = status.Error(codes.Unavailable, "gate: registration at risk: writes are refused until it is healthy again")

// UnaryServerInterceptor rejects unary write methods while w is not
// writable.
func UnaryServerInterceptor(w Writable, isWrite IsWrite) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if isWrite(info.FullMethod) && !w.Writable() {
			return nil, errNotWritable
		}
		return handler(ctx, req)
	}
}

// StreamServerInterceptor rejects streaming write methods while w is not
// writable, when the stream opens.
func StreamServerInterceptor(w Writable, isWrite IsWrite) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		if isWrite(info.FullMethod) && !w.Writable() {
			return errNotWritable
		}
		return handler(srv, ss)
	}
}

// Middleware rejects every request but GET, HEAD and OPTIONS with 503 while
// w is not writable.
func Middleware(w Writable, next http.Handler) http.Handler {
	return http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		switch r.Method {
		case http.MethodGet, http.MethodHead, http.MethodOptions:
		default:
			if !w.Writable() {
				rw.Header().Set("Retry-After", "1")
				http.Error(rw, "registration at risk: writes are refused until it is healthy again", http.StatusServiceUnavailable)
				return
			}
		}
		next.ServeHTTP(rw, r)
	})
}
