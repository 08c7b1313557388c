// Package kratos registers kratos services through a leasekeeper keeper: a
// registry.Registrar that drops into kratos.New(kratos.Registrar(r)), and a
// registry.Discovery for the clients.
//
// The keys and values are those of kratos's own etcd registry
// (contrib/registry/etcd): the key is <namespace>/<name>/<id>, namespace
// "/microservices" by default, and the value is the JSON of the
// registry.ServiceInstance. A service can switch its registrar without
// touching its clients, and the clients can switch their discovery without
// touching the services.
//
// What changes is what happens after a fault. The keeper renews the lease,
// re-renews it after an outage if the server kept it, or grants a new one
// and writes the key again, however long the outage lasted; it puts back a
// key deleted behind its back, under the same name. Deregister drains: the
// key goes first, so that clients stop picking the instance, then the
// registrar waits (DrainDelay) while kratos still serves, then it revokes
// the lease. The keeper stays within reach (Registrar.Keeper): its state,
// its callbacks, the write gate (keeper/gate) and the gRPC health adapter
// (keeper/grpchealth).
//
// The Discovery keeps its last list of instances through an etcd outage:
// a watcher never hands the resolver an empty list because of an error. It
// lists the instances under <namespace>/<name>/, so that a service whose
// name starts with another's is not listed with it.
package kratos
