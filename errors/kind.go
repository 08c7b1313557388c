package errors

import "strconv"

// Kind is the semantic class of an error.
type Kind uint8

const (
	// Unknown is an error no rule recognised. Retrying may help.
	Unknown Kind = iota
	// ClusterUnreachable means no member could be reached: transport failure,
	// connection refused, or a deadline while the connection was not READY.
	ClusterUnreachable
	// Unavailable means a member answered but the cluster cannot serve the
	// request now: no leader, leader changed, server timeout or stopping.
	Unavailable
	// Timeout means the attempt's own deadline passed while connected.
	Timeout
	// RateLimited means the server shed load (too many requests). Retry slower.
	RateLimited
	// NoSpace means the cluster exceeded its storage quota and is read-only
	// until an operator acts. Retry at the slowest pace.
	NoSpace
	// LeaseExpired means the server no longer knows the lease: grant a new one
	// instead of renewing.
	LeaseExpired
	// PermissionDenied means authentication or authorization failed: a wrong
	// password, a missing permission, or a TLS handshake that refused a
	// certificate. Retrying quickly cannot help; retry at the slowest pace.
	PermissionDenied
	// InvalidArgument means the request itself is wrong (a caller bug): empty
	// key, TTL too large, too many operations. Retrying cannot help.
	InvalidArgument
	// Canceled means the caller's own context ended or the client was closed.
	Canceled
	// KeyTaken means another holder has a key the caller may write only if
	// it is absent or its own (an exclusive key). Retry by the backoff; do
	// not overwrite it.
	KeyTaken

	numKinds = iota
)

var kindNames = [numKinds]string{
	Unknown:            "unknown",
	ClusterUnreachable: "cluster unreachable",
	Unavailable:        "unavailable",
	Timeout:            "timeout",
	RateLimited:        "rate limited",
	NoSpace:            "no space",
	LeaseExpired:       "lease expired",
	PermissionDenied:   "permission denied",
	InvalidArgument:    "invalid argument",
	Canceled:           "canceled",
	KeyTaken:           "key taken",
}

// String returns the kind's name in lower case, for example "lease expired".
func (k Kind) String() string {
	if int(k) < len(kindNames) {
		return kindNames[k]
	}
	return "kind(" + strconv.Itoa(int(k)) + ")"
}

// Retryable reports whether trying the same operation again can succeed
// without anyone changing the request. LeaseExpired is retryable only by
// granting a new lease; PermissionDenied only after an operator acts, so it
// is reported as not retryable.
func (k Kind) Retryable() bool {
	switch k {
	case PermissionDenied, InvalidArgument, Canceled:
		return false
	}
	return k < numKinds
}

// Kinds returns every defined kind in order, for tests and metrics.
func Kinds() []Kind {
	ks := make([]Kind, numKinds)
	for i := range ks {
		ks[i] = Kind(i)
	}
	return ks
}
