package gozero

import (
	"context"
	"sync/atomic"

	"github.com/zeromicro/go-zero/core/discov"
	"github.com/zeromicro/go-zero/core/logx"
	"github.com/zeromicro/go-zero/zrpc"
	"google.golang.org/grpc"

	"github.com/leasekeeper/leasekeeper/keeper"
)

// Server is a zrpc.RpcServer registered through a keeper instead of
// go-zero's Publisher: the one change a service makes is
// zrpc.MustNewServer(c, register) to gozero.MustNewServer(c, register).
type Server struct {
	*zrpc.RpcServer
	etcd     discov.EtcdConf
	listenOn string
	opts     []Option
	reg      atomic.Pointer[Registration] // set by Start
}

// NewServer returns a server for c that Start registers through a keeper,
// with c.Etcd's hosts, key, id, account and TLS. c.Etcd must be set: a
// server without one has nothing to register, and is zrpc.NewServer's.
func NewServer(c zrpc.RpcServerConf, register func(*grpc.Server), opts ...Option) (*Server, error) {
	if !c.HasEtcd() {
		return nil, errNoEtcd
	}
	etcd := c.Etcd
	c.Etcd = discov.EtcdConf{} // so that zrpc does not publish it too
	rs, err := zrpc.NewServer(c, register)
	if err != nil {
		return nil, err
	}
	return &Server{RpcServer: rs, etcd: etcd, listenOn: c.ListenOn, opts: opts}, nil
}

// MustNewServer is NewServer, and exits on an error, as zrpc.MustNewServer.
func MustNewServer(c zrpc.RpcServerConf, register func(*grpc.Server), opts ...Option) *Server {
	s, err := NewServer(c, register, opts...)
	logx.Must(err)
	return s
}

// Start registers the server and serves until go-zero's proc package stops
// it (on SIGTERM or SIGINT, once the registration drained). As
// zrpc.RpcServer.Start, it panics when it cannot serve, or register: a
// keeper that did not become Healthy within the start timeout, though,
// goes on trying in the background, and the server serves meanwhile.
func (s *Server) Start() {
	reg, err := Register(s.etcd, s.listenOn, s.opts...)
	if reg == nil {
		logx.Must(err)
	}
	if err != nil {
		logx.Errorf("leasekeeper: not registered yet, retrying in the background: %v", err)
	}
	s.reg.Store(reg)
	s.RpcServer.Start()
}

// Keeper returns the keeper behind the server's registration, once Start
// registered it; nil before.
func (s *Server) Keeper() *keeper.Keeper {
	if r := s.reg.Load(); r != nil {
		return r.Keeper()
	}
	return nil
}

// Drain withdraws the registration (Registration.Drain), or waits for the
// drain a signal began, and returns its error; nil before Start.
func (s *Server) Drain(ctx context.Context) error {
	if r := s.reg.Load(); r != nil {
		return r.Drain(ctx)
	}
	return nil
}
