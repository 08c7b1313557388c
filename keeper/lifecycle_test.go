package keeper

import (
	"context"
	"errors"
	"testing"
	"testing/synctest"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	lkerrors "github.com/leasekeeper/leasekeeper/errors"
	"github.com/leasekeeper/leasekeeper/statemachine"
)

func TestNewRejectsNilClient(t *testing.T) {
	k, err := New(nil, DefaultConfig())
	if k != nil || !errors.Is(err, ErrNilClient) {
		t.Errorf("New(nil) = %v, %v; want nil, ErrNilClient", k, err)
	}
	if !errors.Is(err, lkerrors.ErrInvalidArgument) {
		t.Errorf("errors.Is(ErrNilClient, ErrInvalidArgument) = false, want true")
	}
}

func TestStartReturnsPermanentErrorAtOnce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake()
		f.setErr(rpctypes.ErrPermissionDenied)
		k, rec := newTest(t, f, nil)
		start := time.Now()
		err := k.Start(context.Background())
		if !errors.Is(err, lkerrors.ErrPermissionDenied) || !errors.Is(err, rpctypes.ErrPermissionDenied) {
			t.Fatalf("Start() = %v, want PermissionDenied wrapping rpctypes.ErrPermissionDenied", err)
		}
		if took := time.Since(start); took != 0 {
			t.Errorf("Start() took %v, want no retry before returning", took)
		}
		if got := k.State(); got != statemachine.Failed {
			t.Errorf("State() = %v, want failed", got)
		}
		// Retried in the background, but never faster than the backoff cap.
		time.Sleep(time.Minute)
		synctest.Wait()
		if got := f.count("grant"); got > 1+60/4 {
			t.Errorf("grants in a minute of denied permission = %d, want at most %d", got, 1+60/4)
		}
		f.setErr(nil)
		time.Sleep(5 * time.Second)
		synctest.Wait()
		if got := k.State(); got != statemachine.Healthy {
			t.Errorf("State() after permission granted back = %v, want healthy", got)
		}
		if !samePath(rec.path(), statemachine.Idle, statemachine.Failed, statemachine.Healthy) {
			t.Errorf("path = %v, want [idle failed healthy]", rec.path())
		}
		mustClose(t, k)
	})
}

func TestStartGivesUpWithContext(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake()
		f.setDown(true)
		k, _ := newTest(t, f, func(c *Config) { c.DisableRecovery = true })
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		err := k.Start(ctx)
		if !errors.Is(err, lkerrors.ErrClusterUnreachable) {
			t.Fatalf("Start() = %v, want ClusterUnreachable", err)
		}
		// An attempt whose alarm rang at the instant Start gave up may
		// still make its grant: count once everything in flight settled.
		synctest.Wait()
		grants := f.count("grant")
		time.Sleep(time.Minute)
		synctest.Wait()
		if got := f.count("grant"); got != grants {
			t.Errorf("grants after Start gave up with recovery disabled = %d, want %d", got, grants)
		}
		if err := k.Start(context.Background()); !errors.Is(err, ErrAlreadyStarted) {
			t.Errorf("second Start() = %v, want ErrAlreadyStarted", err)
		}
		mustClose(t, k)
	})
}

func TestStartTwice(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		k, _ := newTest(t, newFake(), nil)
		startHealthy(t, k)
		if err := k.Start(context.Background()); !errors.Is(err, ErrAlreadyStarted) {
			t.Errorf("second Start() = %v, want ErrAlreadyStarted", err)
		}
		mustClose(t, k)
	})
}

