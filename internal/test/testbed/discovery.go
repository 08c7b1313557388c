package testbed

import (
	"context"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/naming/resolver"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/leasekeeper/leasekeeper/keeper"
	"github.com/leasekeeper/leasekeeper/keeper/grpchealth"
	"github.com/leasekeeper/leasekeeper/keeper/naming"
)

// Instance is a gRPC server (the health service, whose Check is the call
// the discovery tests make) registered in etcd's naming format by a keeper
// of its own, its health kept by grpchealth's default mapping.
type Instance struct {
	Addr   string
	Server *grpc.Server
	Keeper *keeper.Keeper
	// Calls counts the calls it served.
	Calls atomic.Int64

	cli *clientv3.Client
}

// StartInstance serves on addr ("127.0.0.1:0" for any port) and registers
// the instance as one of service, with a lease of ttl, through endpoints.
// It returns once the keeper is healthy.
func StartInstance(endpoints []string, addr, service string, ttl time.Duration) (*Instance, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	in := &Instance{Addr: ln.Addr().String()}
	hs := health.NewServer()
	in.Server = grpc.NewServer(grpc.UnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		in.Calls.Add(1)
		return h(ctx, req)
	}))
	healthpb.RegisterHealthServer(in.Server, hs)
	go func() { _ = in.Server.Serve(ln) }()
	if in.cli, err = clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: 5 * time.Second, Logger: zap.NewNop()}); err != nil {
		in.Server.Stop()
		return nil, err
	}
	cfg := keeper.DefaultConfig()
	cfg.TTL = ttl
	cfg.WatchKeys = true // the tests delete an instance's key behind its back
	cfg.Observers = []keeper.Observer{grpchealth.New(hs, "")}
	if in.Keeper, err = keeper.New(in.cli, cfg); err != nil {
		in.Close()
		return nil, err
	}
	ctx := context.Background()
	if err := naming.Register(ctx, in.Keeper, service, in.Addr, map[string]string{"addr": in.Addr}); err != nil {
		in.Close()
		return nil, err
	}
	if err := in.Keeper.Start(ctx); err != nil {
		in.Close()
		return nil, err
	}
	return in, nil
}

// Close closes the keeper (if Drain did not), stops the server and closes
// the client.
func (in *Instance) Close() {
	if in.Keeper != nil {
		_ = in.Keeper.Close(context.Background())
	}
	in.Server.Stop()
	_ = in.cli.Close()
}

// Caller calls Health/Check every few milliseconds through etcd's resolver
// with round_robin, and counts the calls that succeed and fail.
type Caller struct {
	OK, Failed atomic.Int64

	cli  *clientv3.Client
	conn *grpc.ClientConn
	stop context.CancelFunc
	wg   sync.WaitGroup

	mu     sync.Mutex
	errs   []string    // the first few failures, for a test's log
	failAt []time.Time // when each call failed
}

// StartCaller dials etcd:///service through endpoints and calls every
// every. With healthCheck the client also watches each instance's health
// and skips those NOT_SERVING. Its etcd client, which etcd's resolver
// watches through, reconnects within a second (ShortReconnect): after an
// outage the resolver then hears of changes at once, instead of after
// gRPC's reconnect backoff, which is the client's business, not the
// keeper's.
func StartCaller(endpoints []string, service string, every time.Duration, healthCheck bool) (*Caller, error) {
	cli, err := clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: 5 * time.Second, Logger: zap.NewNop(),
		DialOptions: []grpc.DialOption{ShortReconnect}})
	if err != nil {
		return nil, err
	}
	b, err := resolver.NewBuilder(cli)
	if err != nil {
		_ = cli.Close()
		return nil, err
	}
	sc := `{"loadBalancingConfig":[{"round_robin":{}}]}`
	if healthCheck {
		sc = `{"loadBalancingConfig":[{"round_robin":{}}],"healthCheckConfig":{"serviceName":""}}`
	}
	conn, err := grpc.NewClient("etcd:///"+service, grpc.WithResolvers(b),
		grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithDefaultServiceConfig(sc))
	if err != nil {
		_ = cli.Close()
		return nil, err
	}
	c := CallHealth(conn, every, false)
	c.cli = cli
	return c, nil
}

// CallHealth calls Health/Check on conn every every, and counts the calls
// that succeed and fail; with serving, an answer other than SERVING fails
// too. Close closes conn.
func CallHealth(conn *grpc.ClientConn, every time.Duration, serving bool) *Caller {
	ctx, stop := context.WithCancel(context.Background())
	c := &Caller{conn: conn, stop: stop}
	hc := healthpb.NewHealthClient(conn)
	c.wg.Go(func() {
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			cctx, cancel := context.WithTimeout(ctx, time.Second)
			resp, err := hc.Check(cctx, &healthpb.HealthCheckRequest{})
			cancel()
			switch {
			case ctx.Err() != nil:
			case err != nil:
				c.fail(err)
			case serving && resp.GetStatus() != healthpb.HealthCheckResponse_SERVING:
				c.fail(fmt.Errorf("answered %v", resp.GetStatus()))
			default:
				c.OK.Add(1)
			}
		}
	})
	return c
}

func (c *Caller) fail(err error) {
	c.Failed.Add(1)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.failAt = append(c.failAt, time.Now())
	if len(c.errs) < 5 {
		c.errs = append(c.errs, time.Now().Format("15:04:05.000")+" "+err.Error())
	}
}

// Close stops calling and closes the connections.
func (c *Caller) Close() {
	c.stop()
	c.wg.Wait()
	_ = c.conn.Close()
	if c.cli != nil {
		_ = c.cli.Close()
	}
}

// FailedSince returns when the calls that failed at or after since failed.
func (c *Caller) FailedSince(since time.Time) []time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	var at []time.Time
	for _, t := range c.failAt {
		if !t.Before(since) {
			at = append(at, t)
		}
	}
	return at
}

// Failures returns the first few failures, one a line.
func (c *Caller) Failures() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return strings.Join(c.errs, "\n")
}
