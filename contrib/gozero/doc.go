// Package gozero registers go-zero rpc servers through a leasekeeper keeper
// instead of go-zero's own discov.Publisher.
//
// The key is <key>/<id> and the value the server's address, as the
// Publisher writes them with discov.WithId: go-zero clients dialing
// etcd:///<hosts>?key=<key> (zrpc.RpcClientConf's Etcd), and
// discov.NewSubscriber, find the server unchanged. The id is EtcdConf.ID
// when set, else drawn once per Registration: it stays the same across
// re-grants, so that an etcd outage never leaves a second key behind, where
// the Publisher, keyed by its lease ID, re-registers under a new one. The
// address follows zrpc's rules: a listen address with no host, or 0.0.0.0,
// is registered with the POD_IP environment variable, else the machine's
// internal IP.
//
// The keeper renews the lease, heals the registration after an outage of
// any length, puts back a key deleted behind its back, and tells the
// service when the registration is at risk (Registration.Keeper: its state,
// callbacks, the write gate and the gRPC health adapter). On SIGTERM or
// SIGINT, go-zero's proc package runs its wrap-up listeners a second
// before it stops the servers: the Registration drains there, deleting its
// key first, so that clients stop picking the server while it still
// serves, and revoking the lease once the drain delay is over.
//
// go-zero's client dials etcd with RejectOldCluster, and etcd's client
// v3.7 refuses servers older than 3.6: run etcd 3.6 or later. The tests
// run against etcd 3.7.
package gozero
