package sidecar

import "syscall"

// childAttr makes the kernel send the child SIGKILL when the sidecar's
// thread that started it dies.
func childAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