func TestCloseDuringEveryPhase(t *testing.T) {
	phases := []struct {
		name string
		// setup brings the keeper into the phase; it returns a channel
		// that yields Start's result if Start runs in the background.
		setup     func(t *testing.T, f *fakeBackend, k *Keeper) <-chan error
		wantFrom  statemachine.State
		wantStart error
	}{
		{"before start", func(*testing.T, *fakeBackend, *Keeper) <-chan error { return nil }, statemachine.Idle, nil},
		{"during start", func(t *testing.T, f *fakeBackend, k *Keeper) <-chan error {
			f.setLatency(time.Hour)
			done := make(chan error, 1)
			go func() { done <- k.Start(context.Background()) }()
			synctest.Wait()
			return done
		}, statemachine.Idle, ErrClosed},
		{"healthy", func(t *testing.T, f *fakeBackend, k *Keeper) <-chan error {
			startHealthy(t, k, "svc/a")
			return nil
		}, statemachine.Healthy, nil},
		{"renewal in flight", func(t *testing.T, f *fakeBackend, k *Keeper) <-chan error {
			startHealthy(t, k, "svc/a")
			// The next renewal goes out, and is answered 300ms later.
			f.setLatency(300 * time.Millisecond)
			sent := f.count("keepalive")
			for f.count("keepalive") == sent {
				time.Sleep(10 * time.Millisecond)
			}
			synctest.Wait()
			return nil
		}, statemachine.Healthy, nil},
		{"degraded", func(t *testing.T, f *fakeBackend, k *Keeper) <-chan error {
			startHealthy(t, k, "svc/a")
			f.setErr(rpctypes.ErrNoLeader)
			time.Sleep(5 * time.Second)
			synctest.Wait()
			return nil
		}, statemachine.Degraded, nil},
		{"failed", func(t *testing.T, f *fakeBackend, k *Keeper) <-chan error {
			startHealthy(t, k, "svc/a")
			f.setErr(rpctypes.ErrNoLeader)
			time.Sleep(20 * time.Second)
			synctest.Wait()
			f.setErr(nil)
			return nil
		}, statemachine.Failed, nil},
	}
	for _, ph := range phases {
		t.Run(ph.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				f := newFake()
				k, rec := newTest(t, f, nil)
				startDone := ph.setup(t, f, k)
				if got := k.State(); got != ph.wantFrom {
					t.Fatalf("State() before Close = %v, want %v", got, ph.wantFrom)
				}
				id := k.LeaseID()
				f.setLatency(0)
				f.setErr(nil)
				mustClose(t, k)
				if startDone != nil {
					if err := <-startDone; !errors.Is(err, ph.wantStart) {
						t.Errorf("Start() = %v, want %v", err, ph.wantStart)
					}
				}
				if got := k.State(); got != statemachine.Closed {
					t.Errorf("State() after Close = %v, want closed", got)
				}
				if id != 0 && f.leaseAlive(id) {
					t.Errorf("lease %d alive after Close, want revoked", id)
				}
				if _, ok := f.get("svc/a"); ok {
					t.Errorf("svc/a on the server after Close, want deleted at once")
				}
				if err := k.Close(context.Background()); err != nil {
					t.Errorf("second Close() = %v, want nil", err)
				}
				if err := k.Register(context.Background(), "x", "y"); !errors.Is(err, ErrClosed) {
					t.Errorf("Register after Close = %v, want ErrClosed", err)
				}
				if err := k.Deregister(context.Background(), "x"); !errors.Is(err, ErrClosed) {
					t.Errorf("Deregister after Close = %v, want ErrClosed", err)
				}
				if err := k.Start(context.Background()); !errors.Is(err, ErrClosed) {
					t.Errorf("Start after Close = %v, want ErrClosed", err)
				}
				ts := rec.transitions()
				if ph.wantFrom != statemachine.Idle || len(ts) > 0 {
					if last := ts[len(ts)-1]; last.From != ph.wantFrom || last.To != statemachine.Closed {
						t.Errorf("last transition = %v, want %v -> closed", last, ph.wantFrom)
					}
				}
				// Nothing changes after Close.
				n := len(ts)
				time.Sleep(time.Minute)
				synctest.Wait()
				if got := len(rec.transitions()); got != n {
					t.Errorf("%d transitions after Close, want none", got-n)
				}
			})
		})
	}
}

func TestCloseWhileUnreachableHonoursContext(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake()
		k, _ := newTest(t, f, nil)
		startHealthy(t, k, "svc/a")
		f.setDown(true)
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		start := time.Now()
		err := k.Close(ctx)
		if !errors.Is(err, lkerrors.ErrClusterUnreachable) {
			t.Errorf("Close() while unreachable = %v, want ClusterUnreachable", err)
		}
		if took := time.Since(start); took != 2*time.Second {
			t.Errorf("Close() took %v, want its context's 2s", took)
		}
		if got := k.State(); got != statemachine.Closed {
			t.Errorf("State() = %v, want closed", got)
		}
	})
}

// TestServerSideCancelIsNotPermanent: a Canceled status while the keeper
// itself is open is a fault of the connection, not a reason to fail.
func TestServerSideCancelIsNotPermanent(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake()
		k, rec := newTest(t, f, nil)
		startHealthy(t, k, "svc/a")
		f.setErr(status.Error(codes.Canceled, "grpc: the server has been stopped"))
		time.Sleep(4 * time.Second)
		f.setErr(nil)
		time.Sleep(2 * time.Second)
		synctest.Wait()
		for _, tr := range rec.transitions() {
			if tr.To == statemachine.Failed {
				t.Errorf("transition %v on a short server-side cancel", tr)
			}
		}
		mustClose(t, k)
	})
}
