package keeper

import (
	"testing"
	"unsafe"

	"github.com/stretchr/testify/assert"
)

// TestKeeperSize keeps a Keeper in the 576-byte size class: objects over
// 512 bytes with pointers carry the runtime's 8-byte header, and 1,000
// keepers of the next class up (640 bytes) take 84 pages of the heap
// instead of 72. A field added to any part must be paid for elsewhere.
func TestKeeperSize(t *testing.T) {
	const class, header = 576, 8
	assert.LessOrEqual(t, unsafe.Sizeof(Keeper{})+header, uintptr(class),
		"a Keeper outgrew the %d-byte size class", class)
}
