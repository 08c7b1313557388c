package integration

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"testing"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/leasekeeper/leasekeeper/internal/test/freeport"
	"github.com/leasekeeper/leasekeeper/internal/test/testbed"
	"github.com/leasekeeper/leasekeeper/internal/test/testpki"
)

// TestDockerTLS runs the compose file's "tls" profile: three members that
// require client certificates from the cluster's CA, peers included, and
// the sidecar holding its key there with its own certificate.
func TestDockerTLS(t *testing.T) {
	dockerPreflight(t)
	dir := t.TempDir()
	pki, err := testbed.WritePKI(dir)
	if err != nil {
		t.Fatal(err)
	}
	ports, err := freeport.Get(4)
	if err != nil {
		t.Fatal(err)
	}
	env := []string{
		"LK_TLS_DIR=" + dir, "LK_SIDECAR_TTL=" + ttlDocker.String(),
		fmt.Sprintf("LK_ETCDTLS1_PORT=%d", ports[0]), fmt.Sprintf("LK_ETCDTLS2_PORT=%d", ports[1]),
		fmt.Sprintf("LK_ETCDTLS3_PORT=%d", ports[2]), fmt.Sprintf("LK_TLS_HEALTH_PORT=%d", ports[3]),
	}
	c, err := testbed.NewCompose(moduleRoot, fmt.Sprintf("lkit%dtls", os.Getpid()), env)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if _, err := c.Run("--profile", "tls", "down", "-v", "--remove-orphans", "-t", "2"); err != nil {
			t.Errorf("compose down: %v", err)
		}
	})
	if _, err := c.Run("--profile", "tls", "up", "-d", "sidecar-tls"); err != nil {
		t.Fatal(err)
	}
	var endpoints []string
	for _, p := range ports[:3] {
		endpoints = append(endpoints, fmt.Sprintf("https://127.0.0.1:%d", p))
	}
	connect := func(pair testpki.Pair) (*clientv3.Client, error) {
		tc, err := (&transport.TLSInfo{TrustedCAFile: pki.CA, CertFile: pair.CertFile, KeyFile: pair.KeyFile}).ClientConfig()
		if err != nil {
			return nil, err
		}
		return clientv3.New(clientv3.Config{Endpoints: endpoints, TLS: tc, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	}

	health := fmt.Sprintf("http://127.0.0.1:%d/readyz", ports[3])
	deadline := time.Now().Add(60 * time.Second)
	for {
		resp, err := (&http.Client{Timeout: 2 * time.Second}).Get(health)
		if err == nil {
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			out, _ := c.Run("--profile", "tls", "logs", "--no-color", "sidecar-tls")
			t.Fatalf("TLS sidecar not ready after 60s; its log:\n%s", out)
		}
		time.Sleep(200 * time.Millisecond)
	}

	cli, err := connect(pki.Sidecar)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cli.Close() }()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := cli.Get(ctx, "services/demo/sidecar-tls")
	if err != nil {
		t.Fatalf("get over TLS: %v", err)
	}
	if len(resp.Kvs) != 1 || resp.Kvs[0].Lease == 0 {
		t.Fatalf("services/demo/sidecar-tls = %v, want one key on a lease", resp.Kvs)
	}

	// Without a client certificate the members refuse the client.
	bare, err := connect(testpki.Pair{})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = bare.Close() }()
	ctx, cancel = context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if _, err := bare.Get(ctx, "services/demo/sidecar-tls"); err == nil {
		t.Errorf("a client without a certificate read the cluster")
	}
	t.Logf("sidecar registered over mutual TLS on lease %x; a client without a certificate was refused", resp.Kvs[0].Lease)
}
