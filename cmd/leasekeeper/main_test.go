package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/leasekeeper/leasekeeper/internal/embedetcd"
	"github.com/leasekeeper/leasekeeper/internal/test/testpki"
)

func TestDemoShowsOutageAndRecovery(t *testing.T) {
	began := time.Now()
	p := start(t, nil, "demo")
	if code := p.wait(60 * time.Second); code != 0 {
		t.Fatalf("demo exit code = %d, want 0; output:\n%s\nstderr:\n%s", code, p.output(), p.stderr.String())
	}
	out := p.output()
	for _, want := range []string{"idle -> healthy", "healthy -> degraded", "degraded -> failed", "failed -> healthy",
		"key back: yes", "path: idle -> healthy -> degraded -> failed -> healthy", "demo passed"} {
		if !strings.Contains(out, want) {
			t.Errorf("demo output lacks %q:\n%s", want, out)
		}
	}
	t.Logf("demo took %v", time.Since(began).Round(time.Millisecond))
}

func TestRunHoldsKeyUntilSIGTERM(t *testing.T) {
	_, cli := etcdServer(t)
	p := start(t, nil, "run", "--endpoints", cli.Endpoints()[0], "--key", "svc/run", "--value", "v", "--ttl", "3s")
	p.waitLine(`registered\s+key=svc/run`, 20*time.Second)
	if !hasKey(t, cli, "svc/run") {
		t.Fatalf("svc/run absent while the sidecar runs")
	}
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := p.wait(10 * time.Second); code != 0 {
		t.Errorf("exit code after SIGTERM = %d, want 0; stderr:\n%s", code, p.stderr.String())
	}
	if hasKey(t, cli, "svc/run") {
		t.Errorf("svc/run present after the sidecar exited, want deleted at once")
	}
}

// TestRunWatchKeys: with -watch-keys the sidecar writes its key back the
// moment it is deleted behind its back; without, it leaves it deleted.
func TestRunWatchKeys(t *testing.T) {
	_, cli := etcdServer(t)
	for _, watch := range []bool{true, false} {
		key := fmt.Sprintf("svc/watch-%v", watch)
		args := []string{"run", "--endpoints", cli.Endpoints()[0], "--key", key, "--value", "v", "--ttl", "3s"}
		if watch {
			args = append(args, "-watch-keys")
		}
		p := start(t, nil, args...)
		p.waitLine(`registered\s+key=`+key, 20*time.Second)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		wch := cli.Watch(ctx, key)
		_, err := cli.Delete(ctx, key)
		if err != nil {
			t.Fatal(err)
		}
		back := false
	events:
		for wr := range wch {
			for _, ev := range wr.Events {
				if ev.Type == clientv3.EventTypePut {
					back = true
					break events
				}
			}
		}
		cancel()
		if back != watch {
			t.Errorf("-watch-keys=%v: key written back within 5s: %v", watch, back)
		}
		if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		if code := p.wait(10 * time.Second); code != 0 {
			t.Errorf("exit code after SIGTERM = %d, want 0; stderr:\n%s", code, p.stderr.String())
		}
	}
}

func TestRunPassesChildExitCode(t *testing.T) {
	_, cli := etcdServer(t)
	// The child waits for a line on its stdin, so the test decides when it
	// exits.
	p := start(t, nil, "run", "--endpoints", cli.Endpoints()[0], "--key", "svc/child", "--ttl", "3s",
		"--", "sh", "-c", "read line; exit 7")
	p.waitLine(`registered\s+key=svc/child`, 20*time.Second)
	if !hasKey(t, cli, "svc/child") {
		t.Fatalf("svc/child absent while the child runs")
	}
	if _, err := p.stdin.Write([]byte("go\n")); err != nil {
		t.Fatal(err)
	}
	if code := p.wait(10 * time.Second); code != 7 {
		t.Errorf("exit code = %d, want the child's 7; output:\n%s", code, p.output())
	}
	if hasKey(t, cli, "svc/child") {
		t.Errorf("svc/child present after the child exited, want deregistered")
	}
}

