package keeper

import (
	lkerrors "github.com/leasekeeper/leasekeeper/errors"
)

// Errors of the keeper itself. Each is also classified: errors.Is(err,
// lkerrors.ErrInvalidArgument) holds for all of them.
var (
	// ErrClosed is returned by every method but State, LeaseID and Close
	// once Close was called.
	ErrClosed = invalid("keeper: closed")
	// ErrDraining is returned by Register, Start and a second Drain once
	// Drain withdrew the registration.
	ErrDraining = invalid("keeper: draining")
	// ErrAlreadyStarted is returned by a second Start.
	ErrAlreadyStarted = invalid("keeper: already started")
	// ErrEmptyKey is returned by Register and Deregister for an empty key.
	ErrEmptyKey = invalid("keeper: empty key")
	// ErrNilClient is returned by New for a nil client.
	ErrNilClient = invalid("keeper: nil client")
)

// Causes of the transitions the keeper derives from its own clock. The
// transition's Cause wraps one of them and, if there was one, the last
// attempt's error, whose kind KindOf then reports.
var (
	// ErrDeadline: the local deadline passed without a successful renewal,
	// so the server may already have expired the lease.
	ErrDeadline error = &kindError{"keeper: lease deadline passed without a successful renewal", lkerrors.Timeout}
	// ErrTimeLow: the time left before the local deadline fell below the
	// degrade threshold.
	ErrTimeLow error = &kindError{"keeper: time left before the lease deadline fell below the threshold", lkerrors.Timeout}
)

// kindError is an error of the keeper's own: its message is the package's,
// and it matches its kind's sentinel so that KindOf reports the kind.
type kindError struct {
	msg  string
	kind lkerrors.Kind
}

func invalid(msg string) error { return &kindError{msg, lkerrors.InvalidArgument} }

func (e *kindError) Error() string { return e.msg }

func (e *kindError) Is(target error) bool { return target == e.kind.Sentinel() }
