// Package embedetcd starts a single-member etcd server inside the process,
// on loopback ports picked at random, for tests and the command's demo.
package embedetcd

import (
	"errors"
	"fmt"
	"net/url"
	"syscall"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"

	"github.com/leasekeeper/leasekeeper/internal/test/freeport"
)

// Server is a running single-member etcd.
type Server struct {
	// Endpoint is the client URL, for clientv3.Config.Endpoints.
	Endpoint string

	etcd *embed.Etcd
	cfg  *embed.Config
}

// Options changes how the server is started.
type Options struct {
	// ClientTLS, when set, serves clients over TLS with these files;
	// ClientCertAuth in it requires client certificates.
	ClientTLS *transport.TLSInfo
	// BcryptCost, when set, is the cost of the password hashes etcd keeps
	// for its users; the default (10) costs about 70ms per authentication.
	BcryptCost uint
}

// Start starts etcd with its data in dir and waits until it serves, at most
// timeout. A dir that already holds data restarts that member.
func Start(dir string, timeout time.Duration) (*Server, error) {
	return StartWith(dir, timeout, Options{})
}

// StartWith is Start with options.
func StartWith(dir string, timeout time.Duration, opts Options) (*Server, error) {
	ports, err := freeport.Get(2)
	if err != nil {
		return nil, err
	}
	cfg := embed.NewConfig()
	cfg.Name = "leasekeeper"
	cfg.Dir = dir
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	client := url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", ports[0])}
	if opts.ClientTLS != nil {
		client.Scheme = "https"
		cfg.ClientTLSInfo = *opts.ClientTLS
	}
	if opts.BcryptCost > 0 {
		cfg.BcryptCost = opts.BcryptCost
	}
	peer := url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", ports[1])}
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{client}, []url.URL{client}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{peer}, []url.URL{peer}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	s := &Server{Endpoint: client.String(), cfg: cfg}
	return s, s.start(timeout)
}

// start starts etcd and waits until it serves, at most timeout. Its ports
// were free when they were picked; while the server was stopped another
// process may have taken one (an outgoing connection's local port, say),
// so a start that finds a port in use tries again until timeout.
func (s *Server) start(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	e, err := embed.StartEtcd(s.cfg)
	for err != nil && errors.Is(err, syscall.EADDRINUSE) && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
		e, err = embed.StartEtcd(s.cfg)
	}
	if err != nil {
		return fmt.Errorf("embedetcd: start: %w", err)
	}
	select {
	case <-e.Server.ReadyNotify():
	case <-time.After(time.Until(deadline)):
		e.Close()
		return fmt.Errorf("embedetcd: not ready after %s", timeout)
	}
	s.etcd = e
	return nil
}

// Stop stops the server as a crash would: raft and the lease clock stop
// at once (no lease expires from then on), then the listeners close. Its
// data stays for Restart. Stop returns once the server is closed, which
// takes etcd's request timeout (about 7s) while clients hold streams open
// (a watch, say): etcd waits that long for them to end.
func (s *Server) Stop() {
	if s.etcd != nil {
		s.etcd.Server.HardStop()
		s.etcd.Close()
		s.etcd = nil
	}
}

// Restart starts a stopped server again on the same data and ports.
func (s *Server) Restart(timeout time.Duration) error {
	if s.etcd != nil {
		return errors.New("embedetcd: restart of a running server")
	}
	return s.start(timeout)
}
