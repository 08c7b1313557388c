// Package testbed is the test machinery the project's tests and its
// benchmark and soak commands share: it builds etcd's own server, runs
// etcd processes on loopback with a fault proxy in front of each member
// (BuildEtcd, StartCluster, Proxy), drives the compose cluster (Compose),
// and makes certificates for it (WritePKI). It is not part of the public
// API.
package testbed
