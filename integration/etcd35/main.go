// Command etcd35 is etcd's own server at v3.5, the oldest release line
// the Go module proxy serves, built by the integration tests when
// LEASEKEEPER_ETCD=3.5 so that the fault suite runs against a second etcd
// version as well as the one go.mod names. It is a module of its own, so
// that its older dependencies stay out of leasekeeper's.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
