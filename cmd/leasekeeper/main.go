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

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run dispatches to a subcommand and turns its outcome into an exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	name := ""
	if len(args) > 0 && len(args[0]) > 0 && args[0][0] != '-' {
		name, args = args[0], args[1:]
	}
	var code int
	var err error
	switch name {
	case "":
		code, err = cmdLocal(ctx, args, stdout, stderr)
	case "run":
		code, err = cmdRun(ctx, args, stdout, stderr)
	case "demo":
		code, err = cmdDemo(ctx, args, stdout, stderr)
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

const topUsage = `usage:
  leasekeeper [flags]                  hold a demo key on an embedded etcd until Ctrl-C
  leasekeeper demo [flags]             an outage longer than the TTL, and the recovery
  leasekeeper run --endpoints URLS --key K [--value V] [flags] [-- CMD ARGS...]
                                       hold K in a real cluster until SIGINT/SIGTERM,
                                       or while CMD runs (its exit code is passed on)

"leasekeeper COMMAND -h" lists the flags of a command.
`
