// Package integration tests the keeper against real etcd processes under
// real faults: a fault proxy in front of each member, SIGSTOP and SIGKILL of
// members, and a second client acting behind the keeper's back. Its helpers
// (BuildEtcd, Cluster, Proxy) build and drive etcd with nothing installed.
//
// Run the suite and print its results table with:
//
//	go test -count=1 -v -run TestFaults ./integration/
package integration
