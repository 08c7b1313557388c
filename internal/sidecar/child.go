package sidecar

import (
	"errors"
	"os"
	"os/exec"
	"runtime"
	"syscall"
	"time"
)

// child is the command the sidecar runs.
type child struct {
	cmd  *exec.Cmd
	name string
	done chan struct{} // closed once it exited; code is then set
	code int
}

// startChild starts argv with the sidecar's stdio. On Linux the child is
// killed if the sidecar dies without a chance to stop it (SIGKILL, a
// crash), so it is never left running on its own. The kernel sends that
// signal when the thread that started the child ends, so the child is
// started and waited for on one goroutine locked to its thread.
func startChild(argv []string, out *Output) (*child, error) {
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.SysProcAttr = childAttr()
	c := &child{cmd: cmd, name: argv[0], done: make(chan struct{})}
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		out.Event("started", "command", argv[0], "pid", cmd.Process.Pid)
		started <- nil
		c.code = exitCode(cmd.Wait())
		out.Event("command exited", "command", c.name, "code", c.code)
		close(c.done)
	}()
	if err := <-started; err != nil {
		return nil, err
	}
	return c, nil
}

// signal sends s to the child unless it has exited.
func (c *child) signal(s os.Signal) {
	select {
	case <-c.done:
	default:
		_ = c.cmd.Process.Signal(s)
	}
}

// stop sends s to the child, waits up to timeout for it to exit, then sends
// SIGKILL, and returns its exit code.
func (c *child) stop(s os.Signal, timeout time.Duration, out *Output) int {
	c.signal(s)
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-c.done:
	case <-t.C:
		out.Event("command still running after the kill timeout; sending SIGKILL", "command", c.name, "timeout", timeout)
		c.signal(syscall.SIGKILL)
		<-c.done
	}
	return c.code
}

func exitCode(err error) int {
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		if err != nil {
			return 1
		}
		return 0
	}
	if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return ee.ExitCode()
}
