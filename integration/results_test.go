package integration

import (
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"github.com/leasekeeper/leasekeeper/statemachine"
)

// result is one scenario's row in the results table. Durations count from
// the start of the fault; negative means "did not happen".
type result struct {
	scenario   string
	ttl        time.Duration
	path       []statemachine.State
	toDegraded time.Duration
	toFailed   time.Duration
	margin     time.Duration // server deleted the keys this long after Failed
	deleted    bool
	expiry     string        // replaces the margin column when set
	heal       time.Duration // from the end of the fault to Healthy
	// answersToHealthy is, for each keeper (the client built with default
	// options, then the one with a short reconnect backoff), how long after
	// etcd answered again it was healthy; negative: it stayed healthy.
	answersToHealthy []time.Duration
	flaps            int    // returns to a state the fault moved the keeper away from
	lease            string // "same" or "new" lease once healed
	note             string
}

var (
	resultsMu sync.Mutex
	results   []result
)

func record(r result) {
	resultsMu.Lock()
	defer resultsMu.Unlock()
	results = append(results, r)
}

func printResults(w io.Writer) {
	resultsMu.Lock()
	defer resultsMu.Unlock()
	discoveryMu.Lock()
	if len(discoveryResults) > 0 || len(results) > 0 {
		fmt.Fprintf(w, "against etcd %s processes\n\n", etcdVersion)
	}
	if len(discoveryResults) > 0 {
		fmt.Fprintln(w, "| discovery scenario | calls | failed | note |")
		fmt.Fprintln(w, "|---|---|---|---|")
		for _, r := range discoveryResults {
			fmt.Fprintln(w, r)
		}
		fmt.Fprintln(w)
	}
	discoveryMu.Unlock()
	if len(results) == 0 {
		return
	}
	fmt.Fprintln(w, "| scenario | ttl | state path | to degraded | to failed | failed before expiry by | heal to healthy | etcd answers → healthy: default client / short reconnect | flaps | lease | note |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|---|---|---|")
	for _, r := range results {
		margin := "no expiry"
		switch {
		case r.expiry != "":
			margin = r.expiry
		case r.deleted:
			margin = dur(r.margin)
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s | %s | %s | %d | %s | %s |\n", r.scenario, r.ttl, pathString(r.path),
			dur(r.toDegraded), dur(r.toFailed), margin, dur(r.heal), durs(r.answersToHealthy), r.flaps, r.lease, r.note)
	}
}

func dur(d time.Duration) string {
	if d < 0 {
		return "-"
	}
	return d.Round(10 * time.Millisecond).String()
}

// durs prints one duration per keeper, "-" for one that stayed healthy,
// in milliseconds.
func durs(ds []time.Duration) string {
	if len(ds) == 0 {
		return "-"
	}
	var s []string
	for _, d := range ds {
		if d < 0 {
			s = append(s, "-")
		} else {
			s = append(s, d.Round(time.Millisecond).String())
		}
	}
	return strings.Join(s, " / ")
}

func pathString(p []statemachine.State) string {
	var s []string
	for _, st := range p {
		s = append(s, st.String())
	}
	return strings.Join(s, " → ")
}
