package main

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
)

// TestNoMore: a figure no more than KeepAlive's is met; one more by no
// more than either holder's two phases differ is met within the noise,
// and says by how much; one more by more is missed.
func TestNoMore(t *testing.T) {
	phases := func(a, b time.Duration) usage { return both(usage{server: a}, usage{server: b}) }
	ka := phases(700*time.Millisecond, 800*time.Millisecond) // 1.5 s, phases 0.1 s apart
	for _, tc := range []struct {
		name string
		k    usage
		want string
	}{
		{"less", phases(700*time.Millisecond, 700*time.Millisecond), "met"},
		{"equal", phases(750*time.Millisecond, 750*time.Millisecond), "met"},
		{"more within KeepAlive's spread", phases(760*time.Millisecond, 800*time.Millisecond), "met within the run's noise (more by 0.06 s, where two phases of one holder differ by up to 0.10 s)"},
		{"more within its own spread", phases(600*time.Millisecond, 1000*time.Millisecond), "met within the run's noise (more by 0.10 s, where two phases of one holder differ by up to 0.40 s)"},
		{"more than either spread", phases(800*time.Millisecond, 850*time.Millisecond), "**missed**"},
	} {
		assert.Equal(t, tc.want, noMore(tc.k, ka, serverOf, "s"), tc.name)
	}
}

// TestByPlace lists each phase's figure in the order the phases ran, as
// abbabaab places them.
func TestByPlace(t *testing.T) {
	ms := func(v ...int) []usage {
		var us []usage
		for _, x := range v {
			us = append(us, usage{server: time.Duration(x) * time.Millisecond})
		}
		return us
	}
	k, a := both(ms(10, 40, 60, 70)...), both(ms(20, 30, 50, 80)...)
	k.places, a.places = []int{1, 4, 6, 7}, []int{2, 3, 5, 8}
	assert.Equal(t, "k 0.01, a 0.02, a 0.03, k 0.04, a 0.05, k 0.06, k 0.07, a 0.08", byPlace(k, a, serverOf))
	assert.Equal(t, 180*time.Millisecond, k.server, "summed")
	assert.Equal(t, "met within the run's noise (more by 0.00 s, where two phases of one holder differ by up to 0.06 s)",
		noMore(both(ms(10, 40, 60, 71)...), a, serverOf, "s"), "the spread is the widest of any two phases")
}
