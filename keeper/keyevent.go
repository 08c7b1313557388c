package keeper

import (
	"strconv"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Change says what happened to a registered key.
type Change uint8

const (
	// Deleted: the key was deleted while the keeper held its lease.
	Deleted Change = iota + 1
	// Overwritten: the key was written with another lease or value.
	Overwritten
	// Taken: another holder has an exclusive key the keeper tried to write.
	Taken
	// Acquired: the keeper wrote a key it could not hold before: an
	// exclusive key another holder had, or a key etcd had refused.
	Acquired
	// Refused: etcd refused to write the key for good (a permission the
	// user lacks, say) while the keeper wrote its keys again. The other keys
	// stay registered; the keeper tries this one again by the backoff, and
	// reports Acquired once it is written. Err says why.
	Refused
)

var changeNames = [...]string{Deleted: "deleted", Overwritten: "overwritten", Taken: "taken", Acquired: "acquired", Refused: "refused"}

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
	// Err is the error of a write-back that failed, or of a refused write;
	// the keeper retries it.
	Err error
	At  time.Time
}
