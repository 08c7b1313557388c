package kratos_test

import (
	"context"
	"fmt"
	"log"
	"time"

	"github.com/go-kratos/kratos/v2/registry"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/leasekeeper/leasekeeper/contrib/kratos"
	"github.com/leasekeeper/leasekeeper/keeper/etcdtest"
)

// Register an instance as kratos's App does, find it as kratos's resolver
// does, and deregister it with a drain.
func Example() {
	srv, err := etcdtest.StartTemp()
	if err != nil {
		log.Fatal(err)
	}
	defer srv.Close()
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{srv.Endpoint}, Logger: zap.NewNop()})
	if err != nil {
		log.Fatal(err)
	}
	defer func() { _ = cli.Close() }()
	ctx := context.Background()

	r, err := kratos.New(cli, kratos.TTL(5*time.Second), kratos.DrainDelay(100*time.Millisecond))
	if err != nil {
		log.Fatal(err)
	}
	si := &registry.ServiceInstance{ID: "greeter-1", Name: "greeter", Version: "v1",
		Endpoints: []string{"grpc://127.0.0.1:9000?isSecure=false"}}
	if err := r.Register(ctx, si); err != nil {
		log.Fatal(err)
	}
	fmt.Println("state:", r.Keeper().State())

	d, err := kratos.NewDiscovery(cli)
	if err != nil {
		log.Fatal(err)
	}
	ins, err := d.GetService(ctx, "greeter")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(ins[0].ID, ins[0].Endpoints)

	if err := r.Deregister(ctx, si); err != nil {
		log.Fatal(err)
	}
	fmt.Println("state:", r.Keeper().State())
	// Output:
	// state: healthy
	// greeter-1 [grpc://127.0.0.1:9000?isSecure=false]
	// state: closed
}
