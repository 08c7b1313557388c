// Package integration tests the keeper against real etcd processes under
// real faults: a fault proxy in front of each member, SIGSTOP and SIGKILL of
// members, and a second client acting behind the keeper's back. The
// machinery that builds and drives etcd with nothing installed is in
// internal/test/testbed.
//
// Run the suite and print its results table with:
//
//	go test -count=1 -v -run TestFaults ./integration/
package integration
