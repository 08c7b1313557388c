package errors

import (
	"crypto/tls"
	"crypto/x509"
	stderrors "errors"
	"net"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// tlsRefusal reports whether err says that a TLS handshake refused a
// certificate: the server's, which the client does not trust, or the
// client's, which the server does not. Retrying soon cannot fix either.
//
// gRPC keeps the handshake's error only as text in the status it fails RPCs
// with (code Unavailable, or DeadlineExceeded for an RPC that waited for a
// connection), so under those two codes the text of its transport and of
// crypto/tls is matched; anything else must hold the typed error.
func tlsRefusal(err error) bool {
	var (
		unknownCA x509.UnknownAuthorityError
		invalid   x509.CertificateInvalidError
		hostname  x509.HostnameError
		verify    *tls.CertificateVerificationError
		op        *net.OpError
	)
	switch {
	case stderrors.As(err, &unknownCA), stderrors.As(err, &invalid), stderrors.As(err, &hostname),
		stderrors.As(err, &verify):
		return true
	case stderrors.As(err, &op) && op.Op == "remote error" && op.Err != nil:
		// crypto/tls reports an alert from the peer this way.
		return certificateAlert(op.Err.Error())
	}
	s, ok := status.FromError(err)
	if !ok || (s.Code() != codes.Unavailable && s.Code() != codes.DeadlineExceeded) {
		return false
	}
	msg := s.Message()
	return strings.Contains(msg, "authentication handshake failed") || strings.Contains(msg, "x509: ") ||
		certificateAlert(msg)
}

// certificateAlert reports whether msg holds a TLS alert a peer sends when
// it refuses a certificate, in crypto/tls's words.
func certificateAlert(msg string) bool {
	for _, a := range []string{
		"tls: bad certificate", "tls: unsupported certificate", "tls: revoked certificate",
		"tls: expired certificate", "tls: unknown certificate", "tls: unknown certificate authority",
		"tls: certificate required", "tls: access denied",
	} {
		if strings.Contains(msg, a) {
			return true
		}
	}
	return false
}