func TestReadyzFlipsDuringOutage(t *testing.T) {
	srv, cli := etcdServer(t)
	p := start(t, nil, "run", "--endpoints", cli.Endpoints()[0], "--key", "svc/ready", "--ttl", "3s",
		"--health-addr", "127.0.0.1:0")
	addr := p.waitLine(`health endpoints\s+addr=(\S+)`, 20*time.Second)[1]
	p.waitLine(`registered`, 20*time.Second)
	if code, h := readyz(t, addr); code != http.StatusOK || h["state"] != "healthy" || h["lease_id"] == "" {
		t.Fatalf("/readyz = %d %v, want 200 healthy with a lease", code, h)
	}
	if code, body := get(t, "http://"+addr+"/metrics"); code != http.StatusOK ||
		!strings.Contains(string(body), `leasekeeper_state{state="healthy"} 1`) {
		t.Errorf("/metrics = %d, want 200 with leasekeeper_state healthy 1:\n%s", code, body)
	}
	srv.Stop()
	p.waitLine(`healthy -> degraded`, 10*time.Second)
	if code, h := readyz(t, addr); code != http.StatusServiceUnavailable || h["state"] == "healthy" {
		t.Errorf("/readyz during the outage = %d %v, want 503", code, h)
	}
	if code, _ := get(t, "http://"+addr+"/healthz"); code != http.StatusOK {
		t.Errorf("/healthz during the outage = %d, want 200", code)
	}
	if err := srv.Restart(30 * time.Second); err != nil {
		t.Fatal(err)
	}
	p.waitLine(`(degraded|failed) -> healthy`, 20*time.Second)
	if code, h := readyz(t, addr); code != http.StatusOK {
		t.Errorf("/readyz after the outage = %d %v, want 200", code, h)
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	if code := p.wait(10 * time.Second); code != 0 {
		t.Errorf("exit code = %d, want 0", code)
	}
}

func TestUnreachableAtStartKeepsTrying(t *testing.T) {
	p := start(t, nil, "run", "--endpoints", "http://127.0.0.1:1", "--key", "svc/x", "--ttl", "2s",
		"--health-addr", "127.0.0.1:0")
	addr := p.waitLine(`health endpoints\s+addr=(\S+)`, 10*time.Second)[1]
	p.waitLine(`etcd unreachable at start; retrying in the background\s+state=failed`, 10*time.Second)
	code, h := readyz(t, addr)
	if code != http.StatusServiceUnavailable || h["state"] != "failed" || h["last_error_kind"] != "cluster unreachable" {
		t.Errorf("/readyz = %d %v, want 503 failed, cluster unreachable", code, h)
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	if code := p.wait(10 * time.Second); code != 0 {
		t.Errorf("exit code = %d, want 0; stderr:\n%s", code, p.stderr.String())
	}
	// One line per transition and event: no line per retry.
	if n := strings.Count(p.output(), "\n"); n > 8 {
		t.Errorf("%d output lines while unreachable, want a handful:\n%s", n, p.output())
	}
}

func TestJSONOutput(t *testing.T) {
	_, cli := etcdServer(t)
	p := start(t, nil, "run", "--endpoints", cli.Endpoints()[0], "--key", "svc/json", "--ttl", "3s", "--log-format", "json")
	p.waitLine(`"msg":"registered"`, 20*time.Second)
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	p.wait(10 * time.Second)
	var sawTransition bool
	for _, l := range strings.Split(strings.TrimSpace(p.output()), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Errorf("line is not JSON: %q", l)
			continue
		}
		if m["from"] == "idle" && m["to"] == "healthy" {
			sawTransition = true
		}
	}
	if !sawTransition {
		t.Errorf("no idle -> healthy transition line in:\n%s", p.output())
	}
}

func TestBadInput(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string // in stderr
	}{
		{"unknown flag", []string{"run", "--bogus"}, "flag provided but not defined: -bogus"},
		{"unknown command", []string{"frobnicate"}, `unknown command "frobnicate"`},
		{"missing endpoints", []string{"run", "--key", "k"}, "-endpoints is required"},
		{"missing key", []string{"run", "--endpoints", "http://127.0.0.1:1"}, "-key is required"},
		{"key and service", []string{"run", "--endpoints", "x", "--key", "k", "--service", "s", "--addr", "h:1"}, "-key and -service exclude each other"},
		{"service without addr", []string{"run", "--endpoints", "x", "--service", "s"}, "-service needs -addr"},
		{"bad metadata", []string{"run", "--endpoints", "x", "--service", "s", "--addr", "h:1", "--metadata", "{zone"}, "-metadata is not valid JSON"},
		{"service with a slash", []string{"run", "--endpoints", "x", "--service", "s/", "--addr", "h:1"}, "trailing /"},
		{"negative drain delay", []string{"run", "--endpoints", "x", "--key", "k", "--drain-delay", "-1s"}, "-drain-delay must not be negative"},
		{"two readiness checks", []string{"run", "--endpoints", "x", "--key", "k", "--ready-tcp", "h:1", "--ready-http", "http://h"}, "exclude each other"},
		{"bad duration", []string{"run", "--endpoints", "x", "--key", "k", "--ttl", "5"}, `invalid value "5" for flag -ttl`},
		{"negative ttl", []string{"run", "--endpoints", "x", "--key", "k", "--ttl", "-1s"}, "ttl must be positive"},
		{"unreadable cert", []string{"run", "--endpoints", "x", "--key", "k", "--cacert", "/nonexistent/ca.pem"}, "-cacert: open /nonexistent/ca.pem"},
		{"cert without key", []string{"run", "--endpoints", "x", "--key", "k", "--cert", "/etc/hostname"}, "-cert and -cert-key go together"},
		{"password on argv", []string{"run", "--password", "hunter2"}, "no -password flag"},
		{"bad log format", []string{"run", "--endpoints", "x", "--key", "k", "--log-format", "xml"}, "must be human or json"},
		{"demo outage too short", []string{"demo", "--ttl", "3s", "--outage", "2s"}, "must be longer than -ttl"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := start(t, nil, tc.args...)
			if code := p.wait(10 * time.Second); code != 2 {
				t.Errorf("exit code = %d, want 2", code)
			}
			if !strings.Contains(p.stderr.String(), tc.want) {
				t.Errorf("stderr = %q, want it to contain %q", p.stderr.String(), tc.want)
			}
			if strings.Contains(p.stderr.String(), "hunter2") {
				t.Errorf("stderr repeats the password: %q", p.stderr.String())
			}
		})
	}
}

