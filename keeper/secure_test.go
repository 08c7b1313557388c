package keeper_test

import (
	"context"
	"errors"
	"os"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap/zaptest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/stats"

	lkerrors "github.com/leasekeeper/leasekeeper/errors"
	"github.com/leasekeeper/leasekeeper/internal/test/secureetcd"
	"github.com/leasekeeper/leasekeeper/internal/test/testpki"
	"github.com/leasekeeper/leasekeeper/keeper"
	"github.com/leasekeeper/leasekeeper/statemachine"
)

// The tests in this file run against an etcd that requires client
// certificates, has auth on, and lets the user "svc" write under "svc/"
// only.

func startSecure(t *testing.T) *secureetcd.Cluster { return secureetcd.ForTest(t, "svc", "svc/") }

func connect(t *testing.T, c *secureetcd.Cluster, user, password string, pair testpki.Pair) *clientv3.Client {
	t.Helper()
	cli, err := c.Connect(user, password, pair)
	if err != nil {
		t.Fatalf("etcd client: %v", err)
	}
	t.Cleanup(func() { _ = cli.Close() })
	return cli
}

// secureKeeper returns a keeper on cli that retries at most every capDelay.
func secureKeeper(t *testing.T, cli *clientv3.Client, capDelay time.Duration) (*keeper.Keeper, *transitions, *keeper.AttemptLog) {
	t.Helper()
	cfg := keeper.DefaultConfig()
	cfg.TTL = 3 * time.Second
	cfg.Backoff.BaseDelay = capDelay / 10
	cfg.Backoff.MaxDelay = capDelay
	rec, log := newTransitions(), &keeper.AttemptLog{}
	cfg.Callbacks.OnTransition = rec.record
	cfg.Observers = []keeper.Observer{log}
	if os.Getenv("LK_DEBUG") != "" {
		cfg.Logger = zaptest.NewLogger(t)
	}
	k, err := keeper.New(cli, cfg)
	if err != nil {
		t.Fatal(err)
	}
	closeAtEnd(t, k)
	return k, rec, log
}

func registerAll(t *testing.T, k *keeper.Keeper, keys ...string) {
	t.Helper()
	for _, key := range keys {
		if err := k.Register(context.Background(), key, "v"); err != nil {
			t.Fatalf("Register(%q) = %v", key, err)
		}
	}
}

// wantOnLease fails the test unless every key is in etcd on lease id.
func wantOnLease(t *testing.T, cli *clientv3.Client, id clientv3.LeaseID, keys ...string) {
	t.Helper()
	for _, key := range keys {
		if _, lease, ok := keyLease(t, cli, key); !ok || lease != id {
			t.Errorf("%s: present %v on lease %x, want on lease %x", key, ok, lease, id)
		}
	}
}

func TestSecureRightCredentials(t *testing.T) {
	c := startSecure(t)
	tests := []struct {
		name, user string
	}{
		{"password over mutual TLS", "svc"},
		{"certificate common name", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			password := ""
			if tc.user != "" {
				password = c.Password
			}
			k, _, _ := secureKeeper(t, connect(t, c, tc.user, password, c.Cert), time.Second)
			registerAll(t, k, "svc/a", "svc/b")
			if err := k.Start(context.Background()); err != nil {
				t.Fatalf("Start() = %v, want nil", err)
			}
			if got := k.State(); got != statemachine.Healthy {
				t.Errorf("State() = %v, want healthy", got)
			}
			wantOnLease(t, c.Root(), k.LeaseID(), "svc/a", "svc/b")
		})
	}
}

// rpcCounter counts the RPCs a client starts, by method.
type rpcCounter struct {
	mu sync.Mutex
	n  map[string]int
}

type methodKey struct{}

func (c *rpcCounter) TagRPC(ctx context.Context, info *stats.RPCTagInfo) context.Context {
	return context.WithValue(ctx, methodKey{}, info.FullMethodName)
}

