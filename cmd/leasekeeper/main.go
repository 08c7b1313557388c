// Command leasekeeper holds a registration in etcd for any process and
// reports its health. Run it with no arguments for a live demo on an
// embedded etcd, "leasekeeper demo" for an outage and recovery, or
// "leasekeeper run" against a real cluster. "leasekeeper -h" lists the
// flags.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

// usageError is a mistake in the command line: reported with the usage,
// exit code 2. shown says the flag package already printed both.
type usageError struct {
	msg   string
	shown bool
}

func (e *usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error {
	return &usageError{msg: fmt.Sprintf(format, args...)}
}

// terminating are the signals a supervisor or a terminal sends to stop a
// process: each starts the drain, none kills the command outright.
var terminating = []os.Signal{os.Interrupt, syscall.SIGTERM, syscall.SIGHUP}

func main() {
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, terminating...)
	code := run(context.Background(), sigs, os.Args[1:], os.Stdout, os.Stderr)
	signal.Stop(sigs)
	os.Exit(code)
}

// run dispatches to a subcommand and turns its outcome into an exit code.
// sigs carries the terminating signals the process receives.
func run(ctx context.Context, sigs <-chan os.Signal, args []string, stdout, stderr io.Writer) int {
	name := ""
	if len(args) > 0 && len(args[0]) > 0 && args[0][0] != '-' {
		name, args = args[0], args[1:]
	}
	var code int
	var err error
	switch name {
	case "":
		code, err = cmdLocal(ctx, sigs, args, stdout, stderr)
	case "run":
		code, err = cmdRun(ctx, sigs, args, stdout, stderr)
	case "demo":
		dctx, stop := untilSignal(ctx, sigs)
		code, err = cmdDemo(dctx, args, stdout, stderr)
		stop()
	case "help":
		fmt.Fprint(stdout, topUsage)
		return 0
	default:
		err = usagef("unknown command %q", name)
	}
	var ue *usageError
	switch {
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.As(err, &ue):
		if !ue.shown {
			fmt.Fprintf(stderr, "leasekeeper: %s\n\n%s", ue.msg, topUsage)
		}
		return 2
	case err != nil:
		fmt.Fprintf(stderr, "leasekeeper: %v\n", err)
		return 1
	}
	return code
}

// untilSignal returns a context that ends at the first signal on sigs.
func untilSignal(ctx context.Context, sigs <-chan os.Signal) (context.Context, func()) {
	ctx, cancel := context.WithCancel(ctx)
	go func() {
		select {
		case <-sigs:
			cancel()
		case <-ctx.Done():
		}
	}()
	return ctx, cancel
}

const topUsage = `usage:
  leasekeeper [flags]                  hold a demo key on an embedded etcd until Ctrl-C
  leasekeeper demo [flags]             an outage longer than the TTL, and the recovery
  leasekeeper run --endpoints URLS (--key K [--value V] | --service S --addr HOST:PORT [--metadata JSON])
                  [flags] [-- CMD ARGS...]
                                       hold the registration in a real cluster until a
                                       signal, or while CMD runs (its exit code is passed on)
  leasekeeper help                     this text

On SIGTERM, SIGINT or SIGHUP the registration drains: deregistered at once,
then -drain-delay of serving, then the signal goes to CMD (SIGKILL after
-kill-timeout), then the lease is revoked. A second signal skips the delay.

"leasekeeper COMMAND -h" lists the flags of a command.
`
