package sidecar

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	lkerrors "github.com/leasekeeper/leasekeeper/errors"
	"github.com/leasekeeper/leasekeeper/statemachine"
)

type fakeStatus struct {
	state    statemachine.State
	id       clientv3.LeaseID
	deadline time.Time
	err      error
}

func (f fakeStatus) State() statemachine.State { return f.state }
func (f fakeStatus) LeaseID() clientv3.LeaseID { return f.id }
func (f fakeStatus) Deadline() time.Time       { return f.deadline }
func (f fakeStatus) Err() error                { return f.err }

func TestHandler(t *testing.T) {
	tests := []struct {
		name      string
		status    fakeStatus
		path      string
		wantCode  int
		wantState string
		wantKind  string
	}{
		{"ready when healthy", fakeStatus{state: statemachine.Healthy, id: 0x2a, deadline: time.Now().Add(5 * time.Second)}, "/readyz", 200, "healthy", ""},
		{"not ready when degraded", fakeStatus{state: statemachine.Degraded, id: 0x2a, err: lkerrors.Classify(rpctypes.ErrNoLeader)}, "/readyz", 503, "degraded", "unavailable"},
		{"not ready when failed", fakeStatus{state: statemachine.Failed}, "/readyz", 503, "failed", ""},
		{"not ready when idle", fakeStatus{}, "/readyz", 503, "idle", ""},
		{"alive when failed", fakeStatus{state: statemachine.Failed}, "/healthz", 200, "failed", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rr := httptest.NewRecorder()
			Handler(tc.status, nil).ServeHTTP(rr, httptest.NewRequest(http.MethodGet, tc.path, nil))
			if rr.Code != tc.wantCode {
				t.Errorf("GET %s = %d, want %d", tc.path, rr.Code, tc.wantCode)
			}
			var h Health
			if err := json.Unmarshal(rr.Body.Bytes(), &h); err != nil {
				t.Fatalf("body %q: %v", rr.Body.String(), err)
			}
			if h.State != tc.wantState || h.LastErrorKind != tc.wantKind {
				t.Errorf("body = %+v, want state %q, kind %q", h, tc.wantState, tc.wantKind)
			}
			if tc.status.id != 0 && h.LeaseID != "2a" {
				t.Errorf("lease_id = %q, want 2a", h.LeaseID)
			}
			if !tc.status.deadline.IsZero() && (h.TimeLeftSeconds <= 4 || h.TimeLeftSeconds > 5) {
				t.Errorf("time_left_seconds = %v, want about 5", h.TimeLeftSeconds)
			}
		})
	}
	rr := httptest.NewRecorder()
	Handler(fakeStatus{}, nil).ServeHTTP(rr, httptest.NewRequest(http.MethodPost, "/readyz", nil))
	if rr.Code != http.StatusMethodNotAllowed {
		t.Errorf("POST /readyz = %d, want 405", rr.Code)
	}
}

func TestPrinter(t *testing.T) {
	var b bytes.Buffer
	p := NewPrinter(&b)
	p.Transition(statemachine.Transition{From: statemachine.Healthy, To: statemachine.Degraded,
		Cause: lkerrors.Classify(context.DeadlineExceeded), At: p.start.Add(1500 * time.Millisecond)})
	p.Transition(statemachine.Transition{From: statemachine.Idle, To: statemachine.Healthy, At: p.start})
	want := "  +1.500s  healthy -> degraded  (timeout: context deadline exceeded)\n  +0.000s  idle -> healthy\n"
	if b.String() != want {
		t.Errorf("printed %q, want %q", b.String(), want)
	}
}

func TestOutputFormats(t *testing.T) {
	if _, err := NewOutput("xml", nil, nil); err == nil {
		t.Errorf("NewOutput(xml) error = nil, want error")
	}
	var w bytes.Buffer
	o, err := NewOutput("json", &w, nil)
	if err != nil {
		t.Fatal(err)
	}
	if o.OnTransition() != nil {
		t.Errorf("json OnTransition() != nil: transitions would be reported twice")
	}
	o.Event("registered", "key", "k")
	var m map[string]any
	if err := json.Unmarshal(w.Bytes(), &m); err != nil || m["msg"] != "registered" || m["key"] != "k" {
		t.Errorf("json event = %q (%v), want msg registered, key k", w.String(), err)
	}
	w.Reset()
	o, _ = NewOutput("human", &w, &w)
	o.Event("registered", "key", "k")
	if !strings.HasSuffix(w.String(), "registered  key=k\n") {
		t.Errorf("human event = %q", w.String())
	}
}

func TestExitCode(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want int
	}{
		{"success", []string{"-c", "exit 0"}, 0},
		{"code", []string{"-c", "exit 42"}, 42},
		{"signal", []string{"-c", "kill -TERM $$"}, 128 + 15},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := exitCode(exec.Command("sh", tc.args...).Run()); got != tc.want {
				t.Errorf("exitCode = %d, want %d", got, tc.want)
			}
		})
	}
}
