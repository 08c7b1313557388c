// Package secureetcd starts an embedded etcd the way production clusters
// run, for tests: clients must present a certificate from the cluster's CA
// (mutual TLS), auth is on, and one user's role may read and write a single
// key prefix. Password hashes use bcrypt's lowest cost, so that tests
// under the race detector do not spend seconds authenticating. The CA, the certificates and the passwords are made at run
// time; nothing secret is kept in the repository.
package secureetcd

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"golang.org/x/crypto/bcrypt"

	"github.com/leasekeeper/leasekeeper/internal/embedetcd"
	"github.com/leasekeeper/leasekeeper/internal/test/testpki"
)

// Cluster is a running secure etcd and the identities made for it.
type Cluster struct {
	// Endpoint is the https client URL.
	Endpoint string
	// CA issued the server's and the clients' certificates.
	CA *testpki.CA
	// User may read and write keys under Prefix only, through Role; Cert is
	// a client certificate whose common name is User, so etcd also takes
	// it as User when no password is given.
	User, Password, Prefix, Role string
	Cert                         testpki.Pair
	// RootCert is a client certificate for the root user.
	RootCert testpki.Pair

	dir  string
	srv  *embedetcd.Server
	root *clientv3.Client
}

// timeout bounds the start and every administrative request.
const timeout = 30 * time.Second

// Start starts the cluster with its data and certificates in dir, enables
// auth through the client API and makes User with a role limited to prefix.
func Start(dir, user, prefix string) (*Cluster, error) {
	ca, err := testpki.NewCA(dir, "ca")
	if err != nil {
		return nil, err
	}
	server, err := ca.Server("server")
	if err != nil {
		return nil, err
	}
	c := &Cluster{CA: ca, User: user, Prefix: prefix, Role: user + "-role", Password: secret(), dir: dir}
	if c.Cert, err = ca.Client(user); err != nil {
		return nil, err
	}
	if c.RootCert, err = ca.Client("root"); err != nil {
		return nil, err
	}
	c.srv, err = embedetcd.StartWith(filepath.Join(dir, "data"), timeout, embedetcd.Options{ClientTLS: &transport.TLSInfo{
		CertFile: server.CertFile, KeyFile: server.KeyFile, TrustedCAFile: ca.CertFile, ClientCertAuth: true,
	}, BcryptCost: uint(bcrypt.MinCost)})
	if err != nil {
		return nil, err
	}
	c.Endpoint = c.srv.Endpoint
	if err := c.enableAuth(); err != nil {
		c.Stop()
		return nil, err
	}
	return c, nil
}

// ForTest starts a cluster for t in a directory of its own, stopped when t
// ends; it fails t if the cluster does not start.
func ForTest(t testing.TB, user, prefix string) *Cluster {
	t.Helper()
	c, err := Start(t.TempDir(), user, prefix)
	if err != nil {
		t.Fatalf("secure etcd: %v", err)
	}
	t.Cleanup(c.Stop)
	return c
}

// enableAuth makes root and User, then turns auth on. Once it is on, the
// root client authenticates by its certificate's common name.
func (c *Cluster) enableAuth() error {
	root, err := c.Connect("", "", c.RootCert)
	if err != nil {
		return err
	}
	c.root = root
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	steps := []func() error{
		func() error { _, err := root.RoleAdd(ctx, "root"); return err },
		func() error { _, err := root.UserAdd(ctx, "root", secret()); return err },
		func() error { _, err := root.UserGrantRole(ctx, "root", "root"); return err },
		func() error { _, err := root.RoleAdd(ctx, c.Role); return err },
		func() error { return c.Grant(ctx) },
		func() error { _, err := root.UserAdd(ctx, c.User, c.Password); return err },
		func() error { _, err := root.UserGrantRole(ctx, c.User, c.Role); return err },
		func() error { _, err := root.AuthEnable(ctx); return err },
	}
	for i, step := range steps {
		if err := step(); err != nil {
			return fmt.Errorf("secureetcd: enable auth, step %d: %w", i+1, err)
		}
	}
	return nil
}

// TLS returns a client TLS configuration that trusts the CA and presents
// pair, or no certificate when pair is zero.
func (c *Cluster) TLS(pair testpki.Pair) (*tls.Config, error) {
	return c.TLSWith(c.CA.CertFile, pair)
}

// TLSWith is TLS with another CA bundle to verify the server by.
func (c *Cluster) TLSWith(caFile string, pair testpki.Pair) (*tls.Config, error) {
	info := transport.TLSInfo{TrustedCAFile: caFile, CertFile: pair.CertFile, KeyFile: pair.KeyFile}
	return info.ClientConfig()
}

// Connect returns a client presenting pair, as user with password when
// user is not empty.
func (c *Cluster) Connect(user, password string, pair testpki.Pair) (*clientv3.Client, error) {
	tc, err := c.TLS(pair)
	if err != nil {
		return nil, err
	}
	return clientv3.New(clientv3.Config{
		Endpoints: []string{c.Endpoint}, TLS: tc, Username: user, Password: password,
		DialTimeout: 5 * time.Second, Logger: zap.NewNop(),
	})
}

// Root returns the administrator's client; the cluster closes it.
func (c *Cluster) Root() *clientv3.Client { return c.root }

// Revoke takes the role's permission on the prefix away.
func (c *Cluster) Revoke(ctx context.Context) error {
	_, err := c.root.RoleRevokePermission(ctx, c.Role, c.Prefix, clientv3.GetPrefixRangeEnd(c.Prefix))
	return err
}

// Grant gives the role read and write permission on the prefix.
func (c *Cluster) Grant(ctx context.Context) error {
	_, err := c.root.RoleGrantPermission(ctx, c.Role, c.Prefix, clientv3.GetPrefixRangeEnd(c.Prefix),
		clientv3.PermissionType(clientv3.PermReadWrite))
	return err
}

// ChangePassword gives User a new password; clients holding a token for
// the old one must authenticate again.
func (c *Cluster) ChangePassword(ctx context.Context) error {
	c.Password = secret()
	_, err := c.root.UserChangePassword(ctx, c.User, c.Password)
	return err
}

// Stop closes the root client and stops the server.
func (c *Cluster) Stop() {
	if c.root != nil {
		_ = c.root.Close()
		c.root = nil
	}
	c.srv.Stop()
}

// secret returns a fresh random password.
func secret() string {
	b := make([]byte, 12)
	_, _ = rand.Read(b)
	return "pw-" + hex.EncodeToString(b)
}
