package main

import (
	"context"
	"fmt"
	"maps"
	"path"
	"slices"
	"strings"
	"sync"

	"google.golang.org/grpc"
)

// calls counts the gRPC requests a cost child's clients send, by method:
// unary calls, and the messages sent on streams (a keepalive is one
// message on a LeaseKeepAlive stream). It shows where a holder's bytes
// go.
type calls struct {
	mu sync.Mutex
	n  map[string]int64
}

func (c *calls) add(method string) {
	c.mu.Lock()
	if c.n == nil {
		c.n = map[string]int64{}
	}
	c.n[path.Base(method)]++
	c.mu.Unlock()
}

// snapshot returns the counts at this moment.
func (c *calls) snapshot() map[string]int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return maps.Clone(c.n)
}

// since formats the counts that grew from before to after.
func since(before, after map[string]int64) string {
	var parts []string
	for _, m := range slices.Sorted(maps.Keys(after)) {
		if d := after[m] - before[m]; d > 0 {
			parts = append(parts, fmt.Sprintf("%s=%d", m, d))
		}
	}
	return strings.Join(parts, " ")
}

// options returns the dial options that count into c.
func (c *calls) options() []grpc.DialOption {
	return []grpc.DialOption{
		grpc.WithChainUnaryInterceptor(func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
			c.add(method)
			return invoker(ctx, method, req, reply, cc, opts...)
		}),
		grpc.WithChainStreamInterceptor(func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
			c.add(method + ".open")
			s, err := streamer(ctx, desc, cc, method, opts...)
			if err != nil {
				return nil, err
			}
			return countingStream{s, c, method}, nil
		}),
	}
}

type countingStream struct {
	grpc.ClientStream
	c      *calls
	method string
}

func (s countingStream) SendMsg(m any) error {
	s.c.add(s.method)
	return s.ClientStream.SendMsg(m)
}

// perLease formats counts (since's form) per lease: "LeaseKeepAlive 17.5,
// LeaseTimeToLive 0.1"; ".open" is a stream opened. "none" if empty.
func perLease(counts string, leases int) string {
	var parts []string
	for _, f := range strings.Fields(counts) {
		m, n, ok := strings.Cut(f, "=")
		var v float64
		if _, err := fmt.Sscan(n, &v); !ok || err != nil {
			continue
		}
		name := m
		if base, open := strings.CutSuffix(m, ".open"); open {
			name = base + " streams opened"
		}
		parts = append(parts, fmt.Sprintf("%s %.2f", name, v/float64(leases)))
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ", ")
}
