package grpchealth_test

import (
	"context"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/leasekeeper/leasekeeper/keeper/grpchealth"
	"github.com/leasekeeper/leasekeeper/statemachine"
)

const (
	serving    = healthpb.HealthCheckResponse_SERVING
	notServing = healthpb.HealthCheckResponse_NOT_SERVING
)

func TestStatus(t *testing.T) {
	tests := []struct {
		name string
		opts []grpchealth.Option
		want map[statemachine.State]healthpb.HealthCheckResponse_ServingStatus
	}{
		{"default: static stability", nil, map[statemachine.State]healthpb.HealthCheckResponse_ServingStatus{
			statemachine.Idle: serving, statemachine.Healthy: serving, statemachine.Degraded: serving,
			statemachine.Failed: serving, statemachine.Draining: notServing, statemachine.Closed: notServing,
		}},
		{"strict", []grpchealth.Option{grpchealth.Strict(notServing)}, map[statemachine.State]healthpb.HealthCheckResponse_ServingStatus{
			statemachine.Idle: notServing, statemachine.Healthy: serving, statemachine.Degraded: notServing,
			statemachine.Failed: notServing, statemachine.Draining: notServing, statemachine.Closed: notServing,
		}},
		{"strict, serving while degraded", []grpchealth.Option{grpchealth.Strict(serving)}, map[statemachine.State]healthpb.HealthCheckResponse_ServingStatus{
			statemachine.Idle: notServing, statemachine.Healthy: serving, statemachine.Degraded: serving,
			statemachine.Failed: notServing, statemachine.Draining: notServing, statemachine.Closed: notServing,
		}},
		{"one state chosen", []grpchealth.Option{grpchealth.WithStatus(statemachine.Failed, notServing)}, map[statemachine.State]healthpb.HealthCheckResponse_ServingStatus{
			statemachine.Idle: serving, statemachine.Healthy: serving, statemachine.Degraded: serving,
			statemachine.Failed: notServing, statemachine.Draining: notServing, statemachine.Closed: notServing,
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tr := grpchealth.New(health.NewServer(), "api", tc.opts...)
			require.Len(t, tc.want, len(statemachine.States()), "the table must name every state")
			for _, s := range statemachine.States() {
				assert.Equal(t, tc.want[s], tr.Status(s), "state %v", s)
			}
		})
	}
}

// TestObserveTransition: the health server answers what the last
// transition says, starting from the status for a keeper not started.
func TestObserveTransition(t *testing.T) {
	hs := health.NewServer()
	tr := grpchealth.New(hs, "api", grpchealth.Strict(notServing))
	check := func(want healthpb.HealthCheckResponse_ServingStatus) {
		t.Helper()
		resp, err := hs.Check(context.Background(), &healthpb.HealthCheckRequest{Service: "api"})
		require.NoError(t, err)
		assert.Equal(t, want, resp.Status)
	}
	check(notServing)
	tr.ObserveTransition(statemachine.Transition{From: statemachine.Idle, To: statemachine.Healthy})
	check(serving)
	tr.ObserveTransition(statemachine.Transition{From: statemachine.Healthy, To: statemachine.Failed})
	check(notServing)
}
