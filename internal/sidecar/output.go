package sidecar

import (
	"fmt"
	"io"
	"strings"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/leasekeeper/leasekeeper/statemachine"
)

// Output is where the command reports: human lines with times relative to
// its start, or JSON log lines for machines.
type Output struct {
	printer *Printer    // human format only
	log     *zap.Logger // the keeper's logger
}

// NewOutput returns an Output writing to w in format "human" or "json";
// diagnostics of the human format go to errw.
func NewOutput(format string, w, errw io.Writer) (*Output, error) {
	switch format {
	case "human":
		// Transitions are printed by the Output; the keeper logs only
		// errors (a panicking callback, a refused key).
		enc := zapcore.NewConsoleEncoder(zap.NewDevelopmentEncoderConfig())
		core := zapcore.NewCore(enc, zapcore.AddSync(errw), zapcore.ErrorLevel)
		return &Output{printer: NewPrinter(w), log: zap.New(core)}, nil
	case "json":
		enc := zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig())
		core := zapcore.NewCore(enc, zapcore.AddSync(w), zapcore.InfoLevel)
		return &Output{log: zap.New(core)}, nil
	}
	return nil, fmt.Errorf("log format must be human or json, got %q", format)
}

// Logger is the logger to give the keeper.
func (o *Output) Logger() *zap.Logger { return o.log }

// OnTransition is the callback to give the keeper: it prints each
// transition in the human format, and is nil in JSON, where the keeper's
// own log line per transition is the output.
func (o *Output) OnTransition() func(statemachine.Transition) {
	if o.printer == nil {
		return nil
	}
	return o.printer.Transition
}

// Event reports something the command did, with key-value pairs.
func (o *Output) Event(msg string, kv ...any) {
	if o.printer == nil {
		fields := make([]zap.Field, 0, len(kv)/2)
		for i := 0; i+1 < len(kv); i += 2 {
			fields = append(fields, zap.Any(fmt.Sprint(kv[i]), kv[i+1]))
		}
		o.log.Info(msg, fields...)
		return
	}
	var b strings.Builder
	b.WriteString(msg)
	for i := 0; i+1 < len(kv); i += 2 {
		fmt.Fprintf(&b, "  %v=%v", kv[i], kv[i+1])
	}
	o.printer.Printf("%s", b.String())
}

// Sync flushes the logger.
func (o *Output) Sync() { _ = o.log.Sync() }
