// Package doccheck holds the test that keeps the Go code shown in README.md
// and docs/ from drifting: every such block is an excerpt of a compiled,
// run Example function.
package doccheck
