package grpchealth_test

import (
	"context"
	"fmt"

	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/leasekeeper/leasekeeper/keeper/grpchealth"
	"github.com/leasekeeper/leasekeeper/statemachine"
)

// Keep the health status of "api" in step with the keeper: add the tracker
// to keeper.Config.Observers. Here transitions are fed by hand. By default
// an etcd outage (failed) leaves the instance serving; a drain does not.
func Example() {
	hs := health.NewServer()
	tr := grpchealth.New(hs, "api")
	show := func() {
		resp, _ := hs.Check(context.Background(), &healthpb.HealthCheckRequest{Service: "api"})
		fmt.Println(resp.Status)
	}
	show()
	for _, to := range []statemachine.State{statemachine.Healthy, statemachine.Degraded, statemachine.Failed, statemachine.Draining} {
		tr.ObserveTransition(statemachine.Transition{To: to})
		show()
	}
	// Output:
	// SERVING
	// SERVING
	// SERVING
	// SERVING
	// NOT_SERVING
}

// Take an instance out of rotation whenever its registration is at risk,
// where a call to an instance that may have lost it is worse than no call:
// Strict says SERVING only while healthy; WithStatus changes one state.
func ExampleStrict() {
	strict := grpchealth.New(health.NewServer(), "", grpchealth.Strict(healthpb.HealthCheckResponse_NOT_SERVING))
	failedOnly := grpchealth.New(health.NewServer(), "", grpchealth.WithStatus(statemachine.Failed, healthpb.HealthCheckResponse_NOT_SERVING))
	for _, s := range []statemachine.State{statemachine.Healthy, statemachine.Degraded, statemachine.Failed} {
		fmt.Println(s, strict.Status(s), failedOnly.Status(s))
	}
	// Output:
	// healthy SERVING SERVING
	// degraded NOT_SERVING SERVING
	// failed NOT_SERVING NOT_SERVING
}
