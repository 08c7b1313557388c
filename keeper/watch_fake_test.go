package keeper

import (
	"context"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/leasekeeper/leasekeeper/statemachine"
)

// newWatched returns a healthy keeper on a watching fake, holding key a
// with policy p, and the key events it reports.
func newWatched(t *testing.T, f *fakeBackend, p Policy) (*Keeper, *keyEventLog) {
	t.Helper()
	evs := &keyEventLog{}
	k, _ := newTest(t, f, func(c *Config) { c.Callbacks.OnKeyEvent = evs.record })
	require.NoError(t, k.Register(context.Background(), "svc/a", "mine", WithPolicy(p)))
	require.NoError(t, k.Start(context.Background()))
	synctest.Wait()
	return k, evs
}

// TestFakeWatchRestoresDeletedKey: a key deleted behind the keeper's back
// is written back at once, on fake time.
func TestFakeWatchRestoresDeletedKey(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newWatchingFake()
		k, evs := newWatched(t, f, Restore)
		f.deleteKey("svc/a")
		synctest.Wait()
		kv, ok := f.get("svc/a")
		require.True(t, ok, "svc/a not restored")
		assert.Equal(t, k.LeaseID(), kv.lease)
		assert.Equal(t, []Change{Deleted}, evs.changes("svc/a"))
		assert.Equal(t, statemachine.Healthy, k.State())
		mustClose(t, k)
	})
}

// TestFakeWatchOverASlowPath: over a path whose round trip is longer than
// the renew timeout (TTL/10), the watch's read is bounded by the round
// trips the keeper's calls showed, so the watch starts, restores a key
// deleted behind the keeper's back, and does not read the keys again and
// again.
func TestFakeWatchOverASlowPath(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newWatchingFake()
		f.setLatency(400 * time.Millisecond)
		evs := &keyEventLog{}
		k, _ := newTest(t, f, func(c *Config) {
			c.TTL = 3 * time.Second
			c.Callbacks.OnKeyEvent = evs.record
		})
		require.NoError(t, k.Register(context.Background(), "svc/a", "mine"))
		require.NoError(t, k.Start(context.Background()))
		time.Sleep(5 * time.Second)
		reads := f.count("read")
		f.deleteKey("svc/a")
		time.Sleep(2 * time.Second)
		synctest.Wait()
		kv, ok := f.get("svc/a")
		require.True(t, ok, "svc/a not restored")
		assert.Equal(t, k.LeaseID(), kv.lease)
		assert.Equal(t, []Change{Deleted}, evs.changes("svc/a"))
		assert.LessOrEqual(t, reads, 2, "reads of the keys in the watch's first 5 s")
		mustClose(t, k)
	})
}

// TestNoWatchUnlessAsked: with the default config the keeper opens no
// watch: a key deleted behind its back stays deleted and is not reported,
// and the hub runs no watch goroutine. The keeper still writes every key
// again after a re-grant.
func TestNoWatchUnlessAsked(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newWatchingFake()
		evs := &keyEventLog{}
		k, _ := newTest(t, f, func(c *Config) {
			c.WatchKeys = false
			c.Callbacks.OnKeyEvent = evs.record
		})
		require.NoError(t, k.Register(context.Background(), "svc/a", "mine"))
		require.NoError(t, k.Start(context.Background()))
		f.deleteKey("svc/a")
		time.Sleep(3 * k.cfg.TTL)
		synctest.Wait()
		_, ok := f.get("svc/a")
		assert.False(t, ok, "svc/a restored without a watch")
		assert.Empty(t, evs.changes("svc/a"))
		assert.False(t, k.hub.watch.running(), "the hub runs a watch")
		assert.Equal(t, statemachine.Healthy, k.State())
		require.NoError(t, f.revoke(context.Background(), k.LeaseID()))
		time.Sleep(k.cfg.TTL)
		synctest.Wait()
		kv, ok := f.get("svc/a")
		require.True(t, ok, "svc/a not written again after the re-grant")
		assert.Equal(t, k.LeaseID(), kv.lease)
		mustClose(t, k)
	})
}

