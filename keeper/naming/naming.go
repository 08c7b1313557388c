// Package naming registers a service instance in etcd's naming format, so
// that a gRPC client dialing "etcd:///<service>" through etcd's resolver
// (go.etcd.io/etcd/client/v3/naming/resolver) finds it:
//
//	key   <service>/<addr>
//	value the JSON of endpoints.Endpoint{Addr: addr, Metadata: metadata}
//
// The key is an ordinary key of the keeper's: written with the keeper's
// lease, healed after faults, written again on a new lease, restored when
// deleted behind the keeper's back, and deleted by Drain or Close.
//
// Do not attach naming keys to k.LeaseID() by hand, for instance with
// endpoints.Manager.AddEndpoint(..., clientv3.WithLease(k.LeaseID())): the
// keeper does not know such a key, so the first time it grants a new lease
// (after an outage longer than the TTL) the key goes with the old lease and
// nothing writes it back, while the keeper, whose own keys are all written,
// stays Healthy. Register it here instead.
package naming

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"

	"go.etcd.io/etcd/client/v3/naming/endpoints"

	lkerrors "github.com/leasekeeper/leasekeeper/errors"
	"github.com/leasekeeper/leasekeeper/keeper"
)

// Key returns the key of addr in service: "<service>/<addr>". The service
// is the path of the resolver's target: "etcd:///my-service" resolves
// "my-service".
func Key(service, addr string) string {
	return service + "/" + addr
}

// Value returns the value of addr with metadata: the JSON of
// endpoints.Endpoint. metadata may be nil, any value encoding/json
// encodes, or a json.RawMessage holding JSON already.
func Value(addr string, metadata any) (string, error) {
	b, err := json.Marshal(endpoints.Endpoint{Addr: addr, Metadata: metadata})
	if err != nil {
		return "", fmt.Errorf("naming: metadata of %s: %w: %w", addr, lkerrors.ErrInvalidArgument, err)
	}
	return string(b), nil
}

// Register registers addr as an instance of service with k, under the
// key's default policy (Restore). Calling it again with other metadata
// updates the instance in place: the key stays, its value changes, and
// resolvers see the new metadata at once. See keeper.Keeper.Register for
// when the key is written and what the error says.
func Register(ctx context.Context, k *keeper.Keeper, service, addr string, metadata any) error {
	if err := Check(service, addr); err != nil {
		return err
	}
	v, err := Value(addr, metadata)
	if err != nil {
		return err
	}
	return k.Register(ctx, Key(service, addr), v)
}

// Deregister removes addr from service: resolvers drop it at once. To stop
// an instance, prefer k.Drain, which deregisters every key and then lets
// the instance serve for a last while.
func Deregister(ctx context.Context, k *keeper.Keeper, service, addr string) error {
	if err := Check(service, addr); err != nil {
		return err
	}
	return k.Deregister(ctx, Key(service, addr))
}

// Check refuses what a resolver could not find: an empty service or
// address, a service that ends in "/", and an address with a "/" in it.
func Check(service, addr string) error {
	switch {
	case service == "" || strings.HasSuffix(service, "/"):
		return invalidf("naming: service %q: want a non-empty name without a trailing /", service)
	case addr == "" || strings.Contains(addr, "/"):
		return invalidf("naming: address %q: want host:port", addr)
	}
	return nil
}

func invalidf(format string, args ...any) error {
	return fmt.Errorf(format+": %w", append(args, lkerrors.ErrInvalidArgument)...)
}
