package testbed

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"github.com/leasekeeper/leasekeeper/internal/test/freeport"
)

// GRPCProxy is etcd's own gRPC proxy (`etcd grpc-proxy start`), run from
// the same binary as the members, in front of upstream endpoints. Fleets
// run it to coalesce watches and lease keepalives: it answers a client's
// keepalives from one lease keepalive of its own per lease, on its own
// schedule, and forwards the other lease calls upstream.
type GRPCProxy struct {
	URL      string // the proxy's client URL
	bin      string
	args     []string
	log      string
	cmd      *exec.Cmd
	exited   chan struct{}
	upstream []string
}

// StartGRPCProxy starts a gRPC proxy of the etcd binary bin in front of
// upstream (client URLs), logging to log, and waits until it serves. A
// proxy that exits before it serves (another process took its port, say)
// is started again on a fresh port, up to three times.
func StartGRPCProxy(bin, log string, upstream []string) (*GRPCProxy, error) {
	hosts := make([]string, len(upstream))
	for i, u := range upstream {
		hosts[i] = strings.TrimPrefix(u, "http://")
	}
	return startTries(func(int) (*GRPCProxy, error) {
		ports, err := freeport.Get(1)
		if err != nil {
			return nil, err
		}
		addr := fmt.Sprintf("127.0.0.1:%d", ports[0])
		// The proxy dials its advertised address (127.0.0.1:23790 unless
		// told): v3.5 exits after 5 s when nothing answers there.
		p := &GRPCProxy{URL: "http://" + addr, bin: bin, log: log, upstream: upstream,
			args: []string{"grpc-proxy", "start", "--endpoints", strings.Join(hosts, ","), "--listen-addr", addr,
				"--advertise-client-url", addr}}
		if err := p.start(); err != nil {
			return nil, err
		}
		return p, nil
	})
}

func (p *GRPCProxy) start() error {
	cmd := exec.Command(p.bin, p.args...)
	log, err := os.OpenFile(p.log, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	defer func() { _ = log.Close() }()
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start grpc-proxy: %w", err)
	}
	p.cmd, p.exited = cmd, make(chan struct{})
	go reapProcess(p.cmd, p.exited)
	if err := waitUp(p.URL, p.exited, time.Now().Add(30*time.Second), p.log); err != nil {
		p.Kill()
		return fmt.Errorf("grpc-proxy: %w", err)
	}
	return nil
}

// reapProcess waits for cmd to exit and closes exited. Tests that check
// for leaked goroutines ignore it: it lives as long as the member or proxy
// it waits for.
func reapProcess(cmd *exec.Cmd, exited chan struct{}) {
	_ = cmd.Wait()
	close(exited)
}

// Kill kills the proxy with SIGKILL and waits for it to exit.
func (p *GRPCProxy) Kill() {
	if p.cmd == nil {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.exited
	p.cmd = nil
}

// Restart kills the proxy and starts it again on the same address.
func (p *GRPCProxy) Restart() error {
	p.Kill()
	return p.start()
}

// Pid returns the proxy's process ID, or 0 while it is not running.
func (p *GRPCProxy) Pid() int {
	if p.cmd == nil || p.cmd.Process == nil {
		return 0
	}
	return p.cmd.Process.Pid
}

// CPU returns the user and system time the proxy has used.
func (p *GRPCProxy) CPU() (time.Duration, error) {
	if p.Pid() == 0 {
		return 0, errors.New("testbed: grpc-proxy not running")
	}
	return ProcessCPU(p.Pid())
}
