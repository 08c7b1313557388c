package sidecar

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"syscall"
	"time"

	lkerrors "github.com/leasekeeper/leasekeeper/errors"
	"github.com/leasekeeper/leasekeeper/keeper"
)

// Options says what Run holds and for how long.
type Options struct {
	// Key and Value are the registration.
	Key, Value string
	// Command, when set, is started as a child; the registration is held
	// while it lives and its exit code is Run's.
	Command []string
	// HealthAddr, when set, is where /healthz and /readyz are served.
	HealthAddr string
	// Metrics, when set, is served as /metrics beside them.
	Metrics http.Handler
	// StartTimeout bounds the wait for the first registration; after it
	// the keeper goes on trying in the background.
	StartTimeout time.Duration
	// CloseTimeout bounds the revoke on the way out.
	CloseTimeout time.Duration
}

// Run registers opts.Key with k, holds it until ctx ends or the child
// exits, then closes k, which deletes the key. It returns the exit code for
// the process: the child's if there is one, else 0, or 1 when the
// registration could not be revoked.
func Run(ctx context.Context, k *keeper.Keeper, out *Output, opts Options) (int, error) {
	if opts.HealthAddr != "" {
		stop, err := serveHealth(opts.HealthAddr, Handler(k, opts.Metrics), out)
		if err != nil {
			return 1, err
		}
		defer stop()
	}
	if err := k.Register(ctx, opts.Key, opts.Value); err != nil {
		return 1, err
	}
	sctx, cancel := context.WithTimeout(ctx, opts.StartTimeout)
	err := k.Start(sctx)
	cancel()
	switch {
	case err == nil:
		out.Event("registered", "key", opts.Key, "lease", strconv.FormatInt(int64(k.LeaseID()), 16))
	case ctx.Err() != nil:
		// Interrupted while starting: fall through to Close.
	case lkerrors.KindOf(err) == lkerrors.ClusterUnreachable:
		out.Event("etcd unreachable at start; retrying in the background", "state", k.State(), "error", err)
	default:
		out.Event("not registered yet; retrying in the background", "state", k.State(),
			"kind", lkerrors.KindOf(err).String(), "error", err)
	}

	code := 0
	if len(opts.Command) > 0 && ctx.Err() == nil {
		code = runChild(ctx, opts.Command, out)
	} else {
		<-ctx.Done()
	}

	held := k.LeaseID() != 0
	cctx, cancel := context.WithTimeout(context.Background(), opts.CloseTimeout)
	defer cancel()
	switch err := k.Close(cctx); {
	case err != nil:
		out.Event("deregistration failed; the key expires with its lease", "error", err)
		if len(opts.Command) == 0 {
			code = 1
		}
	case held:
		out.Event("deregistered", "key", opts.Key)
	default:
		out.Event("stopped; no lease was held", "key", opts.Key)
	}
	return code, nil
}

// runChild runs the command until it exits, forwarding SIGTERM to it when
// ctx ends, and returns its exit code (128+signal if a signal killed it,
// 127 if it could not start).
func runChild(ctx context.Context, argv []string, out *Output) int {
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	if err := cmd.Start(); err != nil {
		out.Event("cannot start the command", "command", argv[0], "error", err)
		return 127
	}
	out.Event("started", "command", argv[0], "pid", cmd.Process.Pid)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var err error
	select {
	case err = <-done:
	case <-ctx.Done():
		_ = cmd.Process.Signal(syscall.SIGTERM)
		err = <-done
	}
	code := exitCode(err)
	out.Event("command exited", "command", argv[0], "code", code)
	return code
}

func exitCode(err error) int {
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		if err != nil {
			return 1
		}
		return 0
	}
	if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return ee.ExitCode()
}

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
