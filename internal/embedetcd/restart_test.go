package embedetcd

import (
	"net"
	"net/url"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// A port taken while the server was stopped (by an outgoing connection's
// local port, say) must not fail Restart while it is freed in time.
func TestRestartWaitsForItsPort(t *testing.T) {
	s, err := Start(t.TempDir(), 30*time.Second)
	require.NoError(t, err)
	defer s.Stop()
	s.Stop()

	u, err := url.Parse(s.Endpoint)
	require.NoError(t, err)
	ln, err := net.Listen("tcp", u.Host)
	require.NoError(t, err, "take the stopped server's client port")
	released := time.AfterFunc(500*time.Millisecond, func() { _ = ln.Close() })
	defer released.Stop()

	require.NoError(t, s.Restart(30*time.Second))
}
