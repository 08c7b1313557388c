package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"

	"github.com/leasekeeper/leasekeeper/internal/sidecar"
	"github.com/leasekeeper/leasekeeper/keeper"
	"github.com/leasekeeper/leasekeeper/keeper/naming"
)

// PasswordEnv is the environment variable the password is read from.
const PasswordEnv = "LEASEKEEPER_PASSWORD"

// common are the flags every command that holds a key takes.
type common struct {
	ttl        time.Duration
	healthAddr string
	logFormat  string
	drainDelay time.Duration
	watchKeys  bool
}

func (c *common) register(fs *flag.FlagSet, ttl time.Duration) {
	fs.DurationVar(&c.ttl, "ttl", ttl, "lease TTL")
	fs.StringVar(&c.healthAddr, "health-addr", "", "serve /healthz and /readyz on this address (host:port)")
	fs.StringVar(&c.logFormat, "log-format", "human", "output format: human or json")
	fs.BoolVar(&c.watchKeys, "watch-keys", false, "watch the key and write it back at once when it is deleted or overwritten behind the sidecar's back")
	fs.DurationVar(&c.drainDelay, "drain-delay", time.Second,
		"on SIGTERM, SIGINT or SIGHUP: how long to keep serving, deregistered, before the command is signalled")
}

func (c *common) validate() error {
	if c.logFormat != "human" && c.logFormat != "json" {
		return usagef("-log-format must be human or json, got %q", c.logFormat)
	}
	if c.drainDelay < 0 {
		return usagef("-drain-delay must not be negative, got %v", c.drainDelay)
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
		if fs.Name() == localName {
			fmt.Fprintf(fs.Output(), "%s\nflags of leasekeeper with no command:\n", topUsage)
		} else {
			fmt.Fprintf(fs.Output(), "usage of leasekeeper %s:\n", fs.Name())
		}
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

// instanceFlags say what "run" registers: a key and value, or an instance
// of a service in etcd's naming format, and when the command is ready.
type instanceFlags struct {
	key, value    string
	service, addr string
	metadata      string
	killTimeout   time.Duration
	readyTCP      string
	readyHTTP     string
	readyEvery    time.Duration
	readyFailures int
}

func (f *instanceFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.key, "key", "", "key to register (or -service and -addr)")
	fs.StringVar(&f.value, "value", "", "value of the key")
	fs.StringVar(&f.service, "service", "", "register an instance of this service in etcd's naming format, found by gRPC clients dialing etcd:///SERVICE")
	fs.StringVar(&f.addr, "addr", "", "with -service: the instance's address, host:port")
	fs.StringVar(&f.metadata, "metadata", "", "with -service: the instance's metadata, as JSON")
	fs.DurationVar(&f.killTimeout, "kill-timeout", 10*time.Second, "how long the command has to exit after the forwarded signal before SIGKILL")
	fs.StringVar(&f.readyTCP, "ready-tcp", "", "register only while a TCP connection to this host:port opens")
	fs.StringVar(&f.readyHTTP, "ready-http", "", "register only while a GET of this URL answers 2xx")
	fs.DurationVar(&f.readyEvery, "ready-interval", 500*time.Millisecond, "how often the readiness check runs, and its timeout")
	fs.IntVar(&f.readyFailures, "ready-failures", 3, "failed readiness checks in a row that deregister the key")
}

// resolve checks the flags and returns the key and value to register.
func (f *instanceFlags) resolve() (key, value string, err error) {
	switch {
	case f.key != "" && f.service != "":
		return "", "", usagef("-key and -service exclude each other")
	case f.key == "" && f.service == "":
		return "", "", usagef("-key is required (or -service and -addr)")
	case f.service == "" && (f.addr != "" || f.metadata != ""):
		return "", "", usagef("-addr and -metadata need -service")
	case f.service != "" && f.value != "":
		return "", "", usagef("-value goes with -key; with -service use -metadata")
	case f.readyTCP != "" && f.readyHTTP != "":
		return "", "", usagef("-ready-tcp and -ready-http exclude each other")
	case f.killTimeout <= 0:
		return "", "", usagef("-kill-timeout must be positive, got %v", f.killTimeout)
	case f.readyEvery <= 0:
		return "", "", usagef("-ready-interval must be positive, got %v", f.readyEvery)
	case f.readyFailures < 1:
		return "", "", usagef("-ready-failures must be at least 1, got %d", f.readyFailures)
	}
	if f.key != "" {
		return f.key, f.value, nil
	}
	if f.addr == "" {
		return "", "", usagef("-service needs -addr")
	}
	var md any
	if f.metadata != "" {
		if !json.Valid([]byte(f.metadata)) {
			return "", "", usagef("-metadata is not valid JSON: %q", f.metadata)
		}
		md = json.RawMessage(f.metadata)
	}
	value, err = naming.Value(f.addr, md)
	if err == nil {
		err = naming.Check(f.service, f.addr)
	}
	if err != nil {
		return "", "", usagef("%v", err)
	}
	return naming.Key(f.service, f.addr), value, nil
}

// ready returns the readiness check the flags ask for, or nil.
func (f *instanceFlags) ready() func(context.Context) error {
	switch {
	case f.readyTCP != "":
		return sidecar.TCPReady(f.readyTCP)
	case f.readyHTTP != "":
		return sidecar.HTTPReady(f.readyHTTP)
	}
	return nil
}
