// Package grpchealth keeps a gRPC health server's status for one service
// in step with a keeper: SERVING while Healthy, NOT_SERVING while Failed,
// idle or closed, and a status of the caller's choice while Degraded.
package grpchealth

import (
	"time"

	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/leasekeeper/leasekeeper/statemachine"
)

// Tracker is a keeper.Observer that sets the status of Service on a
// health server at each transition.
type Tracker struct {
	srv      *health.Server
	service  string
	degraded healthpb.HealthCheckResponse_ServingStatus
}

// New returns a Tracker for service on srv, which it sets NOT_SERVING until
// the keeper is Healthy. degraded is the status while Degraded: SERVING
// keeps read traffic coming, NOT_SERVING sends it elsewhere.
func New(srv *health.Server, service string, degraded healthpb.HealthCheckResponse_ServingStatus) *Tracker {
	srv.SetServingStatus(service, healthpb.HealthCheckResponse_NOT_SERVING)
	return &Tracker{srv: srv, service: service, degraded: degraded}
}

// ObserveAttempt does nothing: only transitions change the status.
func (*Tracker) ObserveAttempt(string, time.Duration, error) {}

// ObserveTransition sets the status for t.To.
func (tr *Tracker) ObserveTransition(t statemachine.Transition) {
	tr.srv.SetServingStatus(tr.service, tr.Status(t.To))
}

// Status is the serving status for state s.
func (tr *Tracker) Status(s statemachine.State) healthpb.HealthCheckResponse_ServingStatus {
	switch s {
	case statemachine.Healthy:
		return healthpb.HealthCheckResponse_SERVING
	case statemachine.Degraded:
		return tr.degraded
	}
	return healthpb.HealthCheckResponse_NOT_SERVING
}
