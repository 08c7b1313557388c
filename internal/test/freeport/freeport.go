// Package freeport picks free TCP ports on loopback.
package freeport

import (
	"fmt"
	"net"
)

// Get returns n distinct loopback ports that were free a moment ago. Another
// process may take one before the caller binds it; tests accept that race.
func Get(n int) ([]int, error) {
	ports := make([]int, 0, n)
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("freeport: %w", err)
		}
		// Kept open until all are picked, so that no port comes twice.
		defer func() { _ = l.Close() }()
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}
