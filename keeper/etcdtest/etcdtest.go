// Package etcdtest starts a single-member etcd server inside the process,
// on loopback ports picked at random, so that a service's tests and
// examples can run a keeper against a real etcd with nothing installed.
//
//	srv, err := etcdtest.Start(t.TempDir())
//	defer srv.Stop()
//	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{srv.Endpoint}})
//
// Examples and programs, which have no t.TempDir, use StartTemp and Close.
//
// It is for tests: one member, data in the directory given, no TLS.
package etcdtest

import (
	"os"
	"time"

	"github.com/leasekeeper/leasekeeper/internal/embedetcd"
)

// startTimeout bounds the wait for the server to serve.
const startTimeout = 30 * time.Second

// Server is a running etcd.
type Server struct {
	// Endpoint is the client URL, for clientv3.Config.Endpoints.
	Endpoint string

	srv  *embedetcd.Server
	temp string // the directory StartTemp made, which Close removes
}

// Start starts etcd with its data in dir and returns once it serves. A dir
// that already holds data starts that member again.
func Start(dir string) (*Server, error) {
	srv, err := embedetcd.Start(dir, startTimeout)
	if err != nil {
		return nil, err
	}
	return &Server{Endpoint: srv.Endpoint, srv: srv}, nil
}

// StartTemp starts etcd with its data in a new temporary directory, which
// Close removes.
func StartTemp() (*Server, error) {
	dir, err := os.MkdirTemp("", "etcdtest")
	if err != nil {
		return nil, err
	}
	s, err := Start(dir)
	if err != nil {
		_ = os.RemoveAll(dir)
		return nil, err
	}
	s.temp = dir
	return s, nil
}

// Close stops the server and removes the directory StartTemp made; on a
// server from Start it is Stop.
func (s *Server) Close() {
	s.Stop()
	if s.temp != "" {
		_ = os.RemoveAll(s.temp)
	}
}

// Stop stops the server as a crash would, for a test of an outage; its
// data stays for Restart.
func (s *Server) Stop() { s.srv.Stop() }

// Restart starts the stopped server again on the same ports and data.
func (s *Server) Restart() error { return s.srv.Restart(startTimeout) }
