package testbed

import (
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Proxy is a TCP fault proxy on loopback in front of one etcd client URL.
// It can stall every byte silently (a partition: connections stay open and
// nothing arrives, as when packets are dropped), add delay, refuse new
// connections and reset the open ones. It counts the bytes it forwards, so
// a test can tell which member carries a long-lived stream.
//
// etcd's pkg/v3/proxy does blackhole, delay and pause too, but it listens on
// every interface, drops the bytes it blackholes (which breaks HTTP/2
// framing when healed, unlike a real partition) and can neither refuse nor
// count.
type Proxy struct {
	target string
	addr   string
	bytes  atomic.Int64
	wg     sync.WaitGroup

	// mu guards everything below.
	mu      sync.Mutex
	ln      net.Listener
	stalled chan struct{} // closed while traffic flows; open while stalled
	delay   time.Duration
	conns   map[net.Conn]struct{}
	closed  bool
}

// NewProxy listens on a free loopback port and forwards to target
// (host:port).
func NewProxy(target string) (*Proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("proxy: %w", err)
	}
	flowing := make(chan struct{})
	close(flowing)
	p := &Proxy{target: target, addr: ln.Addr().String(), ln: ln, stalled: flowing, conns: map[net.Conn]struct{}{}}
	p.serve(ln)
	return p, nil
}

// Addr is the proxy's host:port.
func (p *Proxy) Addr() string { return p.addr }

// Target is the address the proxy forwards to.
func (p *Proxy) Target() string { return p.target }

// URL is the proxy's address as an etcd client URL.
func (p *Proxy) URL() string { return "http://" + p.addr }

// Bytes is the number of bytes forwarded so far, both ways.
func (p *Proxy) Bytes() int64 { return p.bytes.Load() }

// Stall stops forwarding in both directions without closing anything: the
// peer sees silence. Bytes already read wait in the proxy until Heal.
func (p *Proxy) Stall() {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.stalled:
		p.stalled = make(chan struct{})
	default:
	}
}

// Heal ends a Stall.
func (p *Proxy) Heal() {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.stalled:
	default:
		close(p.stalled)
	}
}

// Delay holds every chunk for d before forwarding it; zero removes it.
func (p *Proxy) Delay(d time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.delay = d
}

// Refuse closes the listener, so new connections are refused, and resets
// every open connection.
func (p *Proxy) Refuse() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ln != nil {
		_ = p.ln.Close()
		p.ln = nil
	}
	p.resetLocked()
}

// Accept listens again on the same address after Refuse.
func (p *Proxy) Accept() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ln != nil || p.closed {
		return nil
	}
	ln, err := net.Listen("tcp", p.addr)
	if err != nil {
		return fmt.Errorf("proxy: listen again on %s: %w", p.addr, err)
	}
	p.ln = ln
	p.serve(ln)
	return nil
}

// Reset resets every open connection (RST, not FIN); new ones are accepted.
func (p *Proxy) Reset() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.resetLocked()
}

func (p *Proxy) resetLocked() {
	for c := range p.conns {
		if tc, ok := c.(*net.TCPConn); ok {
			_ = tc.SetLinger(0)
		}
		_ = c.Close()
		delete(p.conns, c)
	}
}

// Close stops the proxy and waits for its goroutines.
func (p *Proxy) Close() {
	p.mu.Lock()
	p.closed = true
	if p.ln != nil {
		_ = p.ln.Close()
		p.ln = nil
	}
	p.resetLocked()
	select {
	case <-p.stalled:
	default:
		close(p.stalled)
	}
	p.mu.Unlock()
	p.wg.Wait()
}

func (p *Proxy) serve(ln net.Listener) {
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			in, err := ln.Accept()
			if err != nil {
				return
			}
			out, err := net.DialTimeout("tcp", p.target, 5*time.Second)
			if err != nil {
				// The member is down: the client sees the connection fail.
				_ = in.Close()
				continue
			}
			if !p.track(in, out) {
				return
			}
			p.wg.Add(2)
			go p.pipe(out, in)
			go p.pipe(in, out)
		}
	}()
}

func (p *Proxy) track(conns ...net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		for _, c := range conns {
			_ = c.Close()
		}
		return false
	}
	for _, c := range conns {
		p.conns[c] = struct{}{}
	}
	return true
}

// untrack forgets connections that were closed.
func (p *Proxy) untrack(conns ...net.Conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range conns {
		delete(p.conns, c)
	}
}

// pipe copies src to dst, honouring stalls and delay, and closes both when
// either side ends. Delay is latency, not a throttle: a reader stamps each
// chunk as it arrives and a writer sends it delay later, so chunks in flight
// overlap as packets on a slow link do.
func (p *Proxy) pipe(dst, src net.Conn) {
	defer p.wg.Done()
	type chunk struct {
		data []byte
		at   time.Time
	}
	chunks := make(chan chunk, 1024)
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		defer func() {
			_ = dst.Close()
			_ = src.Close()
			p.untrack(dst, src)
		}()
		for c := range chunks {
			p.mu.Lock()
			stalled, delay := p.stalled, p.delay
			p.mu.Unlock()
			if wait := time.Until(c.at.Add(delay)); wait > 0 {
				time.Sleep(wait)
			}
			<-stalled
			if _, err := dst.Write(c.data); err != nil {
				// Drain so the reader never blocks on a dead writer.
				for range chunks {
				}
				return
			}
			p.bytes.Add(int64(len(c.data)))
		}
	}()
	defer close(chunks)
	buf := make([]byte, 32*1024)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			chunks <- chunk{append([]byte(nil), buf[:n]...), time.Now()}
		}
		if err != nil {
			return
		}
	}
}
