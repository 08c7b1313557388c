package testbed

import (
	"fmt"

	"github.com/leasekeeper/leasekeeper/internal/test/testpki"
)

// PKI are the files the compose file's TLS profile mounts at /tls.
type PKI struct {
	CA      string       // ca.pem: trusted by the members and the sidecar
	Server  testpki.Pair // server.pem, server-key.pem: every member, as server and peer
	Sidecar testpki.Pair // sidecar.pem, sidecar-key.pem: the sidecar's client certificate
}

// TLSHosts are the names the members answer to on the compose network.
var TLSHosts = []string{"etcd-tls1", "etcd-tls2", "etcd-tls3"}

// WritePKI makes a fresh CA and the certificates of the TLS profile in dir.
func WritePKI(dir string) (PKI, error) {
	ca, err := testpki.NewCA(dir, "ca")
	if err != nil {
		return PKI{}, err
	}
	p := PKI{CA: ca.CertFile}
	if p.Server, err = ca.Server("server", TLSHosts...); err != nil {
		return PKI{}, fmt.Errorf("server certificate: %w", err)
	}
	if p.Sidecar, err = ca.Client("sidecar"); err != nil {
		return PKI{}, fmt.Errorf("sidecar certificate: %w", err)
	}
	return p, nil
}
