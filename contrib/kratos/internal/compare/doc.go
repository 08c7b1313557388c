// Package compare runs the adapter and kratos's own etcd registry
// (contrib/registry/etcd) through the same scenarios: a rolling restart,
// a key deleted behind the instance's back, and an etcd outage longer than
// kratos's registry survives. It is a module of its own, so that the
// adapter's module does not require kratos's registry.
package compare
