package sidecar

import (
	"encoding/json"
	"net/http"
	"strconv"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	lkerrors "github.com/leasekeeper/leasekeeper/errors"
	"github.com/leasekeeper/leasekeeper/statemachine"
)

// Status is what the health endpoints report; *keeper.Keeper implements it.
type Status interface {
	State() statemachine.State
	LeaseID() clientv3.LeaseID
	Deadline() time.Time
	Err() error
}

// Health is the JSON body of /healthz and /readyz.
type Health struct {
	// State is the keeper's state, for example "healthy".
	State string `json:"state"`
	// LeaseID is the lease held, in hexadecimal as etcdctl prints it; empty
	// when none is held.
	LeaseID string `json:"lease_id,omitempty"`
	// TimeLeftSeconds is the time left before the local deadline; zero when
	// no lease is held or the deadline passed.
	TimeLeftSeconds float64 `json:"time_left_seconds"`
	// LastErrorKind is the kind of the last failed attempt since the last
	// success, for example "cluster unreachable"; empty when none failed.
	LastErrorKind string `json:"last_error_kind,omitempty"`
	// Registered says whether the key is registered: false while the
	// child is not ready yet, or no longer.
	Registered bool `json:"registered"`
}

// Registrar is a Status that also says whether its key is registered; a
// Status that is not one counts as registered.
type Registrar interface {
	Registered() bool
}

// Snapshot returns s's health now.
func Snapshot(s Status) Health {
	h := Health{State: s.State().String()}
	if id := s.LeaseID(); id != 0 {
		h.LeaseID = strconv.FormatInt(int64(id), 16)
	}
	if d := s.Deadline(); !d.IsZero() {
		h.TimeLeftSeconds = max(time.Until(d), 0).Seconds()
	}
	if err := s.Err(); err != nil {
		h.LastErrorKind = lkerrors.KindOf(err).String()
	}
	h.Registered = true
	if r, ok := s.(Registrar); ok {
		h.Registered = r.Registered()
	}
	return h
}

// Handler serves /healthz (200 while the process lives) and /readyz (200
// only while Healthy with the key registered, 503 otherwise: draining
// included), both with a Health body, and
// /metrics from metrics when it is not nil.
func Handler(s Status, metrics http.Handler) http.Handler {
	mux := http.NewServeMux()
	if metrics != nil {
		mux.Handle("GET /metrics", metrics)
	}
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		writeHealth(w, http.StatusOK, Snapshot(s))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		h := Snapshot(s)
		code := http.StatusServiceUnavailable
		if h.State == statemachine.Healthy.String() && h.Registered {
			code = http.StatusOK
		}
		writeHealth(w, code, h)
	})
	return mux
}

func writeHealth(w http.ResponseWriter, code int, h Health) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(h)
}