func (c *rpcCounter) HandleRPC(ctx context.Context, s stats.RPCStats) {
	if _, ok := s.(*stats.Begin); ok {
		c.mu.Lock()
		defer c.mu.Unlock()
		c.n[ctx.Value(methodKey{}).(string)]++
	}
}

func (c *rpcCounter) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context { return ctx }
func (c *rpcCounter) HandleConn(context.Context, stats.ConnStats)                       {}

func (c *rpcCounter) count(method string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n[method]
}

// TestSecureRenewalsDoNotAuthenticate: etcd's client authenticates at
// every stream it opens when it has a password, which costs the server a
// bcrypt check; the keeper keeps its renewal stream open instead.
func TestSecureRenewalsDoNotAuthenticate(t *testing.T) {
	c := startSecure(t)
	counter := &rpcCounter{n: map[string]int{}}
	tc, err := c.TLS(c.Cert)
	if err != nil {
		t.Fatal(err)
	}
	cli := newClient(t, clientv3.Config{Endpoints: []string{c.Endpoint}, TLS: tc, Username: c.User, Password: c.Password,
		DialOptions: []grpc.DialOption{grpc.WithStatsHandler(counter)}})
	k, _, log := secureKeeper(t, cli, time.Second)
	registerAll(t, k, "svc/a")
	startOrFail(t, k)
	const (
		auth    = "/etcdserverpb.Auth/Authenticate"
		renewal = "/etcdserverpb.Lease/LeaseKeepAlive"
		watch   = "/etcdserverpb.Watch/Watch"
	)
	authBefore := counter.count(auth)
	const renewals = 4
	deadline := time.Now().Add(10 * time.Second)
	for ok := 0; ok < renewals && time.Now().Before(deadline); {
		time.Sleep(100 * time.Millisecond)
		ok = 0
		for _, a := range log.Since(time.Time{}) {
			if a.Err == nil {
				ok++
			}
		}
		ok-- // the grant
	}
	if got := k.State(); got != statemachine.Healthy {
		t.Fatalf("State() = %v, want healthy", got)
	}
	// Every stream opened authenticates once: the renewal stream, and the
	// watch of the keys, which etcd's client keeps open by itself.
	auths, streams, watches := counter.count(auth)-authBefore, counter.count(renewal), counter.count(watch)
	t.Logf("%d renewals: %d renewal stream(s) and %d watch stream(s) opened, %d authentication(s)", renewals, streams, watches, auths)
	if streams > 1 || auths > streams+watches {
		t.Errorf("%d renewals opened %d renewal streams and authenticated %d times, want one stream and one authentication per stream",
			renewals, streams, auths)
	}
}

