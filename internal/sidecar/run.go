package sidecar

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"syscall"
	"time"

	lkerrors "github.com/leasekeeper/leasekeeper/errors"
	"github.com/leasekeeper/leasekeeper/keeper"
)

// Options says what Run holds, for whom and how it lets go.
type Options struct {
	// Key and Value are the registration.
	Key, Value string
	// Command, when set, is started as a child at once; the registration
	// is held while it lives and its exit code is Run's.
	Command []string
	// Signals are the termination signals the process receives (SIGTERM,
	// SIGINT, SIGHUP). The first starts the drain; see Run.
	Signals <-chan os.Signal
	// DrainDelay is how long the instance keeps serving, deregistered,
	// before the child is signalled.
	DrainDelay time.Duration
	// KillTimeout is how long the child has to exit after the signal before
	// it is sent SIGKILL.
	KillTimeout time.Duration
	// Ready, when set, checks that the child answers: the key is registered
	// only once it passes, deregistered after ReadyFailures failures in a
	// row, and registered again once it passes again. It is called every
	// ReadyEvery.
	Ready         func(context.Context) error
	ReadyEvery    time.Duration
	ReadyFailures int
	// HealthAddr, when set, is where /healthz and /readyz are served.
	HealthAddr string
	// Metrics, when set, is served as /metrics beside them.
	Metrics http.Handler
	// StartTimeout is how long the first registration may take before Run
	// says etcd is not answering; the keeper goes on trying regardless.
	StartTimeout time.Duration
	// CloseTimeout bounds the revoke when the child exits on its own.
	CloseTimeout time.Duration
}

// Run starts the child at once, registers opts.Key with k (once the child
// is ready, if opts.Ready is set; whenever etcd answers, if it does not at
// first), and holds the key until the child exits or a signal arrives.
//
// On the first signal (or when ctx ends, which counts as SIGTERM) Run
// drains, in order: it deregisters the key at once, waits opts.DrainDelay,
// forwards the signal to the child, waits up to opts.KillTimeout for it to
// exit and then sends SIGKILL, and revokes the lease. A second signal skips
// what is left of the delay; once the child has been signalled, every
// further signal is forwarded to it. When the child exits on its own, Run
// closes k, which deletes the key.
//
// It returns the exit code for the process: the child's if there is one
// (128+signal if a signal ended it, 127 if it could not start), else 0, or
// 1 when the lease could not be revoked.
func Run(ctx context.Context, k *keeper.Keeper, out *Output, opts Options) (int, error) {
	r := &registration{k: k, out: out, opts: opts}
	if opts.HealthAddr != "" {
		stop, err := serveHealth(opts.HealthAddr, Handler(readiness{k, r}, opts.Metrics), out)
		if err != nil {
			return 1, err
		}
		defer stop()
	}
	var c *child
	if len(opts.Command) > 0 {
		var err error
		if c, err = startChild(opts.Command, out); err != nil {
			out.Event("cannot start the command", "command", opts.Command[0], "error", err)
			_ = k.Close(context.Background())
			return 127, nil
		}
	}

	rctx, stopRegistering := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { r.run(rctx) })

	var exited <-chan struct{}
	if c != nil {
		exited = c.done
	}
	var sig os.Signal
	byItself := false
	select {
	case <-exited:
		byItself = true
	case sig = <-opts.Signals:
	case <-ctx.Done():
		sig = syscall.SIGTERM
	}
	stopRegistering()
	wg.Wait()
	if byItself {
		return closeAfterExit(k, out, opts, c.code), nil
	}
	return drain(k, out, opts, c, sig), nil
}

// closeAfterExit closes k once the child exited by itself, and returns the
// child's code.
func closeAfterExit(k *keeper.Keeper, out *Output, opts Options, code int) int {
	cctx, cancel := context.WithTimeout(context.Background(), opts.CloseTimeout)
	defer cancel()
	held := k.LeaseID() != 0
	switch err := k.Close(cctx); {
	case err != nil:
		out.Event("deregistration failed; the key expires with its lease", "error", err)
	case held:
		out.Event("deregistered", "key", opts.Key)
	}
	return code
}

// drain runs the drain for sig; see Run.
func drain(k *keeper.Keeper, out *Output, opts Options, c *child, sig os.Signal) int {
	out.Event("draining", "signal", sig, "key", opts.Key, "delay", opts.DrainDelay)
	dctx, skip := context.WithCancel(context.Background())
	defer skip()
	relay := &relay{last: sig, skip: skip, child: c}
	relayDone := make(chan struct{})
	defer close(relayDone)
	go relay.run(opts.Signals, relayDone, out)

	code := 0
	stop := func() {
		if c != nil {
			code = c.stop(relay.begin(), opts.KillTimeout, out)
		}
	}
	held := k.LeaseID() != 0
	switch err := k.Drain(dctx, opts.DrainDelay, stop); {
	case err != nil:
		out.Event("deregistration failed; the key expires with its lease", "error", err)
		if c == nil {
			code = 1
		}
	case held:
		out.Event("deregistered and revoked", "key", opts.Key)
	default:
		out.Event("stopped; no lease was held", "key", opts.Key)
	}
	return code
}

