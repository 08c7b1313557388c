package errors

import stderrors "errors"

// Error is a classified error: a Kind plus the original cause.
//
// errors.Is(e, ErrX) matches the kind sentinel of e's Kind, and errors.Is and
// errors.As see through e to its cause.
type Error struct {
	// Kind is the semantic class.
	Kind Kind
	// Err is the original error; nil only in the package's sentinels.
	Err error
}

// Kind sentinels: match a classified error's kind with errors.Is.
var (
	ErrUnknown            error = &Error{Kind: Unknown}
	ErrClusterUnreachable error = &Error{Kind: ClusterUnreachable}
	ErrUnavailable        error = &Error{Kind: Unavailable}
	ErrTimeout            error = &Error{Kind: Timeout}
	ErrRateLimited        error = &Error{Kind: RateLimited}
	ErrNoSpace            error = &Error{Kind: NoSpace}
	ErrLeaseExpired       error = &Error{Kind: LeaseExpired}
	ErrPermissionDenied   error = &Error{Kind: PermissionDenied}
	ErrInvalidArgument    error = &Error{Kind: InvalidArgument}
	ErrCanceled           error = &Error{Kind: Canceled}
	ErrKeyTaken           error = &Error{Kind: KeyTaken}
)

// Sentinel returns the kind sentinel for k (ErrLeaseExpired for
// LeaseExpired), or ErrUnknown for a kind out of range.
func (k Kind) Sentinel() error {
	switch k {
	case ClusterUnreachable:
		return ErrClusterUnreachable
	case Unavailable:
		return ErrUnavailable
	case Timeout:
		return ErrTimeout
	case RateLimited:
		return ErrRateLimited
	case NoSpace:
		return ErrNoSpace
	case LeaseExpired:
		return ErrLeaseExpired
	case PermissionDenied:
		return ErrPermissionDenied
	case InvalidArgument:
		return ErrInvalidArgument
	case Canceled:
		return ErrCanceled
	case KeyTaken:
		return ErrKeyTaken
	}
	return ErrUnknown
}

// Error returns "<kind>: <cause>", or the kind alone for a sentinel.
func (e *Error) Error() string {
	if e.Err == nil {
		return "leasekeeper: " + e.Kind.String()
	}
	return e.Kind.String() + ": " + e.Err.Error()
}

// Unwrap returns the original cause.
func (e *Error) Unwrap() error { return e.Err }

// Is reports whether target is the sentinel of e's kind.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Err == nil && t.Kind == e.Kind
}

// Retryable reports whether e.Kind is retryable.
func (e *Error) Retryable() bool { return e.Kind.Retryable() }

// KindOf returns the kind of err: the kind it declares (an *Error in its
// chain, or an Is method matching a kind sentinel) if any, else the kind
// Classify assigns. KindOf(nil) is
// Unknown; use err == nil first where that matters.
func KindOf(err error) Kind {
	if err == nil {
		return Unknown
	}
	if k, ok := declaredKind(err); ok {
		return k
	}
	return classify(err, connUnknown)
}

// declaredKind returns the kind err declares itself: that of the outermost
// *Error in its chain, or of a sentinel its own Is method matches.
func declaredKind(err error) (Kind, bool) {
	var e *Error
	if stderrors.As(err, &e) {
		return e.Kind, true
	}
	for k := range Kind(numKinds) {
		if stderrors.Is(err, k.Sentinel()) {
			return k, true
		}
	}
	return Unknown, false
}

// IsRetryable reports whether retrying the operation that returned err can
// help. It is false for nil.
func IsRetryable(err error) bool {
	return err != nil && KindOf(err).Retryable()
}
