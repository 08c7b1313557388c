// Package sidecar holds what the leasekeeper command does besides parsing
// flags: it holds a registration for a process (optionally a child it
// starts), serves its health over HTTP and prints its transitions.
package sidecar
