package keeper

import "strconv"

// Policy says what the keeper does with a key of its own that is deleted or
// overwritten behind its back while it holds its lease.
type Policy uint8

const (
	// Restore writes the key back at once: the keeper's value wins. Two
	// keepers restoring one key against each other back off, as retries do.
	Restore Policy = iota
	// ReportOnly reports the change and leaves the key as it is; the
	// keeper writes it again only with its next new lease.
	ReportOnly
	// Exclusive writes the key only if it is absent or already on the
	// keeper's lease, in one transaction, and never overwrites another
	// holder: while one has it, the keeper reports ErrKeyTaken and tries
	// again by the backoff, and at once when the key is deleted.
	Exclusive
)

var policyNames = [...]string{Restore: "restore", ReportOnly: "report only", Exclusive: "exclusive"}

// String returns the policy's name, for example "report only".
func (p Policy) String() string {
	if int(p) < len(policyNames) {
		return policyNames[p]
	}
	return "policy(" + strconv.Itoa(int(p)) + ")"
}

// KeyOption changes how Register treats a key.
type KeyOption func(*keyOptions)

type keyOptions struct{ policy Policy }

// WithPolicy sets the key's policy; without it a key is Restore.
func WithPolicy(p Policy) KeyOption { return func(o *keyOptions) { o.policy = p } }
