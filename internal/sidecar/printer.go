package sidecar

import (
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	lkerrors "github.com/leasekeeper/leasekeeper/errors"
	"github.com/leasekeeper/leasekeeper/statemachine"
)

// Printer writes one human-readable line per transition and per event,
// with the time since it was made:
//
//	+4.512s  healthy -> degraded  (timeout: keeper: time left ...)
type Printer struct {
	mu    sync.Mutex
	w     io.Writer
	start time.Time
}

// NewPrinter returns a Printer writing to w, timing from now.
func NewPrinter(w io.Writer) *Printer {
	return &Printer{w: w, start: time.Now()}
}

// Since returns the time since the printer was made.
func (p *Printer) Since(t time.Time) time.Duration { return t.Sub(p.start) }

// Transition prints t; it is a keeper.Callbacks.OnTransition.
func (p *Printer) Transition(t statemachine.Transition) {
	line := fmt.Sprintf("%s -> %s", t.From, t.To)
	if t.Cause != nil {
		line += fmt.Sprintf("  (%s)", causeText(t.Cause))
	}
	p.printAt(t.At, line)
}

// Printf prints an event line stamped now.
func (p *Printer) Printf(format string, args ...any) {
	p.printAt(time.Now(), fmt.Sprintf(format, args...))
}

func (p *Printer) printAt(at time.Time, line string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	fmt.Fprintf(p.w, "%+8.3fs  %s\n", p.Since(at).Seconds(), line)
}

// causeText is the cause's text, led by its kind unless the text already
// starts with it, as a classified error's does.
func causeText(err error) string {
	kind, text := lkerrors.KindOf(err).String(), err.Error()
	if strings.HasPrefix(text, kind+":") {
		return text
	}
	return kind + ": " + text
}
