// Command pki writes a fresh CA and the certificates the compose file's TLS
// profile mounts: go run ./integration/cmd/pki -dir docker/tls
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/leasekeeper/leasekeeper/internal/test/testbed"
)

func main() {
	dir := flag.String("dir", "docker/tls", "directory to write the PEM files to")
	flag.Parse()
	if err := os.MkdirAll(*dir, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, "pki:", err)
		os.Exit(1)
	}
	p, err := testbed.WritePKI(*dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, "pki:", err)
		os.Exit(1)
	}
	fmt.Printf("wrote %s, %s, %s, %s, %s\n", p.CA, p.Server.CertFile, p.Server.KeyFile, p.Sidecar.CertFile, p.Sidecar.KeyFile)
}