// relay handles the signals that arrive during a drain: before the child
// is signalled, the first skips the rest of the delay; after, each is
// forwarded to the child.
type relay struct {
	mu        sync.Mutex
	last      os.Signal
	skip      func()
	child     *child
	signalled bool
}

func (r *relay) run(sigs <-chan os.Signal, done <-chan struct{}, out *Output) {
	for {
		select {
		case <-done:
			return
		case s := <-sigs:
			r.mu.Lock()
			r.last = s
			forward := r.signalled && r.child != nil
			r.mu.Unlock()
			if forward {
				out.Event("forwarding", "signal", s)
				r.child.signal(s)
				continue
			}
			out.Event("second signal: skipping the rest of the drain", "signal", s)
			r.skip()
		}
	}
}

// begin marks the child signalled and returns the signal to send it.
func (r *relay) begin() os.Signal {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.signalled = true
	return r.last
}

// registration registers the key when the child is ready and etcd answers,
// and follows the child's readiness afterwards.
type registration struct {
	k    *keeper.Keeper
	out  *Output
	opts Options

	mu         sync.Mutex
	registered bool
}

// isRegistered says whether the key is in the keeper's set now.
func (r *registration) isRegistered() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.registered
}

func (r *registration) run(ctx context.Context) {
	if r.opts.Ready != nil && !r.waitReady(ctx) {
		return
	}
	if !r.register(ctx) {
		return
	}
	sctx, cancel := context.WithTimeout(ctx, r.opts.StartTimeout)
	err := r.k.Start(sctx)
	cancel()
	switch {
	case err == nil:
		r.out.Event("registered", "key", r.opts.Key, "lease", strconv.FormatInt(int64(r.k.LeaseID()), 16))
	case ctx.Err() != nil:
		return
	case lkerrors.KindOf(err) == lkerrors.ClusterUnreachable:
		r.out.Event("etcd unreachable at start; retrying in the background", "state", r.k.State(), "error", err)
	default:
		r.out.Event("not registered yet; retrying in the background", "state", r.k.State(),
			"kind", lkerrors.KindOf(err).String(), "error", err)
	}
	if r.opts.Ready != nil {
		r.follow(ctx)
	}
}

// register adds the key to the keeper's set; a refusal for good is
// reported and ends the registration.
func (r *registration) register(ctx context.Context) bool {
	err := r.k.Register(ctx, r.opts.Key, r.opts.Value)
	if err != nil && ctx.Err() == nil && !lkerrors.IsRetryable(err) {
		r.out.Event("cannot register the key", "key", r.opts.Key, "error", err)
		return false
	}
	r.mu.Lock()
	r.registered = ctx.Err() == nil
	r.mu.Unlock()
	return ctx.Err() == nil
}

// waitReady checks the child until it is ready, and reports false if ctx
// ended first.
func (r *registration) waitReady(ctx context.Context) bool {
	t := time.NewTicker(r.opts.ReadyEvery)
	defer t.Stop()
	for {
		if r.ready(ctx) == nil {
			r.out.Event("child ready")
			return true
		}
		select {
		case <-ctx.Done():
			return false
		case <-t.C:
		}
	}
}

// follow deregisters the key after ReadyFailures failed checks in a row,
// and registers it again after the next that passes.
func (r *registration) follow(ctx context.Context) {
	t := time.NewTicker(r.opts.ReadyEvery)
	defer t.Stop()
	fails := 0
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		err := r.ready(ctx)
		if ctx.Err() != nil {
			return
		}
		switch {
		case err == nil && fails >= r.opts.ReadyFailures:
			// A refused registration is tried again at the next check.
			if r.register(ctx) {
				fails = 0
				r.out.Event("child ready again; registered", "key", r.opts.Key)
			}
		case err == nil:
			fails = 0
		default:
			fails++
			if fails == r.opts.ReadyFailures {
				r.mu.Lock()
				r.registered = false
				r.mu.Unlock()
				derr := r.k.Deregister(ctx, r.opts.Key)
				r.out.Event("child not ready; deregistered", "key", r.opts.Key, "error", err, "deregister_error", derr)
			}
		}
	}
}

// ready runs one check, bounded by the interval.
func (r *registration) ready(ctx context.Context) error {
	cctx, cancel := context.WithTimeout(ctx, r.opts.ReadyEvery)
	defer cancel()
	return r.opts.Ready(cctx)
}

// readiness is the keeper's status, ready only while the key is registered.
type readiness struct {
	*keeper.Keeper
	r *registration
}

func (s readiness) Registered() bool { return s.r.isRegistered() }

// serveHealth serves h on addr until the returned function is called.
func serveHealth(addr string, h http.Handler, out *Output) (func(), error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("health server: %w", err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(ln)
	}()
	out.Event("health endpoints", "addr", ln.Addr().String())
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
		<-done
	}, nil
}
