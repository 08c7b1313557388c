// Command gozero runs a go-zero rpc server registered through leasekeeper,
// and a zrpc client that finds it through go-zero's etcd resolver: it calls
// the server three times, then sends the process SIGTERM, as a supervisor
// would (the registration drains in go-zero's wrap-up phase, the server
// stops), and exits. It starts an embedded etcd unless -etcd names one.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/zeromicro/go-zero/core/conf"
	"github.com/zeromicro/go-zero/core/logx"
	"github.com/zeromicro/go-zero/core/proc"
	"github.com/zeromicro/go-zero/zrpc"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health/grpc_health_v1"

	"github.com/leasekeeper/leasekeeper/contrib/gozero"
	"github.com/leasekeeper/leasekeeper/keeper/etcdtest"
	"github.com/leasekeeper/leasekeeper/statemachine"
)

func main() {
	host := flag.String("etcd", "", "an etcd host:port (default: an embedded etcd)")
	flag.Parse()
	logx.Disable()
	// go-zero kills the process 5.5 s after a SIGTERM by default; this one
	// exits on its own once it stopped the embedded etcd.
	proc.SetTimeToForceQuit(time.Minute)
	if *host == "" {
		srv, err := etcdtest.StartTemp()
		if err != nil {
			log.Fatal(err)
		}
		defer srv.Close()
		*host = strings.TrimPrefix(srv.Endpoint, "http://")
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	addr := l.Addr().String()
	_ = l.Close()

	// The server: zrpc's, with gozero.MustNewServer in place of
	// zrpc.MustNewServer.
	var c zrpc.RpcServerConf
	yaml := fmt.Sprintf("Name: greeter.rpc\nListenOn: %s\nLog:\n  Level: error\nEtcd:\n  Hosts: [%s]\n  Key: greeter.rpc\n", addr, *host)
	if err := conf.LoadFromYamlBytes([]byte(yaml), &c); err != nil {
		log.Fatal(err)
	}
	s := gozero.MustNewServer(c, func(*grpc.Server) {})

	go func() {
		// The client: a zrpc client on go-zero's etcd resolver, once the
		// server registered.
		for s.Keeper() == nil || s.Keeper().State() != statemachine.Healthy {
			time.Sleep(10 * time.Millisecond)
		}
		var cc zrpc.RpcClientConf
		if err := conf.LoadFromYamlBytes([]byte(fmt.Sprintf("Etcd:\n  Hosts: [%s]\n  Key: greeter.rpc\n", *host)), &cc); err != nil {
			log.Fatal(err)
		}
		cl := zrpc.MustNewClient(cc)
		hc := grpc_health_v1.NewHealthClient(cl.Conn())
		for i := range 3 {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			resp, err := hc.Check(ctx, &grpc_health_v1.HealthCheckRequest{})
			cancel()
			if err != nil {
				log.Fatal(err)
			}
			fmt.Printf("call %d through etcd key greeter.rpc: %v (keeper %v)\n", i+1, resp.GetStatus(), s.Keeper().State())
		}
		_ = cl.Conn().Close()
		_ = syscall.Kill(os.Getpid(), syscall.SIGTERM)
	}()
	s.Start()

	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{*host}, Logger: zap.NewNop()})
	if err != nil {
		log.Fatal(err)
	}
	defer func() { _ = cli.Close() }()
	resp, err := cli.Get(context.Background(), "greeter.rpc/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		log.Fatal(err)
	}
	if err := s.Drain(context.Background()); err != nil { // under way since the signal: wait for it
		log.Fatal(err)
	}
	fmt.Printf("stopped on SIGTERM: keeper %v, %d key(s) registered\n", s.Keeper().State(), resp.Count)
}
