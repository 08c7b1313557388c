package integration

import (
	"context"
	"slices"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
)

// probeEvery is how often the prober asks etcd.
const probeEvery = 20 * time.Millisecond

// prober tells when etcd answers: every probeEvery it sends a linearizable
// read through the endpoints the keepers use, each on its own with a
// timeout, so a read held by a stalled member is answered the moment the
// stall ends. Its client reconnects within tens of milliseconds, so it
// hears of a member coming back before any keeper could.
type prober struct {
	cli  *clientv3.Client
	stop context.CancelFunc
	wg   sync.WaitGroup

	mu      sync.Mutex
	answers []time.Time // when a read was answered, in time order
}

// probeReconnect makes the prober's client retry a connection every few
// tens of milliseconds.
var probeReconnect = grpc.WithConnectParams(grpc.ConnectParams{
	Backoff:           backoff.Config{BaseDelay: 10 * time.Millisecond, Multiplier: 1.2, MaxDelay: 30 * time.Millisecond},
	MinConnectTimeout: time.Second,
})

func startProber(endpoints []string) (*prober, error) {
	cli, err := clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: 5 * time.Second, Logger: zap.NewNop(),
		DialOptions: []grpc.DialOption{probeReconnect}})
	if err != nil {
		return nil, err
	}
	ctx, stop := context.WithCancel(context.Background())
	p := &prober{cli: cli, stop: stop}
	p.wg.Add(1)
	go p.run(ctx)
	return p, nil
}

func (p *prober) run(ctx context.Context) {
	defer p.wg.Done()
	t := time.NewTicker(probeEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			_, err := p.cli.Get(rctx, "lk-probe")
			cancel()
			if err == nil {
				p.answered(time.Now())
			}
		}()
	}
}

// answered records an answer at t, keeping the answers in order.
func (p *prober) answered(t time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	i := len(p.answers)
	for i > 0 && p.answers[i-1].After(t) {
		i--
	}
	p.answers = slices.Insert(p.answers, i, t)
}

// close stops probing and closes the client.
func (p *prober) close() {
	p.stop()
	p.wg.Wait()
	_ = p.cli.Close()
}

// answerWait is how long answeredAfter waits for a first answer: longer
// than a probe's own timeout, so a read in flight is counted.
const answerWait = 3 * time.Second

// answeredAfter returns the first time etcd answered at or after t. A
// keeper can hear etcd before the prober does, so when no answer is
// recorded yet it waits up to answerWait for one.
func (p *prober) answeredAfter(t time.Time) (time.Time, bool) {
	for deadline := time.Now().Add(answerWait); ; time.Sleep(probeEvery) {
		if a, ok := p.firstAnswer(t); ok || time.Now().After(deadline) {
			return a, ok
		}
	}
}

func (p *prober) firstAnswer(t time.Time) (time.Time, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, a := range p.answers {
		if !a.Before(t) {
			return a, true
		}
	}
	return time.Time{}, false
}

// silentFor is how long etcd must not answer for the prober to count it
// as not answering: longer than any hiccup of a loaded machine, shorter
// than an election.
const silentFor = 300 * time.Millisecond

// silentBetween reports whether etcd did not answer for silentFor or more
// at some point in [from, to].
func (p *prober) silentBetween(from, to time.Time) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	last := from
	for _, a := range p.answers {
		if a.Before(from) {
			continue
		}
		if a.After(to) {
			break
		}
		if a.Sub(last) >= silentFor {
			return true
		}
		last = a
	}
	return to.Sub(last) >= silentFor
}
