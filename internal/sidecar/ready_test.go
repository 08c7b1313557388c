package sidecar

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/leasekeeper/leasekeeper/statemachine"
)

func TestTCPReady(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	check := TCPReady(ln.Addr().String())
	assert.NoError(t, check(context.Background()), "a port that accepts")
	require.NoError(t, ln.Close())
	assert.Error(t, check(context.Background()), "a closed port")
}

func TestHTTPReady(t *testing.T) {
	var code atomic.Int32
	code.Store(http.StatusServiceUnavailable)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(int(code.Load()))
	}))
	defer srv.Close()
	check := HTTPReady(srv.URL + "/ready")
	assert.ErrorContains(t, check(context.Background()), "503")
	code.Store(http.StatusNoContent)
	assert.NoError(t, check(context.Background()))
	assert.Error(t, HTTPReady("http://127.0.0.1:1/")(context.Background()), "nothing listens")
	assert.Error(t, HTTPReady("::bad")(context.Background()), "a URL that does not parse")
}

// TestReadyzNeedsTheKey: /readyz is 503 while the key is not registered,
// even with the keeper healthy.
func TestReadyzNeedsTheKey(t *testing.T) {
	for _, tc := range []struct {
		registered bool
		want       int
	}{{false, http.StatusServiceUnavailable}, {true, http.StatusOK}} {
		s := registrarStatus{fakeStatus{state: statemachine.Healthy}, tc.registered}
		rr := httptest.NewRecorder()
		Handler(s, nil).ServeHTTP(rr, httptest.NewRequest(http.MethodGet, "/readyz", nil))
		assert.Equal(t, tc.want, rr.Code, "registered %v", tc.registered)
		assert.Contains(t, rr.Body.String(), `"registered":`+map[bool]string{true: "true", false: "false"}[tc.registered])
	}
}

type registrarStatus struct {
	fakeStatus
	registered bool
}

func (r registrarStatus) Registered() bool { return r.registered }
