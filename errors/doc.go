// Package errors classifies the errors that etcd's client, gRPC and the
// context package return into a small set of semantic kinds that a lease
// keeper can act on.
//
// Import it under one alias everywhere, since its name shadows the standard
// library's:
//
//	import lkerrors "github.com/leasekeeper/leasekeeper/errors"
//
// # Guarantees
//
//   - [Classify] never loses the original error: the result wraps it, so
//     errors.Is and errors.As see both the kind sentinel (for example
//     [ErrLeaseExpired]) and the original cause (for example
//     rpctypes.ErrLeaseNotFound).
//   - etcd errors are matched by value (rpctypes.EtcdError values and the
//     gRPC status values etcd defines), never by message text alone: a
//     NotFound code means "lease not found" for a keepalive but "member not
//     found" elsewhere, so the code alone does not decide.
//   - A TLS handshake that refused a certificate (the server's, or the
//     client's) is [PermissionDenied]: retrying soon cannot fix it. gRPC
//     keeps that failure only as text in its status, so the words of gRPC's
//     transport and of crypto/tls are matched, under codes Unavailable and
//     DeadlineExceeded only; x509 and crypto/tls errors are matched by type.
//   - Every gRPC code and every error value in etcd's rpctypes package maps to
//     exactly one kind; anything unrecognised is [Unknown], which is
//     retryable.
//   - [Classify] is pure and safe for concurrent use.
//
// # Non-guarantees
//
//   - The kind describes what the error says, not what the cluster is doing:
//     a Timeout on one member says nothing about the others.
//   - An unreachable cluster usually surfaces as the caller's own
//     context.DeadlineExceeded, because etcd's client waits for a ready
//     connection. Only the caller knows whether its connection was READY, so
//     [ClassifyConn] takes the connection state; [Classify] without it reports
//     such deadlines as [Timeout].
package errors
