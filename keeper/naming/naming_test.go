package naming_test

import (
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.etcd.io/etcd/client/v3/naming/endpoints"

	lkerrors "github.com/leasekeeper/leasekeeper/errors"
	"github.com/leasekeeper/leasekeeper/keeper/naming"
)

func TestKeyAndValue(t *testing.T) {
	assert.Equal(t, "my-service/10.0.0.7:8080", naming.Key("my-service", "10.0.0.7:8080"))
	v, err := naming.Value("10.0.0.7:8080", map[string]string{"zone": "a"})
	require.NoError(t, err)
	var ep endpoints.Endpoint
	require.NoError(t, json.Unmarshal([]byte(v), &ep))
	assert.Equal(t, "10.0.0.7:8080", ep.Addr)
	assert.Equal(t, map[string]any{"zone": "a"}, ep.Metadata)

	raw, err := naming.Value("h:1", json.RawMessage(`{"weight":3}`))
	require.NoError(t, err)
	assert.JSONEq(t, `{"Addr":"h:1","Metadata":{"weight":3}}`, raw)

	_, err = naming.Value("h:1", func() {})
	assert.ErrorIs(t, err, lkerrors.ErrInvalidArgument, "metadata JSON cannot encode")
}

func TestCheck(t *testing.T) {
	for _, tc := range []struct{ service, addr string }{
		{"", "h:1"}, {"svc/", "h:1"}, {"svc", ""}, {"svc", "a/b:1"},
	} {
		err := naming.Check(tc.service, tc.addr)
		assert.ErrorIs(t, err, lkerrors.ErrInvalidArgument, "Check(%q, %q)", tc.service, tc.addr)
	}
	assert.NoError(t, naming.Check("a/b/svc", "h:1"), "a service may be a path")
}