// TestSecureWrongCredentials: credentials etcd refuses end Start with a
// classified PermissionDenied after a try or two, not at its context's
// end, and without a burst of attempts.
func TestSecureWrongCredentials(t *testing.T) {
	c := startSecure(t)
	other, err := testpki.NewCA(t.TempDir(), "other")
	if err != nil {
		t.Fatal(err)
	}
	intruder, err := other.Client("svc")
	if err != nil {
		t.Fatal(err)
	}

	t.Run("wrong password at connect", func(t *testing.T) {
		cli, err := c.Connect(c.User, "not-"+c.Password, c.Cert)
		if err == nil {
			_ = cli.Close()
			t.Fatal("clientv3.New with a wrong password succeeded")
		}
		if got := lkerrors.KindOf(lkerrors.Classify(err)); got != lkerrors.PermissionDenied {
			t.Errorf("KindOf(%v) = %v, want permission denied", err, got)
		}
	})

	tests := []struct {
		name   string
		client func(t *testing.T) *clientv3.Client
		// transportToo: the refusal may also look like a dropped
		// connection. With TLS 1.3 the server checks the client's
		// certificate after the client's handshake is done; the client
		// then either reads the server's alert or finds the connection
		// closed under its first write, whichever comes first.
		transportToo bool
	}{
		{"password changed under a connected client", func(t *testing.T) *clientv3.Client {
			cli := connect(t, c, c.User, c.Password, c.Cert)
			if err := c.ChangePassword(context.Background()); err != nil {
				t.Fatal(err)
			}
			return cli
		}, false},
		{"client certificate from another CA", func(t *testing.T) *clientv3.Client {
			tc, err := c.TLS(intruder)
			if err != nil {
				t.Fatal(err)
			}
			return newClient(t, clientv3.Config{Endpoints: []string{c.Endpoint}, TLS: tc})
		}, true},
		{"server certificate not trusted", func(t *testing.T) *clientv3.Client {
			tc, err := c.TLSWith(other.CertFile, c.Cert)
			if err != nil {
				t.Fatal(err)
			}
			return newClient(t, clientv3.Config{Endpoints: []string{c.Endpoint}, TLS: tc})
		}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			k, _, log := secureKeeper(t, tc.client(t), 5*time.Second)
			registerAll(t, k, "svc/a")
			wait, limit := 20*time.Second, 2
			if tc.transportToo {
				// Until an attempt reads the alert, the backoff paces them.
				wait, limit = 3*time.Second, 8
			}
			ctx, cancel := context.WithTimeout(context.Background(), wait)
			defer cancel()
			began := time.Now()
			err := k.Start(ctx)
			n := len(log.Since(began))
			switch kind := lkerrors.KindOf(err); {
			case kind == lkerrors.ClusterUnreachable && tc.transportToo:
				// Reported as unreachable at Start's end.
				if n > limit {
					t.Errorf("%d attempts in %v, want at most %d", n, wait, limit)
				}
			case kind != lkerrors.PermissionDenied:
				t.Fatalf("Start() = %v after %v, want PermissionDenied", err, time.Since(began))
			case ctx.Err() != nil:
				t.Errorf("Start returned at its context's end, want at the refusal")
			case n > limit:
				t.Errorf("%d attempts before Start returned, want at most %d", n, limit)
			}
			t.Logf("Start returned after %v and %d attempts: %v", time.Since(began).Round(time.Millisecond), n, err)
			if got := k.State(); got != statemachine.Failed {
				t.Errorf("State() = %v, want failed", got)
			}
		})
	}
}

// lastEntered returns when the keeper last entered s.
func lastEntered(r *transitions, s statemachine.State) time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	var at time.Time
	for _, tr := range r.items {
		if tr.To == s {
			at = tr.At
		}
	}
	return at
}

// TestSecurePermissionRevoked: with the role's permission revoked, etcd
// refuses the renewals; the keeper is Failed with PermissionDenied, tries
// at most once per backoff cap, and is Healthy again by itself once the
// permission is granted back.
func TestSecurePermissionRevoked(t *testing.T) {
	c := startSecure(t)
	cli := connect(t, c, c.User, c.Password, c.Cert)
	const capDelay = 500 * time.Millisecond
	k, rec, log := secureKeeper(t, cli, capDelay)
	registerAll(t, k, "svc/a", "svc/b")
	startOrFail(t, k)
	ctx := context.Background()

	if err := c.Revoke(ctx); err != nil {
		t.Fatal(err)
	}
	revoked := time.Now()
	waitTransition(t, rec, statemachine.Healthy, statemachine.Failed, 5*time.Second)
	if !errors.Is(k.Err(), lkerrors.ErrPermissionDenied) {
		t.Errorf("Err() = %v, want PermissionDenied", k.Err())
	}
	// Stay revoked past the lease's expiry on the server.
	const window = 6 * time.Second
	time.Sleep(window - time.Since(revoked))
	tries := log.Since(revoked)
	if limit := int(window/capDelay) + 2; len(tries) > limit {
		t.Errorf("%d attempts in %v of revoked permission, want at most %d (one per %v cap)", len(tries), window, limit, capDelay)
	}
	if len(tries) < 4 {
		t.Errorf("%d attempts in %v, want the keeper to keep trying", len(tries), window)
	}
	for i := 1; i < len(tries); i++ {
		prev := tries[i-1]
		if gap := tries[i].At.Sub(prev.At); prev.Err != nil && prev.Kind != lkerrors.LeaseExpired && gap < capDelay {
			t.Errorf("attempt %d came %v after a %v failure, want at least %v", i, gap, prev.Kind, capDelay)
		}
	}
	if t.Failed() {
		for i, a := range tries {
			t.Logf("attempt %d: %s at +%v took %v: %v", i, a.Op, a.At.Sub(revoked).Round(time.Millisecond), a.Took.Round(time.Millisecond), a.Err)
		}
	}
	if got := k.State(); got != statemachine.Failed {
		t.Errorf("State() while revoked = %v, want failed", got)
	}

	if err := c.Grant(ctx); err != nil {
		t.Fatal(err)
	}
	granted := time.Now()
	waitTransition(t, rec, statemachine.Failed, statemachine.Healthy, 10*time.Second)
	// An attempt that raced the grant may have seen one key refused still:
	// that key is held and tried again within the backoff cap.
	var written time.Duration
	for deadline := time.Now().Add(3 * capDelay); ; time.Sleep(10 * time.Millisecond) {
		_, la, oka := keyLease(t, c.Root(), "svc/a")
		_, lb, okb := keyLease(t, c.Root(), "svc/b")
		if oka && okb && la == k.LeaseID() && lb == k.LeaseID() || time.Now().After(deadline) {
			written = time.Since(granted)
			break
		}
	}
	t.Logf("failed %v after the revoke; %d attempts in %v revoked (cap %v); healthy %v and every key written %v after the grant",
		lastEntered(rec, statemachine.Failed).Sub(revoked).Round(time.Millisecond), len(tries), window, capDelay,
		lastEntered(rec, statemachine.Healthy).Sub(granted).Round(time.Millisecond), written.Round(time.Millisecond))
	wantOnLease(t, c.Root(), k.LeaseID(), "svc/a", "svc/b")
}

