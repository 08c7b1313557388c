package grpchealth_test

import (
	"testing"

	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/leasekeeper/leasekeeper/keeper/grpchealth"
	"github.com/leasekeeper/leasekeeper/statemachine"
)

func TestStatus(t *testing.T) {
	tr := grpchealth.New(health.NewServer(), "api", healthpb.HealthCheckResponse_NOT_SERVING)
	want := map[statemachine.State]healthpb.HealthCheckResponse_ServingStatus{
		statemachine.Idle:     healthpb.HealthCheckResponse_NOT_SERVING,
		statemachine.Healthy:  healthpb.HealthCheckResponse_SERVING,
		statemachine.Degraded: healthpb.HealthCheckResponse_NOT_SERVING,
		statemachine.Failed:   healthpb.HealthCheckResponse_NOT_SERVING,
		statemachine.Closed:   healthpb.HealthCheckResponse_NOT_SERVING,
	}
	for _, s := range statemachine.States() {
		if got := tr.Status(s); got != want[s] {
			t.Errorf("Status(%v) = %v, want %v", s, got, want[s])
		}
	}
}
