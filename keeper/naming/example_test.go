package naming_test

import (
	"context"
	"fmt"
	"log"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/naming/endpoints"
	"go.uber.org/zap"

	"github.com/leasekeeper/leasekeeper/keeper"
	"github.com/leasekeeper/leasekeeper/keeper/etcdtest"
	"github.com/leasekeeper/leasekeeper/keeper/naming"
)

// Register an instance for etcd's resolver, update its metadata, and drain
// it before stopping.
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

	k, err := keeper.New(cli, keeper.DefaultConfig())
	if err != nil {
		log.Fatal(err)
	}
	if err := naming.Register(ctx, k, "my-service", "10.0.0.7:8080", map[string]string{"zone": "a"}); err != nil {
		log.Fatal(err)
	}
	if err := k.Start(ctx); err != nil {
		log.Fatal(err)
	}
	// What etcd's resolver sees for etcd:///my-service.
	em, err := endpoints.NewManager(cli, "my-service")
	if err != nil {
		log.Fatal(err)
	}
	show := func() {
		eps, err := em.List(ctx)
		if err != nil {
			log.Fatal(err)
		}
		fmt.Println(len(eps), "instance(s)", eps["my-service/10.0.0.7:8080"].Metadata)
	}
	show()
	// New metadata: register again.
	if err := naming.Register(ctx, k, "my-service", "10.0.0.7:8080", map[string]string{"zone": "b"}); err != nil {
		log.Fatal(err)
	}
	show()
	// A planned shutdown: deregistered at once, then a last while of
	// serving, then the server's stop, then the revoke.
	if err := k.Drain(ctx, 100*time.Millisecond, func() { fmt.Println("stopping the server") }); err != nil {
		log.Fatal(err)
	}
	show()
	fmt.Println("state:", k.State())
	// Output:
	// 1 instance(s) map[zone:a]
	// 1 instance(s) map[zone:b]
	// stopping the server
	// 0 instance(s) <nil>
	// state: closed
}
