// Package grpchealth keeps a gRPC health server's status for one service
// in step with a keeper.
//
// By default it follows the service, not etcd: the status is SERVING in
// every state of the keeper but Draining and Closed, so an etcd outage
// never turns a serving instance NOT_SERVING. That is static stability: a
// registry that is away must not take the data plane down with it. Clients
// that check health stop sending to an instance as soon as it drains. The
// read-only fallback for the registration at risk is the write gate's job
// (package gate), which refuses writes and lets reads through.
//
// A caller who wants the opposite trade, say an instance that must not be
// called while it may have lost a role it holds through its lease, chooses
// the status of each state with WithStatus, or Strict for all of them.
package grpchealth

import (
	"time"

	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/leasekeeper/leasekeeper/statemachine"
)

// Tracker is a keeper.Observer that sets the status of one service on a
// health server at each transition.
type Tracker struct {
	srv     *health.Server
	service string
	status  map[statemachine.State]healthpb.HealthCheckResponse_ServingStatus
}

// Option changes the status a Tracker reports for some states.
type Option func(map[statemachine.State]healthpb.HealthCheckResponse_ServingStatus)

// WithStatus reports st while the keeper is in state s.
func WithStatus(s statemachine.State, st healthpb.HealthCheckResponse_ServingStatus) Option {
	return func(m map[statemachine.State]healthpb.HealthCheckResponse_ServingStatus) { m[s] = st }
}

// Strict reports SERVING only while the keeper is Healthy, and while it is
// Degraded if degraded is SERVING: an etcd outage then takes the instance
// out of rotation for clients that check health.
func Strict(degraded healthpb.HealthCheckResponse_ServingStatus) Option {
	return func(m map[statemachine.State]healthpb.HealthCheckResponse_ServingStatus) {
		for _, s := range statemachine.States() {
			m[s] = healthpb.HealthCheckResponse_NOT_SERVING
		}
		m[statemachine.Healthy] = healthpb.HealthCheckResponse_SERVING
		m[statemachine.Degraded] = degraded
	}
}

// New returns a Tracker for service on srv and sets the status for a
// keeper that has not started (SERVING by default). Options apply in
// order, so WithStatus after Strict overrides it for one state.
func New(srv *health.Server, service string, opts ...Option) *Tracker {
	m := make(map[statemachine.State]healthpb.HealthCheckResponse_ServingStatus, len(statemachine.States()))
	for _, s := range statemachine.States() {
		m[s] = healthpb.HealthCheckResponse_SERVING
	}
	m[statemachine.Draining] = healthpb.HealthCheckResponse_NOT_SERVING
	m[statemachine.Closed] = healthpb.HealthCheckResponse_NOT_SERVING
	for _, opt := range opts {
		opt(m)
	}
	tr := &Tracker{srv: srv, service: service, status: m}
	srv.SetServingStatus(service, tr.Status(statemachine.Idle))
	return tr
}

// ObserveAttempt does nothing: only transitions change the status.
func (*Tracker) ObserveAttempt(string, time.Duration, error) {}

// ObserveTransition sets the status for t.To.
func (tr *Tracker) ObserveTransition(t statemachine.Transition) {
	tr.srv.SetServingStatus(tr.service, tr.Status(t.To))
}

// Status is the serving status for state s.
func (tr *Tracker) Status(s statemachine.State) healthpb.HealthCheckResponse_ServingStatus {
	if st, ok := tr.status[s]; ok {
		return st
	}
	return healthpb.HealthCheckResponse_NOT_SERVING
}
