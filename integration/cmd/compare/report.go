package main

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"time"
)

// report collects the figures and writes them as Markdown.
type report struct {
	o        options
	started  time.Time
	sections []string
}

func (r *report) add(s string) { r.sections = append(r.sections, s) }

func (r *report) write(w io.Writer, machine string) {
	fmt.Fprintf(w, "# Benchmarks: leasekeeper vs etcd's own client\n\n")
	fmt.Fprintf(w, "Regenerate with `go run ./integration/cmd/compare -out BENCHMARKS.md` (about %s here).\n",
		time.Since(r.started).Round(time.Second))
	fmt.Fprintf(w, "Measured %s on %s, against etcd v3.7.3 processes on loopback.\n", r.started.Format("2006-01-02"), machine)
	fmt.Fprintf(w, "Fault runs: %d, lease TTL %s, faults started at random points of the keeper's renewal cycle, run i of n in the i-th n-th of it.\n\n", r.o.runs, r.o.ttl)
	for _, s := range r.sections {
		fmt.Fprintln(w, s)
	}
}

// stats is min / median / max of a sample, with the count.
type stats struct {
	min, med, max float64
	n             int
}

func summarize(xs []float64) stats {
	if len(xs) == 0 {
		return stats{}
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	return stats{min: s[0], med: s[len(s)/2], max: s[len(s)-1], n: len(s)}
}

func (s stats) format(unit string, prec int) string {
	if s.n == 0 {
		return "n/a"
	}
	f := "%." + fmt.Sprint(prec) + "f"
	return fmt.Sprintf(f+" / "+f+" / "+f+" %s", s.min, s.med, s.max, unit)
}

func seconds(ds []time.Duration) []float64 {
	out := make([]float64, 0, len(ds))
	for _, d := range ds {
		out = append(out, d.Seconds())
	}
	return out
}

func fractions(ds []time.Duration, of time.Duration) []float64 {
	out := make([]float64, 0, len(ds))
	for _, d := range ds {
		out = append(out, d.Seconds()/of.Seconds())
	}
	return out
}

func verdict(ok bool) string {
	if ok {
		return "met"
	}
	return "**missed**"
}

// table renders a Markdown table.
func table(header []string, rows [][]string) string {
	var b strings.Builder
	b.WriteString("| " + strings.Join(header, " | ") + " |\n|")
	for range header {
		b.WriteString("---|")
	}
	b.WriteString("\n")
	for _, r := range rows {
		b.WriteString("| " + strings.Join(r, " | ") + " |\n")
	}
	return b.String()
}
