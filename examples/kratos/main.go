// Command kratos runs a kratos service registered through leasekeeper, and
// a client that finds it through kratos's discovery resolver: it calls the
// service three times, stops it (the registrar drains), and exits. It
// starts an embedded etcd unless -endpoints names one.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"strings"
	"time"

	kratosapp "github.com/go-kratos/kratos/v2"
	klog "github.com/go-kratos/kratos/v2/log"
	kgrpc "github.com/go-kratos/kratos/v2/transport/grpc"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc/health/grpc_health_v1"

	"github.com/leasekeeper/leasekeeper/contrib/kratos"
	"github.com/leasekeeper/leasekeeper/keeper/etcdtest"
)

func main() {
	endpoints := flag.String("endpoints", "", "etcd client URLs, comma-separated (default: an embedded etcd)")
	flag.Parse()
	klog.SetLogger(klog.NewFilter(klog.GetLogger(), klog.FilterLevel(klog.LevelError)))
	eps := strings.Split(*endpoints, ",")
	if *endpoints == "" {
		srv, err := etcdtest.StartTemp()
		if err != nil {
			log.Fatal(err)
		}
		defer srv.Close()
		eps = []string{srv.Endpoint}
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: eps, Logger: zap.NewNop()})
	if err != nil {
		log.Fatal(err)
	}
	defer func() { _ = cli.Close() }()

	// The service: kratos's own App, with leasekeeper's registrar.
	r, err := kratos.New(cli)
	if err != nil {
		log.Fatal(err)
	}
	gs := kgrpc.NewServer(kgrpc.Address("127.0.0.1:0"))
	app := kratosapp.New(kratosapp.Name("greeter"), kratosapp.Server(gs), kratosapp.Registrar(r))
	done := make(chan error, 1)
	go func() { done <- app.Run() }()

	// The client: kratos's resolver over the registrar's Discovery.
	d, err := kratos.NewDiscovery(cli)
	if err != nil {
		log.Fatal(err)
	}
	ctx := context.Background()
	conn, err := kgrpc.DialInsecure(ctx, kgrpc.WithEndpoint("discovery:///greeter"), kgrpc.WithDiscovery(d),
		kgrpc.WithPrintDiscoveryDebugLog(false))
	if err != nil {
		log.Fatal(err)
	}
	defer func() { _ = conn.Close() }()
	hc := grpc_health_v1.NewHealthClient(conn)
	for i := range 3 {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		resp, err := hc.Check(cctx, &grpc_health_v1.HealthCheckRequest{})
		cancel()
		if err != nil {
			log.Fatal(err)
		}
		fmt.Printf("call %d through discovery:///greeter: %v (keeper %v, lease %x)\n",
			i+1, resp.GetStatus(), r.Keeper().State(), int64(r.Keeper().LeaseID()))
	}
	if err := app.Stop(); err != nil {
		log.Fatal(err)
	}
	if err := <-done; err != nil {
		log.Fatal(err)
	}
	left, err := d.GetService(ctx, "greeter")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("stopped: keeper %v, %d instance(s) registered\n", r.Keeper().State(), len(left))
}
