package main

import (
	"context"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/leasekeeper/leasekeeper/internal/test/secureetcd"
)

// The tests in this file run the command against an etcd that requires
// client certificates, has auth on, and lets the user "svc" write under
// "svc/" only.

func startSecure(t *testing.T) *secureetcd.Cluster { return secureetcd.ForTest(t, "svc", "svc/") }

// secureArgs are the flags that reach c as its user, with the password
// left to the caller.
func secureArgs(c *secureetcd.Cluster, key string) []string {
	return []string{"run", "--endpoints", c.Endpoint, "--key", key, "--ttl", "3s", "--health-addr", "127.0.0.1:0",
		"--cacert", c.CA.CertFile, "--cert", c.Cert.CertFile, "--cert-key", c.Cert.KeyFile, "--user", c.User}
}

// secrets returns what must never be printed or served: the password and
// the private key, whole and line by line.
func secrets(t *testing.T, c *secureetcd.Cluster) []string {
	t.Helper()
	pem, err := os.ReadFile(c.Cert.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	out := []string{c.Password, string(pem)}
	for _, l := range strings.Split(string(pem), "\n") {
		if len(l) >= 16 && !strings.HasPrefix(l, "-----") {
			out = append(out, l)
		}
	}
	return out
}

func grepSecrets(t *testing.T, secrets []string, texts map[string]string) {
	t.Helper()
	for what, text := range texts {
		for _, s := range secrets {
			if strings.Contains(text, s) {
				t.Errorf("%s contains a secret (%.12s...):\n%s", what, s, text)
			}
		}
	}
}

// TestSecureRegistersAndLeaksNothing registers as a user limited to one
// prefix over mutual TLS, with the password from the environment and from
// a file, in both output formats, and greps every line printed and every
// page served for the password and the private key.
func TestSecureRegistersAndLeaksNothing(t *testing.T) {
	c := startSecure(t)
	file := filepath.Join(t.TempDir(), "password")
	if err := os.WriteFile(file, []byte(c.Password+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		env  []string
		args []string
	}{
		{"password from the environment, human", []string{PasswordEnv + "=" + c.Password}, nil},
		{"password from a file, json", nil, []string{"--password-file", file, "--log-format", "json"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := start(t, tc.env, append(secureArgs(c, "svc/pw"), tc.args...)...)
			addr := p.waitLine(`health endpoints.*addr[=":]+([0-9.:]+)`, 20*time.Second)[1]
			p.waitLine(`registered`, 20*time.Second)
			if !hasKey(t, c.Root(), "svc/pw") {
				t.Errorf("svc/pw not in etcd after registered")
			}
			served := map[string]string{}
			for _, path := range []string{"/healthz", "/readyz", "/metrics"} {
				_, body := get(t, "http://"+addr+path)
				served[path] = string(body)
			}
			_ = p.cmd.Process.Signal(syscall.SIGTERM)
			if code := p.wait(10 * time.Second); code != 0 {
				t.Errorf("exit code = %d, want 0; stderr:\n%s", code, p.stderr.String())
			}
			served["stdout"], served["stderr"] = p.output(), p.stderr.String()
			grepSecrets(t, secrets(t, c), served)
		})
	}
}

// TestSecureWrongPassword: the command stops at once with a classified
// error and never repeats the password it was given.
func TestSecureWrongPassword(t *testing.T) {
	c := startSecure(t)
	const wrong = "wrong-Pa55word-0123456789"
	began := time.Now()
	p := start(t, []string{PasswordEnv + "=" + wrong}, secureArgs(c, "svc/pw")...)
	if code := p.wait(20 * time.Second); code != 1 {
		t.Errorf("exit code = %d, want 1", code)
	}
	if !strings.Contains(p.stderr.String(), "permission denied") {
		t.Errorf("stderr = %q, want it to say permission denied", p.stderr.String())
	}
	t.Logf("exited after %v: %s", time.Since(began).Round(time.Millisecond), strings.TrimSpace(p.stderr.String()))
	grepSecrets(t, append(secrets(t, c), wrong), map[string]string{"stdout": p.output(), "stderr": p.stderr.String()})
}

// TestSecurePermissionRevoked: /readyz turns 503 with the kind "permission
// denied" when the role loses its permission, and 200 again by itself once
// it is granted back.
func TestSecurePermissionRevoked(t *testing.T) {
	c := startSecure(t)
	p := start(t, []string{PasswordEnv + "=" + c.Password}, secureArgs(c, "svc/perm")...)
	addr := p.waitLine(`health endpoints\s+addr=(\S+)`, 20*time.Second)[1]
	p.waitLine(`registered`, 20*time.Second)
	ctx := context.Background()
	if err := c.Revoke(ctx); err != nil {
		t.Fatal(err)
	}
	waitReadyz(t, addr, http.StatusServiceUnavailable, "permission denied", 10*time.Second)
	if err := c.Grant(ctx); err != nil {
		t.Fatal(err)
	}
	// The keeper retries at most once per backoff cap (5s by default).
	waitReadyz(t, addr, http.StatusOK, "", 15*time.Second)
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	if code := p.wait(10 * time.Second); code != 0 {
		t.Errorf("exit code = %d, want 0", code)
	}
	grepSecrets(t, secrets(t, c), map[string]string{"stdout": p.output(), "stderr": p.stderr.String()})
}

// waitReadyz polls /readyz until it answers code (and kind as its
// last_error_kind, when kind is set).
func waitReadyz(t *testing.T, addr string, code int, kind string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var got int
	var h map[string]any
	for time.Now().Before(deadline) {
		var body []byte
		got, body = get(t, "http://"+addr+"/readyz")
		h = nil
		_ = json.Unmarshal(body, &h)
		if got == code && (kind == "" || h["last_error_kind"] == kind) {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("/readyz = %d %v after %v, want %d %q", got, h, timeout, code, kind)
}
