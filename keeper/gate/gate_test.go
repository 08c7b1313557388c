package gate_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/leasekeeper/leasekeeper/keeper/gate"
)

func TestInterceptors(t *testing.T) {
	isWrite := gate.Methods("/s.S/Put")
	tests := []struct {
		name     string
		writable bool
		method   string
		wantCode codes.Code
	}{
		{"write while writable", true, "/s.S/Put", codes.OK},
		{"write while not writable", false, "/s.S/Put", codes.Unavailable},
		{"read while not writable", false, "/s.S/Get", codes.OK},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			w := flag(tc.writable)
			called := false
			_, err := gate.UnaryServerInterceptor(&w, isWrite)(context.Background(), nil,
				&grpc.UnaryServerInfo{FullMethod: tc.method}, func(context.Context, any) (any, error) {
					called = true
					return nil, nil
				})
			if status.Code(err) != tc.wantCode || called != (tc.wantCode == codes.OK) {
				t.Errorf("unary: code %v, handler called %v; want %v", status.Code(err), called, tc.wantCode)
			}
			called = false
			err = gate.StreamServerInterceptor(&w, isWrite)(nil, nil, &grpc.StreamServerInfo{FullMethod: tc.method},
				func(any, grpc.ServerStream) error {
					called = true
					return nil
				})
			if status.Code(err) != tc.wantCode || called != (tc.wantCode == codes.OK) {
				t.Errorf("stream: code %v, handler called %v; want %v", status.Code(err), called, tc.wantCode)
			}
		})
	}
}

func TestMiddlewareMethods(t *testing.T) {
	w := flag(false)
	h := gate.Middleware(&w, http.HandlerFunc(func(rw http.ResponseWriter, _ *http.Request) { rw.WriteHeader(http.StatusOK) }))
	for method, want := range map[string]int{
		http.MethodGet: 200, http.MethodHead: 200, http.MethodOptions: 200,
		http.MethodPost: 503, http.MethodPut: 503, http.MethodPatch: 503, http.MethodDelete: 503,
	} {
		rr := httptest.NewRecorder()
		h.ServeHTTP(rr, httptest.NewRequest(method, "/", nil))
		if rr.Code != want {
			t.Errorf("%s while not writable = %d, want %d", method, rr.Code, want)
		}
		if want == 503 && rr.Header().Get("Retry-After") == "" {
			t.Errorf("%s: no Retry-After on a refused write", method)
		}
	}
}
