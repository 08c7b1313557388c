package keeper

import (
	"context"
	"testing"
	"testing/synctest"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestWriteLockTurns: the lock passes to its waiters in turn, a waiter
// that gives up leaves no turn behind, and an idle lock keeps nothing.
func TestWriteLockTurns(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var w writeLock
		require.NoError(t, w.lock(context.Background()))
		ctx, cancel := context.WithCancel(context.Background())
		gaveUp := make(chan error, 1)
		go func() { gaveUp <- w.lock(ctx) }()
		var order []int
		done := make(chan struct{}, 2)
		for i := range 2 {
			synctest.Wait()
			go func() {
				if w.lock(context.Background()) == nil {
					order = append(order, i)
					w.unlock()
				}
				done <- struct{}{}
			}()
		}
		synctest.Wait()
		cancel()
		require.ErrorIs(t, <-gaveUp, context.Canceled)
		w.unlock()
		<-done
		<-done
		assert.Equal(t, []int{0, 1}, order, "waiters took the lock out of turn")
		require.NoError(t, w.lock(context.Background()), "the lock stayed with a waiter that gave up")
		w.unlock()
		assert.False(t, w.held)
		assert.Nil(t, w.head, "an idle lock keeps a waiter")
		assert.Nil(t, w.tail, "an idle lock keeps a waiter")
	})
}
