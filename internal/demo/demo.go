// Package demo runs the leasekeeper demo: a keeper on an embedded etcd
// through a real outage longer than its TTL, and back.
package demo

import (
	"context"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/leasekeeper/leasekeeper/internal/embedetcd"
	"github.com/leasekeeper/leasekeeper/internal/sidecar"
	"github.com/leasekeeper/leasekeeper/keeper"
	"github.com/leasekeeper/leasekeeper/statemachine"
)

// Key is the key the demo registers.
const Key = "leasekeeper/demo"

// Options configures the demo.
type Options struct {
	// TTL is the keeper's lease TTL.
	TTL time.Duration
	// Outage is how long etcd stays down; it must exceed TTL.
	Outage time.Duration
	// Logger receives the keeper's log; nil means none.
	Logger *zap.Logger
}

// Run runs the demo, printing to w, and reports whether the keeper went
// healthy -> degraded -> failed -> healthy and the key came back.
func Run(ctx context.Context, w io.Writer, opts Options) (bool, error) {
	if opts.Outage <= opts.TTL {
		return false, fmt.Errorf("demo: outage (%s) must be longer than the ttl (%s)", opts.Outage, opts.TTL)
	}
	p := sidecar.NewPrinter(w)
	dir, err := os.MkdirTemp("", "leasekeeper-demo")
	if err != nil {
		return false, err
	}
	defer func() { _ = os.RemoveAll(dir) }()
	srv, err := embedetcd.Start(dir, 30*time.Second)
	if err != nil {
		return false, err
	}
	defer srv.Stop()
	p.Printf("embedded etcd serving at %s", srv.Endpoint)
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   []string{srv.Endpoint},
		DialTimeout: 5 * time.Second,
		Logger:      zap.NewNop(),
	})
	if err != nil {
		return false, err
	}
	defer func() { _ = cli.Close() }()

	rec := newRecorder(p)
	cfg := keeper.DefaultConfig()
	cfg.TTL = opts.TTL
	cfg.Logger = opts.Logger
	cfg.Callbacks.OnTransition = rec.record
	k, err := keeper.New(cli, cfg)
	if err != nil {
		return false, err
	}
	defer func() { _ = k.Close(context.Background()) }()
	host, _ := os.Hostname()
	if err := k.Register(ctx, Key, host); err != nil {
		return false, err
	}
	if err := k.Start(ctx); err != nil {
		return false, err
	}
	first := k.LeaseID()
	p.Printf("registered %s with lease %x (ttl %s)", Key, int64(first), opts.TTL)

	p.Printf("stopping etcd for %s, longer than the ttl", opts.Outage)
	// The outage counts from the stop's start: stopping waits for the
	// keeper's watch stream to end, which may take longer than the outage.
	restart := time.After(opts.Outage)
	srv.Stop()
	select {
	case <-restart:
	case <-ctx.Done():
		return false, ctx.Err()
	}
	p.Printf("starting etcd again on the same data")
	if err := srv.Restart(30 * time.Second); err != nil {
		return false, err
	}
	if !rec.waitHealthyAfterFailed(ctx, 30*time.Second) {
		p.Printf("not healthy 30s after etcd came back: state %s", k.State())
		return false, nil
	}

	resp, err := cli.Get(ctx, Key)
	if err != nil {
		return false, err
	}
	back := len(resp.Kvs) == 1 && clientv3.LeaseID(resp.Kvs[0].Lease) == k.LeaseID()
	lease := "a new lease " + strconv.FormatInt(int64(k.LeaseID()), 16)
	if k.LeaseID() == first {
		lease = "the same lease, resumed"
	}
	p.Printf("key back: %s (%s)", yesNo(back), lease)
	path := rec.path()
	p.Printf("path: %s", path)
	ok := back && containsInOrder(rec.states(), statemachine.Healthy, statemachine.Degraded, statemachine.Failed, statemachine.Healthy)
	p.Printf("demo %s", map[bool]string{true: "passed", false: "FAILED"}[ok])
	return ok, nil
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

// containsInOrder reports whether want occurs in got as a subsequence.
func containsInOrder(got []statemachine.State, want ...statemachine.State) bool {
	for _, s := range got {
		if len(want) > 0 && s == want[0] {
			want = want[1:]
		}
	}
	return len(want) == 0
}

// recorder prints transitions and lets the demo wait for recovery.
type recorder struct {
	p    *sidecar.Printer
	mu   sync.Mutex
	ts   []statemachine.Transition
	more chan struct{}
}

func newRecorder(p *sidecar.Printer) *recorder {
	return &recorder{p: p, more: make(chan struct{})}
}

func (r *recorder) record(t statemachine.Transition) {
	r.p.Transition(t)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ts = append(r.ts, t)
	close(r.more)
	r.more = make(chan struct{})
}

func (r *recorder) states() []statemachine.State {
	r.mu.Lock()
	defer r.mu.Unlock()
	var ss []statemachine.State
	for i, t := range r.ts {
		if i == 0 {
			ss = append(ss, t.From)
		}
		ss = append(ss, t.To)
	}
	return ss
}

func (r *recorder) path() string {
	var s string
	for i, st := range r.states() {
		if i > 0 {
			s += " -> "
		}
		s += st.String()
	}
	return s
}

func (r *recorder) waitHealthyAfterFailed(ctx context.Context, timeout time.Duration) bool {
	deadline := time.After(timeout)
	for {
		r.mu.Lock()
		ok := slices.ContainsFunc(r.ts, func(t statemachine.Transition) bool {
			return t.From == statemachine.Failed && t.To == statemachine.Healthy
		})
		more := r.more
		r.mu.Unlock()
		if ok {
			return true
		}
		select {
		case <-more:
		case <-deadline:
			return false
		case <-ctx.Done():
			return false
		}
	}
}
