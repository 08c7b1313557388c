package keeper_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/leasekeeper/leasekeeper/keeper"
	"github.com/leasekeeper/leasekeeper/keeper/etcdtest"
	"github.com/leasekeeper/leasekeeper/statemachine"
)

// exampleClient starts an embedded etcd for an example and returns a client
// and a function that stops both.
func exampleClient() (*clientv3.Client, func()) {
	srv, err := etcdtest.StartTemp()
	if err != nil {
		log.Fatal(err)
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{srv.Endpoint}, Logger: zap.NewNop()})
	if err != nil {
		log.Fatal(err)
	}
	return cli, func() {
		_ = cli.Close()
		srv.Close()
	}
}

// Register a service instance, keep it registered, and deregister it on
// shutdown.
func Example() {
	cli, stop := exampleClient()
	defer stop()
	ctx := context.Background()

	cfg := keeper.DefaultConfig()
	cfg.TTL = 5 * time.Second
	k, err := keeper.New(cli, cfg)
	if err != nil {
		log.Fatal(err)
	}
	if err := k.Register(ctx, "services/api/10.0.0.7", "10.0.0.7:8080"); err != nil {
		log.Fatal(err)
	}
	if err := k.Start(ctx); err != nil {
		log.Fatal(err)
	}
	fmt.Println("state:", k.State())

	resp, _ := cli.Get(ctx, "services/api/10.0.0.7")
	fmt.Println("registered with the keeper's lease:", clientv3.LeaseID(resp.Kvs[0].Lease) == k.LeaseID())

	if err := k.Close(ctx); err != nil {
		log.Fatal(err)
	}
	resp, _ = cli.Get(ctx, "services/api/10.0.0.7")
	fmt.Println("keys after Close:", len(resp.Kvs))
	fmt.Println("state:", k.State())
	// Output:
	// state: healthy
	// registered with the keeper's lease: true
	// keys after Close: 0
	// state: closed
}

// Stop accepting writes as soon as the registration is at risk, and resume
// when it is safe again.
func ExampleCallbacks() {
	cli, stop := exampleClient()
	defer stop()
	ctx := context.Background()

	writable := make(chan bool, 4)
	cfg := keeper.DefaultConfig()
	cfg.Callbacks = keeper.Callbacks{
		OnStopWrites:   func(statemachine.Transition) { writable <- false },
		OnResumeWrites: func(statemachine.Transition) { writable <- true },
		OnLost: func(t statemachine.Transition) {
			fmt.Println("registration lost:", t.Cause != nil)
		},
	}
	k, err := keeper.New(cli, cfg)
	if err != nil {
		log.Fatal(err)
	}
	if err := k.Start(ctx); err != nil {
		log.Fatal(err)
	}
	fmt.Println("writable:", <-writable)
	_ = k.Close(ctx)
	fmt.Println("writable:", <-writable)
	// Output:
	// writable: true
	// writable: false
}

// Validate reports inconsistent settings with their values.
func ExampleConfig_Validate() {
	cfg := keeper.DefaultConfig()
	cfg.TTL = 3 * time.Second
	cfg.RenewTimeout = 2 * time.Second
	fmt.Println(cfg.Validate())
	// Output:
	// keeper: renew timeout (2s) must be less than a third of the ttl (3s)
}

// Hold an exclusive key and pass its fencing token to the systems the
// holder writes to. A second keeper asking for the key is told who has it
// and waits its turn; it never overwrites the holder.
func ExampleKeeper_Token() {
	cli, stop := exampleClient()
	defer stop()
	ctx := context.Background()

	newKeeper := func() *keeper.Keeper {
		cfg := keeper.DefaultConfig()
		cfg.TTL = 5 * time.Second
		k, err := keeper.New(cli, cfg)
		if err != nil {
			log.Fatal(err)
		}
		if err := k.Register(ctx, "jobs/scheduler/leader", "node-1", keeper.WithPolicy(keeper.Exclusive)); err != nil {
			log.Fatal(err)
		}
		if err := k.Start(ctx); err != nil {
			log.Fatal(err)
		}
		return k
	}
	first := newKeeper()
	defer func() { _ = first.Close(ctx) }()
	second := newKeeper()
	defer func() { _ = second.Close(ctx) }()

	tok, err := first.Token("jobs/scheduler/leader")
	fmt.Println("first holds it:", err == nil, tok.Lease == first.LeaseID())
	_, err = second.Token("jobs/scheduler/leader")
	fmt.Println("second:", errors.Is(err, keeper.ErrKeyTaken))
	// Output:
	// first holds it: true true
	// second: true
}
