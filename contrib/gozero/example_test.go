package gozero_test

import (
	"context"
	"fmt"
	"log"
	"strings"
	"time"

	"github.com/zeromicro/go-zero/core/discov"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/leasekeeper/leasekeeper/contrib/gozero"
	"github.com/leasekeeper/leasekeeper/keeper/etcdtest"
)

// Register an address as go-zero's Publisher does, find it as go-zero's
// clients do, and drain it.
func ExampleRegister() {
	srv, err := etcdtest.StartTemp()
	if err != nil {
		log.Fatal(err)
	}
	defer srv.Close()

	c := discov.EtcdConf{Hosts: []string{strings.TrimPrefix(srv.Endpoint, "http://")}, Key: "greeter.rpc", ID: 7}
	r, err := gozero.Register(c, "127.0.0.1:9000", gozero.TTL(5*time.Second))
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(r.Key(), r.Value(), r.Keeper().State())

	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{srv.Endpoint}, Logger: zap.NewNop()})
	if err != nil {
		log.Fatal(err)
	}
	defer func() { _ = cli.Close() }()
	resp, err := cli.Get(context.Background(), "greeter.rpc/", clientv3.WithPrefix())
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%s = %s\n", resp.Kvs[0].Key, resp.Kvs[0].Value)

	if err := r.Drain(context.Background()); err != nil {
		log.Fatal(err)
	}
	fmt.Println(r.Keeper().State())
	// Output:
	// greeter.rpc/7 127.0.0.1:9000 healthy
	// greeter.rpc/7 = 127.0.0.1:9000
	// closed
}
