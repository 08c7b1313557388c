//go:build !linux

package sidecar

import "syscall"

func childAttr() *syscall.SysProcAttr { return nil }