func readyz(t *testing.T, addr string) (int, map[string]any) {
	t.Helper()
	code, body := get(t, "http://"+addr+"/readyz")
	var h map[string]any
	if err := json.Unmarshal(body, &h); err != nil {
		t.Fatalf("/readyz body %q: %v", body, err)
	}
	return code, h
}

func get(t *testing.T, url string) (int, []byte) {
	t.Helper()
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer func() { _ = resp.Body.Close() }()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	return resp.StatusCode, body
}

// TestRunWithTLS runs against an etcd that requires client certificates:
// with the CA, certificate and key it registers; without a client
// certificate it never does, and says why.
func TestRunWithTLS(t *testing.T) {
	dir := t.TempDir()
	ca, err := testpki.NewCA(dir, "ca")
	if err != nil {
		t.Fatal(err)
	}
	server, err := ca.Server("server")
	if err != nil {
		t.Fatal(err)
	}
	client, err := ca.Client("client")
	if err != nil {
		t.Fatal(err)
	}
	srv, err := embedetcd.StartWith(filepath.Join(dir, "data"), 30*time.Second, embedetcd.Options{ClientTLS: &transport.TLSInfo{
		CertFile: server.CertFile, KeyFile: server.KeyFile, TrustedCAFile: ca.CertFile, ClientCertAuth: true,
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Stop()

	p := start(t, nil, "run", "--endpoints", srv.Endpoint, "--key", "svc/tls", "--ttl", "3s",
		"--cacert", ca.CertFile, "--cert", client.CertFile, "--cert-key", client.KeyFile)
	p.waitLine(`registered\s+key=svc/tls`, 20*time.Second)
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	if code := p.wait(10 * time.Second); code != 0 {
		t.Errorf("exit code = %d, want 0; stderr:\n%s", code, p.stderr.String())
	}

	p = start(t, nil, "run", "--endpoints", srv.Endpoint, "--key", "svc/tls", "--ttl", "3s", "--cacert", ca.CertFile)
	p.waitLine(`not registered yet|unreachable at start`, 20*time.Second)
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	p.wait(10 * time.Second)
	if strings.Contains(p.output(), "-> healthy") {
		t.Errorf("registered without a client certificate:\n%s", p.output())
	}
}