// TestSecureKeyOutsidePrefix: a key the role may not write is refused with
// a classified error, at Register (where it is dropped) or at Start (where
// it stays registered, is retried by the backoff and reported), and the
// other keys stay registered.
func TestSecureKeyOutsidePrefix(t *testing.T) {
	c := startSecure(t)
	cli := connect(t, c, c.User, c.Password, c.Cert)

	t.Run("registered while healthy", func(t *testing.T) {
		k, _, log := secureKeeper(t, cli, time.Second)
		registerAll(t, k, "svc/a", "svc/b")
		startOrFail(t, k)
		err := k.Register(context.Background(), "other/x", "v")
		if !errors.Is(err, lkerrors.ErrPermissionDenied) {
			t.Errorf("Register(other/x) = %v, want PermissionDenied", err)
		}
		// The next renewal still succeeds: the refused key never joined
		// the lease.
		before := len(log.Since(time.Time{}))
		deadline := time.Now().Add(5 * time.Second)
		for len(log.Since(time.Time{})) == before && time.Now().Before(deadline) {
			time.Sleep(50 * time.Millisecond)
		}
		if got := k.State(); got != statemachine.Healthy || k.Keys() != 2 {
			t.Errorf("State(), Keys() = %v, %d; want healthy, 2", got, k.Keys())
		}
		wantOnLease(t, c.Root(), k.LeaseID(), "svc/a", "svc/b")
	})

	t.Run("registered before Start", func(t *testing.T) {
		k, _, _ := secureKeeper(t, cli, time.Second)
		registerAll(t, k, "svc/c", "other/y", "svc/d")
		if err := k.Start(context.Background()); err != nil {
			t.Fatalf("Start() = %v, want nil with the refused key held", err)
		}
		if k.Keys() != 3 {
			t.Errorf("Keys() = %d, want 3: the refused key stays registered", k.Keys())
		}
		if _, err := k.Token("other/y"); !errors.Is(err, lkerrors.ErrPermissionDenied) {
			t.Errorf("Token(other/y) = %v, want PermissionDenied", err)
		}
		wantOnLease(t, c.Root(), k.LeaseID(), "svc/c", "svc/d")
		if _, _, ok := keyLease(t, c.Root(), "other/y"); ok {
			t.Errorf("other/y written although the role may not")
		}
	})
}
