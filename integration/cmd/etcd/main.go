// Command etcd is etcd's own server at the version in go.mod, built by the
// integration tests so that they need nothing installed.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
