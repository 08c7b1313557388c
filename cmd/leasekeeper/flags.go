package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"

	"github.com/leasekeeper/leasekeeper/keeper"
)

// PasswordEnv is the environment variable the password is read from.
const PasswordEnv = "LEASEKEEPER_PASSWORD"

// common are the flags every command takes.
type common struct {
	ttl        time.Duration
	healthAddr string
	logFormat  string
}

func (c *common) register(fs *flag.FlagSet, ttl time.Duration) {
	fs.DurationVar(&c.ttl, "ttl", ttl, "lease TTL")
	fs.StringVar(&c.healthAddr, "health-addr", "", "serve /healthz and /readyz on this address (host:port)")
	fs.StringVar(&c.logFormat, "log-format", "human", "output format: human or json")
}

func (c *common) validate() error {
	if c.logFormat != "human" && c.logFormat != "json" {
		return usagef("-log-format must be human or json, got %q", c.logFormat)
	}
	cfg := keeper.DefaultConfig()
	cfg.TTL = c.ttl
	if err := cfg.Validate(); err != nil {
		return usagef("-ttl: %v", err)
	}
	return nil
}

// clusterFlags say how to reach and authenticate to a real cluster.
type clusterFlags struct {
	endpoints    string
	dialTimeout  time.Duration
	cacert       string
	cert         string
	certKey      string
	user         string
	passwordFile string
}

func (c *clusterFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&c.endpoints, "endpoints", os.Getenv("LEASEKEEPER_ENDPOINTS"), "comma-separated etcd client URLs (env LEASEKEEPER_ENDPOINTS)")
	fs.DurationVar(&c.dialTimeout, "dial-timeout", 5*time.Second, "timeout of the first connection")
	fs.StringVar(&c.cacert, "cacert", "", "CA bundle to verify the servers (PEM file)")
	fs.StringVar(&c.cert, "cert", "", "client certificate (PEM file)")
	fs.StringVar(&c.certKey, "cert-key", "", "client certificate's private key (PEM file)")
	fs.StringVar(&c.user, "user", "", "etcd user; the password comes from $"+PasswordEnv+" or -password-file")
	fs.StringVar(&c.passwordFile, "password-file", "", "file holding the etcd user's password")
}

func (c *clusterFlags) validate() error {
	if strings.TrimSpace(c.endpoints) == "" {
		return usagef("-endpoints is required")
	}
	if (c.cert == "") != (c.certKey == "") {
		return usagef("-cert and -cert-key go together")
	}
	for _, f := range []struct{ flag, path string }{{"cacert", c.cacert}, {"cert", c.cert}, {"cert-key", c.certKey}, {"password-file", c.passwordFile}} {
		if f.path == "" {
			continue
		}
		if _, err := os.ReadFile(f.path); err != nil {
			return usagef("-%s: %v", f.flag, err)
		}
	}
	if c.passwordFile != "" && c.user == "" {
		return usagef("-password-file needs -user")
	}
	return nil
}

// tlsInfo returns the TLS settings, or nil when none were given.
func (c *clusterFlags) tlsInfo() *transport.TLSInfo {
	if c.cacert == "" && c.cert == "" {
		return nil
	}
	return &transport.TLSInfo{TrustedCAFile: c.cacert, CertFile: c.cert, KeyFile: c.certKey}
}

// password returns the user's password from the file or the environment.
func (c *clusterFlags) password() (string, error) {
	if c.passwordFile != "" {
		b, err := os.ReadFile(c.passwordFile)
		if err != nil {
			return "", err
		}
		return strings.TrimRight(string(b), "\r\n"), nil
	}
	return os.Getenv(PasswordEnv), nil
}

// parse parses args with fs, reporting mistakes as usage errors. A
// -password flag gets a pointed answer: passwords never go on the command
// line, where every user of the machine can read them.
func parse(fs *flag.FlagSet, args []string, stderr io.Writer) error {
	fs.SetOutput(stderr)
	for _, a := range args {
		if a == "--" {
			break
		}
		if name := strings.TrimLeft(strings.SplitN(a, "=", 2)[0], "-"); name == "password" && strings.HasPrefix(a, "-") {
			return usagef("no -password flag: set $%s or use -password-file", PasswordEnv)
		}
	}
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage of leasekeeper %s:\n", fs.Name())
		fs.PrintDefaults()
	}
	// The flag package prints its own message and the usage for a bad
	// flag; only the exit code remains to be set.
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return &usageError{msg: err.Error(), shown: true}
	}
	return nil
}
