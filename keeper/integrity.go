package keeper

import (
	"fmt"
	"strconv"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	lkerrors "github.com/leasekeeper/leasekeeper/errors"
)

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

// Change says what happened to a registered key.
type Change uint8

const (
	// Deleted: the key was deleted while the keeper held its lease.
	Deleted Change = iota + 1
	// Overwritten: the key was written with another lease or value.
	Overwritten
	// Taken: another holder has an exclusive key the keeper tried to write.
	Taken
	// Acquired: the keeper wrote an exclusive key it did not hold.
	Acquired
)

var changeNames = [...]string{Deleted: "deleted", Overwritten: "overwritten", Taken: "taken", Acquired: "acquired"}

// String returns the change's name, for example "overwritten".
func (c Change) String() string {
	if c > 0 && int(c) < len(changeNames) {
		return changeNames[c]
	}
	return "change(" + strconv.Itoa(int(c)) + ")"
}

// KeyEvent reports a change to a registered key and its outcome: who holds
// the key once the keeper acted on it by the key's policy.
type KeyEvent struct {
	Key    string
	Change Change
	Policy Policy
	// Ours says whether the keeper holds the key now, with its value on
	// its lease: it restored or acquired it, or the change left it so.
	Ours bool
	// Holder is the lease the key is on now: the keeper's when Ours, the
	// other writer's (0 for none or a key without a lease) otherwise.
	Holder clientv3.LeaseID
	// Revision is the revision the change was seen at.
	Revision int64
	// Err is the error of a write-back that failed; the keeper retries it.
	Err error
	At  time.Time
}

// Token is a fencing token for a key the keeper holds: the lease and the
// key's create revision. A key written anew (after a deletion, or by a new
// holder) gets a higher create revision, so a system that remembers the
// highest Revision it accepted can refuse a writer whose lease expired
// while it was paused. A lease alone cannot do that; see the package doc.
type Token struct {
	Lease    clientv3.LeaseID
	Revision int64
}

// String returns "<lease in hex>:<revision>".
func (t Token) String() string {
	return strconv.FormatInt(int64(t.Lease), 16) + ":" + strconv.FormatInt(t.Revision, 10)
}

// ErrKeyTaken matches (with errors.Is) the error Register and Token return
// for an exclusive key another holder has; its kind is lkerrors.KeyTaken.
var ErrKeyTaken = lkerrors.ErrKeyTaken

// ErrNotHeld is returned by Token while the keeper does not hold the key:
// it holds no live lease, or the key is not written yet.
var ErrNotHeld error = &kindError{"keeper: key not held", lkerrors.LeaseExpired}

// ErrNotRegistered is returned by Token for a key that is not registered.
var ErrNotRegistered = invalid("keeper: key not registered")

// KeyTakenError says who holds an exclusive key. errors.Is(err,
// ErrKeyTaken) holds for it.
type KeyTakenError struct {
	Key            string
	Holder         clientv3.LeaseID // 0: the key has no lease
	CreateRevision int64
}

func (e *KeyTakenError) Error() string {
	return fmt.Sprintf("keeper: key %q is held by lease %x", e.Key, int64(e.Holder))
}

// Is matches ErrKeyTaken.
func (e *KeyTakenError) Is(target error) bool { return target == lkerrors.ErrKeyTaken }

// owned is what the keeper knows of a key it wrote: the lease, the
// revision of its last write and the key's create revision. For a
// report-only key another writer changed, lease is 0 and seen (or gone, for
// a deletion) says which change was reported.
type owned struct {
	lease  clientv3.LeaseID
	rev    int64
	create int64
	seen   int64
	gone   bool
}

// Token returns the fencing token of key while the keeper holds it: its
// lease is live, and the key is written with it. For an exclusive key
// another holder has, it returns a *KeyTakenError; otherwise ErrNotHeld or
// ErrNotRegistered.
func (k *Keeper) Token(key string) (Token, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if _, ok := k.keys[key]; !ok {
		return Token{}, ErrNotRegistered
	}
	if h, ok := k.taken[key]; ok {
		return Token{}, h
	}
	now := time.Now()
	k.checkTimeLocked(now)
	o, ok := k.own[key]
	if !k.liveLocked(now) || k.pending[key] || !ok || o.lease != k.leaseID {
		return Token{}, ErrNotHeld
	}
	return Token{Lease: k.leaseID, Revision: o.create}, nil
}

// policyLocked returns key's policy.
func (k *Keeper) policyLocked(key string) Policy {
	return k.policies[key]
}
