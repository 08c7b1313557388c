package keeper

import (
	"fmt"
	"strconv"

	clientv3 "go.etcd.io/etcd/client/v3"

	lkerrors "github.com/leasekeeper/leasekeeper/errors"
)

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

// Token returns the fencing token of key while the keeper holds it: its
// lease is live, and the key is written with it. For an exclusive key
// another holder has, it returns a *KeyTakenError; for a key etcd refused,
// the refusal; otherwise ErrNotHeld or ErrNotRegistered.
func (k *Keeper) Token(key string) (Token, error) {
	return k.reg.token(key)
}