// TestFakeWatchReportOnly: an overwritten report-only key is reported and
// left as the other writer made it.
func TestFakeWatchReportOnly(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newWatchingFake()
		k, evs := newWatched(t, f, ReportOnly)
		f.overwrite("svc/a", "theirs")
		synctest.Wait()
		kv, _ := f.get("svc/a")
		assert.Equal(t, "theirs", kv.value)
		assert.Equal(t, []Change{Overwritten}, evs.changes("svc/a"))
		mustClose(t, k)
	})
}

// TestFakeWatchExclusive: an exclusive key another writer took is never
// overwritten, and the keeper takes it the moment it is deleted.
func TestFakeWatchExclusive(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newWatchingFake()
		k, evs := newWatched(t, f, Exclusive)
		f.overwrite("svc/a", "theirs")
		time.Sleep(time.Minute)
		kv, _ := f.get("svc/a")
		assert.Equal(t, "theirs", kv.value, "the other holder's key was overwritten")
		f.deleteKey("svc/a")
		synctest.Wait()
		kv, ok := f.get("svc/a")
		require.True(t, ok)
		assert.Equal(t, "mine", kv.value)
		assert.Equal(t, k.LeaseID(), kv.lease)
		// Acquired at Start, overwritten by the other writer (and left so),
		// acquired again once free.
		assert.Equal(t, []Change{Acquired, Overwritten, Acquired}, evs.changes("svc/a"))
		mustClose(t, k)
	})
}

// TestFakeWatchReadsAgainAfterABreak: a key deleted while the watch was
// broken, its history compacted away, is found by reading the keys again
// once the connection is back.
func TestFakeWatchReadsAgainAfterABreak(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newWatchingFake()
		k, _ := newWatched(t, f, Restore)
		f.setDown(true)
		time.Sleep(time.Second)
		f.deleteKey("svc/a")
		f.compact()
		f.setDown(false)
		time.Sleep(10 * time.Second)
		kv, ok := f.get("svc/a")
		require.True(t, ok, "svc/a not restored after the watch broke")
		assert.Equal(t, k.LeaseID(), kv.lease)
		assert.Equal(t, statemachine.Healthy, k.State())
		mustClose(t, k)
	})
}

// TestFakeWatchCompactedWhileWatching: a compaction under a live watch
// makes the keeper read its keys again, and nothing is lost.
func TestFakeWatchCompactedWhileWatching(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newWatchingFake()
		k, evs := newWatched(t, f, Restore)
		reads := f.count("read")
		f.deleteKey("svc/a")
		f.compact()
		synctest.Wait()
		time.Sleep(time.Second)
		_, ok := f.get("svc/a")
		assert.True(t, ok, "svc/a not restored")
		assert.Greater(t, f.count("read"), reads, "the keys were not read again")
		assert.Contains(t, evs.changes("svc/a"), Deleted)
		mustClose(t, k)
	})
}

// TestOwnersOfSharedKeys: a key registered by several keepers of one hub
// has each of them as an owner, in the order they registered it, once
// each; dropping the first owner hands the key to the next, and the key
// leaves the index with its last owner.
func TestOwnersOfSharedKeys(t *testing.T) {
	o := owners{one: map[string]*keyWatch{}}
	a, b, c := &keyWatch{}, &keyWatch{}, &keyWatch{}
	assert.True(t, o.add("k", a))
	assert.False(t, o.add("k", a), "an owner was added twice")
	assert.True(t, o.add("k", b))
	assert.True(t, o.add("k", c))
	assert.False(t, o.add("k", c), "an owner was added twice")
	assert.True(t, o.add("other", b))
	assert.Equal(t, []*keyWatch{a, b, c}, o.of("k"))

	o.remove("k", a)
	assert.Equal(t, []*keyWatch{b, c}, o.of("k"))
	o.remove("k", c)
	assert.Equal(t, []*keyWatch{b}, o.of("k"))
	assert.Empty(t, o.more, "a key with one owner left kept the others' list")
	o.remove("k", a) // not an owner any more: nothing changes
	assert.Equal(t, []*keyWatch{b}, o.of("k"))
	o.remove("k", b)
	assert.Nil(t, o.of("k"))
	assert.Len(t, o.one, 1)
	assert.Equal(t, []*keyWatch{b}, o.of("other"))
}

// running reports whether the hub's watch goroutine runs.
func (h *watchHub) running() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.cancel != nil
}
