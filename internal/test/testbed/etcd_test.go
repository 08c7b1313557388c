package testbed

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// exitAtOnce writes a stand-in for the etcd binary that exits before it
// serves, as etcd does when another process took its port.
func exitAtOnce(t *testing.T) (bin, dir string) {
	dir = t.TempDir()
	bin = filepath.Join(dir, "etcd")
	script := "#!/bin/sh\necho \"listen tcp: bind: address already in use\" >&2\nexit 1\n"
	require.NoError(t, os.WriteFile(bin, []byte(script), 0o755))
	return bin, dir
}

// A member that exits before it serves must not make StartCluster wait
// out its deadline: it starts again on fresh ports and fresh data, and at
// last names the member's log in its error.
func TestStartClusterMemberExits(t *testing.T) {
	bin, dir := exitAtOnce(t)
	c, err := StartCluster(bin, dir, 1)
	assert.Nil(t, c)
	require.ErrorIs(t, err, errExited)
	assert.Contains(t, err.Error(), "address already in use")
	for _, name := range []string{"m0.log", "m0.1.log", "m0.2.log"} {
		assert.FileExists(t, filepath.Join(dir, name), "one try per data dir")
	}
}

// The same for etcd's gRPC proxy.
func TestStartGRPCProxyExits(t *testing.T) {
	bin, dir := exitAtOnce(t)
	log := filepath.Join(dir, "proxy.log")
	p, err := StartGRPCProxy(bin, log, []string{"http://127.0.0.1:1"})
	assert.Nil(t, p)
	require.ErrorIs(t, err, errExited)
	b, err := os.ReadFile(log)
	require.NoError(t, err)
	assert.Equal(t, 3, strings.Count(string(b), "\n"), "three tries, one line each")
}
