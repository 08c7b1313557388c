package gate_test

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/leasekeeper/leasekeeper/internal/embedetcd"
	"github.com/leasekeeper/leasekeeper/keeper"
	"github.com/leasekeeper/leasekeeper/keeper/gate"
	"github.com/leasekeeper/leasekeeper/keeper/grpchealth"
	"github.com/leasekeeper/leasekeeper/keeper/metrics"
	"github.com/leasekeeper/leasekeeper/statemachine"
)

// TestServiceIntegration runs a keeper on a real etcd with every adapter: a
// gRPC server on loopback behind the gate's interceptors, an HTTP server
// behind its middleware, a gRPC health server kept in step, and Prometheus
// metrics. It stops etcd until the keeper fails and starts it again.
func TestServiceIntegration(t *testing.T) {
	srv, err := embedetcd.Start(t.TempDir(), 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Stop()
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{srv.Endpoint}, DialTimeout: 5 * time.Second,
		Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cli.Close() }()

	reg := prometheus.NewPedanticRegistry()
	m := metrics.New(reg)
	hs := health.NewServer()
	tracker := grpchealth.New(hs, "svc")
	cfg := keeper.DefaultConfig()
	cfg.TTL = 3 * time.Second
	cfg.Observers = []keeper.Observer{m, tracker}
	k, err := keeper.New(cli, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		// Bounded: etcd may be down when a check fails, and Close honours
		// its context while it revokes.
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = k.Close(ctx)
	}()
	m.Track(k)

	// A gRPC server where Health/Check stands for a write and Health/List
	// for a read.
	const write, read = "/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/List"
	gs := grpc.NewServer(
		grpc.UnaryInterceptor(gate.UnaryServerInterceptor(k, gate.Methods(write))),
		grpc.StreamInterceptor(gate.StreamServerInterceptor(k, gate.Methods("/grpc.health.v1.Health/Watch"))),
	)
	healthpb.RegisterHealthServer(gs, hs)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = gs.Serve(ln) }()
	defer gs.Stop()
	conn, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = conn.Close() }()
	hc := healthpb.NewHealthClient(conn)
	web := httptest.NewServer(gate.Middleware(k, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusNoContent)
	})))
	defer web.Close()

	check := func(want statemachine.State, writesOK bool, servingStatus healthpb.HealthCheckResponse_ServingStatus) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: "svc"})
		if writesOK != (err == nil) || (!writesOK && status.Code(err) != codes.Unavailable) {
			t.Errorf("%v: write RPC error = %v, want allowed %v (else Unavailable)", want, err, writesOK)
		}
		if _, err := hc.List(ctx, &healthpb.HealthListRequest{}); err != nil {
			t.Errorf("%v: read RPC error = %v, want nil", want, err)
		}
		wantCode := http.StatusNoContent
		if !writesOK {
			wantCode = http.StatusServiceUnavailable
		}
		if code := httpDo(t, http.MethodPost, web.URL); code != wantCode {
			t.Errorf("%v: POST = %d, want %d", want, code, wantCode)
		}
		if code := httpDo(t, http.MethodGet, web.URL); code != http.StatusNoContent {
			t.Errorf("%v: GET = %d, want 204", want, code)
		}
		resp, err := hs.Check(ctx, &healthpb.HealthCheckRequest{Service: "svc"})
		if err != nil || resp.Status != servingStatus {
			t.Errorf("%v: health status = %v (%v), want %v", want, resp.GetStatus(), err, servingStatus)
		}
	}

	if err := k.Register(context.Background(), "svc/a", "v"); err != nil {
		t.Fatal(err)
	}
	if err := k.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	waitState(t, k, statemachine.Healthy)
	check(statemachine.Healthy, true, healthpb.HealthCheckResponse_SERVING)

	// Stopping etcd waits a while for open streams (the keeper's watch) to
	// end; the keeper goes on meanwhile.
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		srv.Stop()
	}()
	waitState(t, k, statemachine.Degraded)
	// Static stability: the instance still serves reads and says so.
	check(statemachine.Degraded, false, healthpb.HealthCheckResponse_SERVING)
	waitState(t, k, statemachine.Failed)
	<-stopped
	if err := srv.Restart(30 * time.Second); err != nil {
		t.Fatal(err)
	}
	waitState(t, k, statemachine.Healthy)
	check(statemachine.Healthy, true, healthpb.HealthCheckResponse_SERVING)

	if got := testutil.ToFloat64(counter(t, reg, "leasekeeper_recoveries_total")); got != 1 {
		t.Errorf("recoveries = %v, want 1", got)
	}
	out, err := testutil.GatherAndLint(reg)
	if err != nil || len(out) > 0 {
		t.Errorf("metrics lint: %v %v", err, out)
	}
	for _, want := range []string{
		`leasekeeper_transitions_total{from="degraded",to="failed"} 1`,
		`leasekeeper_state{state="healthy"} 1`,
		`leasekeeper_keys 1`,
		`leasekeeper_attempts_total{op="grant",result="ok"}`,
	} {
		if !strings.Contains(gatherText(t, reg), want) {
			t.Errorf("metrics lack %q:\n%s", want, gatherText(t, reg))
		}
	}
	// A planned drain: the key goes at once, health says NOT_SERVING to
	// new clients, and writes stay open until the service stops. Ending
	// the drain's context skips the rest of the delay.
	dctx, skip := context.WithCancel(context.Background())
	defer skip()
	stopCalled := make(chan struct{})
	drained := make(chan error, 1)
	go func() {
		drained <- k.Drain(dctx, time.Hour, func() { close(stopCalled) })
	}()
	waitState(t, k, statemachine.Draining)
	check(statemachine.Draining, true, healthpb.HealthCheckResponse_NOT_SERVING)
	resp, err := cli.Get(context.Background(), "svc/a")
	require.NoError(t, err)
	assert.Empty(t, resp.Kvs, "the key is deleted as the drain begins")
	select {
	case <-stopCalled:
		t.Error("stop was called before the drain delay ended")
	default:
	}
	id := k.LeaseID()
	skip()
	require.NoError(t, <-drained)
	<-stopCalled
	assert.Equal(t, statemachine.Closed, k.State())
	ttl, err := cli.TimeToLive(context.Background(), id)
	require.NoError(t, err)
	assert.Equal(t, int64(-1), ttl.TTL, "the lease is revoked at the end of the drain")
}

func waitState(t *testing.T, k *keeper.Keeper, want statemachine.State) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for k.State() != want {
		if time.Now().After(deadline) {
			t.Fatalf("state %v after 30s, want %v", k.State(), want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func httpDo(t *testing.T, method, url string) int {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	return resp.StatusCode
}
