package keeper

import (
	"context"
	"io"
	"strings"
	"sync"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/connectivity"
)

// fakeBackend is an in-memory etcd for tests on synctest's fake time. Leases
// expire on the server side by the fake clock and take their keys with them.
type fakeBackend struct {
	mu      sync.Mutex
	nextID  clientv3.LeaseID
	leases  map[clientv3.LeaseID]*fakeLease
	kvs     map[string]fakeKV
	down    bool          // calls hang until their context ends, as for an unreachable cluster
	stalled bool          // as down, but the connection still looks READY (a silent partition)
	readyC  chan struct{} // closed when down or stalled ends
	// stateChanged is closed when down starts; the connection is READY
	// until then.
	stateChanged chan struct{}
	err          error         // when set, every call fails at once with it
	latency      time.Duration // each call takes this long
	minTTL       int64         // grants below it are rounded up, as etcd does
	refuse       string        // keys with this prefix are refused with permission denied, and so are renewals of leases holding one, as etcd v3.7 does
	hang         int           // this many next keepalives hang, as on a silent member
	renewErr     error         // when set, keepalives fail at once with it
	putHang      bool          // puts hang until their context ends
	acqHang      bool          // acquires hang until their context ends
	calls        map[string]int
	expired      []string // keys deleted by lease expiry, in order
	rev          int64    // revision of the last write

	// The watch, for fakes made by newWatchingFake: every change since the
	// start, changed closed and replaced at each one, and the revision
	// compacted up to.
	watching  bool
	events    []fakeEvent
	changed   chan struct{}
	compacted int64
}

// fakeEvent is one change of a key, at a revision.
type fakeEvent struct {
	rev int64
	key string
	put bool
	kv  fakeKV
}

type fakeLease struct {
	ttl     int64
	expires time.Time
}

type fakeKV struct {
	value  string
	lease  clientv3.LeaseID
	create int64 // revision the key was created at
}

func newFake() *fakeBackend {
	return &fakeBackend{
		nextID:       100,
		leases:       map[clientv3.LeaseID]*fakeLease{},
		kvs:          map[string]fakeKV{},
		readyC:       make(chan struct{}),
		stateChanged: make(chan struct{}),
		minTTL:       2,
		calls:        map[string]int{},
		changed:      make(chan struct{}),
	}
}

// newWatchingFake returns a fake whose keys can be watched, as etcd's can:
// the keeper then watches them, on fake time.
func newWatchingFake() *fakeBackend {
	f := newFake()
	f.watching = true
	return f
}

// eventLocked records a change of key at the current revision and wakes
// the watches.
func (f *fakeBackend) eventLocked(key string, put bool, kv fakeKV) {
	f.events = append(f.events, fakeEvent{rev: f.rev, key: key, put: put, kv: kv})
	close(f.changed)
	f.changed = make(chan struct{})
}

// call waits the latency, or until ctx ends while down, then reports the
// injected error if any. It returns with f.mu held when it returns nil.
func (f *fakeBackend) call(ctx context.Context, name string) error {
	f.mu.Lock()
	f.calls[name]++
	down, latency, ready, err := f.down || f.stalled, f.latency, f.readyC, f.err
	f.mu.Unlock()
	if down && err != nil {
		// A refusal while the connection is down, as a refused TLS
		// handshake is: it fails at once.
		return err
	}
	if down {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-ready:
			// Reconnected: the request goes through now.
		}
	}
	if latency > 0 {
		t := time.NewTimer(latency)
		defer t.Stop()
		select {
		case <-t.C:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	f.mu.Lock()
	if f.err != nil {
		err := f.err
		f.mu.Unlock()
		return err
	}
	f.expireLocked(time.Now())
	return nil
}

func (f *fakeBackend) expireLocked(now time.Time) {
	for id, l := range f.leases {
		if !now.Before(l.expires) {
			f.dropLocked(id)
		}
	}
}

func (f *fakeBackend) dropLocked(id clientv3.LeaseID) {
	delete(f.leases, id)
	bumped := false
	for k, v := range f.kvs {
		if v.lease == id {
			if !bumped {
				f.rev++
				bumped = true
			}
			delete(f.kvs, k)
			f.expired = append(f.expired, k)
			f.eventLocked(k, false, v)
		}
	}
}

func (f *fakeBackend) grant(ctx context.Context, ttl int64) (clientv3.LeaseID, int64, error) {
	if err := f.call(ctx, "grant"); err != nil {
		return 0, 0, err
	}
	defer f.mu.Unlock()
	ttl = max(ttl, f.minTTL)
	f.nextID++
	f.leases[f.nextID] = &fakeLease{ttl: ttl, expires: time.Now().Add(time.Duration(ttl) * time.Second)}
	return f.nextID, ttl, nil
}

// keepAliveAsync runs keepAliveOnce on a goroutine of its own.
func (f *fakeBackend) keepAliveAsync(id clientv3.LeaseID, _ bool, rep replier) canceler {
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		ttl, err := f.keepAliveOnce(ctx, id)
		cancel()
		rep.reply(ttl, err)
	}()
	return cancelFunc(cancel)
}

func (f *fakeBackend) keepAliveOnce(ctx context.Context, id clientv3.LeaseID) (int64, error) {
	f.mu.Lock()
	hang, renewErr := f.hang > 0, f.renewErr
	if hang {
		f.hang--
	}
	if hang || renewErr != nil {
		f.calls["keepalive"]++
	}
	f.mu.Unlock()
	if renewErr != nil {
		return 0, renewErr
	}
	if hang {
		<-ctx.Done()
		return 0, ctx.Err()
	}
	if err := f.call(ctx, "keepalive"); err != nil {
		return 0, err
	}
	defer f.mu.Unlock()
	l, ok := f.leases[id]
	if !ok {
		return 0, rpctypes.ErrLeaseNotFound
	}
	for key, v := range f.kvs {
		if v.lease == id && f.refused(key) {
			return 0, rpctypes.ErrPermissionDenied
		}
	}
	l.expires = time.Now().Add(time.Duration(l.ttl) * time.Second)
	return l.ttl, nil
}

func (f *fakeBackend) timeToLive(ctx context.Context, id clientv3.LeaseID) (int64, error) {
	if err := f.call(ctx, "ttl"); err != nil {
		return 0, err
	}
	defer f.mu.Unlock()
	l, ok := f.leases[id]
	if !ok {
		return -1, nil
	}
	return int64(time.Until(l.expires) / time.Second), nil
}

func (f *fakeBackend) revoke(ctx context.Context, id clientv3.LeaseID) error {
	if err := f.call(ctx, "revoke"); err != nil {
		return err
	}
	defer f.mu.Unlock()
	if _, ok := f.leases[id]; !ok {
		return rpctypes.ErrLeaseNotFound
	}
	f.dropLocked(id)
	return nil
}

func (f *fakeBackend) put(ctx context.Context, id clientv3.LeaseID, kvs []kv) (putResult, error) {
	f.mu.Lock()
	hang := f.putHang
	f.mu.Unlock()
	if hang {
		<-ctx.Done()
		return putResult{}, ctx.Err()
	}
	if err := f.call(ctx, "put"); err != nil {
		return putResult{}, err
	}
	defer f.mu.Unlock()
	if _, ok := f.leases[id]; !ok {
		return putResult{}, rpctypes.ErrLeaseNotFound
	}
	if len(kvs) > 128 {
		return putResult{}, rpctypes.ErrTooManyOps
	}
	for _, p := range kvs {
		if f.refused(p.key) {
			return putResult{}, rpctypes.ErrPermissionDenied
		}
	}
	f.rev++
	r := putResult{rev: f.rev}
	for _, p := range kvs {
		r.create = append(r.create, f.putLocked(id, p))
	}
	return r, nil
}

// putLocked writes p on lease id at the current revision and returns the
// key's create revision.
func (f *fakeBackend) putLocked(id clientv3.LeaseID, p kv) int64 {
	create := f.rev
	if old, ok := f.kvs[p.key]; ok {
		create = old.create
	}
	f.kvs[p.key] = fakeKV{p.value, id, create}
	f.eventLocked(p.key, true, f.kvs[p.key])
	return create
}

func (f *fakeBackend) acquire(ctx context.Context, id clientv3.LeaseID, p kv) (acquireResult, error) {
	f.mu.Lock()
	hang := f.acqHang
	f.mu.Unlock()
	if hang {
		f.mu.Lock()
		f.calls["acquire"]++
		f.mu.Unlock()
		<-ctx.Done()
		return acquireResult{}, ctx.Err()
	}
	if err := f.call(ctx, "acquire"); err != nil {
		return acquireResult{}, err
	}
	defer f.mu.Unlock()
	if old, ok := f.kvs[p.key]; ok && old.lease != id {
		return acquireResult{rev: f.rev, holder: old.lease, create: old.create}, nil
	}
	if _, ok := f.leases[id]; !ok {
		return acquireResult{}, rpctypes.ErrLeaseNotFound
	}
	f.rev++
	return acquireResult{ok: true, rev: f.rev, create: f.putLocked(id, p)}, nil
}

func (f *fakeBackend) read(ctx context.Context, start, end string) (int64, []*mvccpb.KeyValue, error) {
	if err := f.call(ctx, "read"); err != nil {
		return 0, nil, err
	}
	defer f.mu.Unlock()
	var out []*mvccpb.KeyValue
	for k, v := range f.kvs {
		if k >= start && k < end {
			out = append(out, &mvccpb.KeyValue{Key: []byte(k), Value: []byte(v.value), Lease: int64(v.lease), CreateRevision: v.create})
		}
	}
	return f.rev, out, nil
}

// watches reports whether the fake was made by newWatchingFake.
func (f *fakeBackend) watches() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.watching
}

// watch sends the changes in [start, end) from revision rev on, as etcd's
// watch does. The stream breaks when the connection goes down; a revision
// compacted away gets a response saying so.
func (f *fakeBackend) watch(ctx context.Context, start, end string, rev int64) (keyStream, error) {
	ch := make(chan *pb.WatchResponse)
	go func() {
		defer close(ch)
		for {
			f.mu.Lock()
			if f.down {
				f.mu.Unlock()
				return
			}
			if rev <= f.compacted {
				resp := &pb.WatchResponse{Canceled: true, CompactRevision: f.compacted}
				f.mu.Unlock()
				select {
				case ch <- resp:
				case <-ctx.Done():
				}
				return
			}
			var evs []*mvccpb.Event
			if !f.stalled {
				for _, e := range f.events {
					if e.rev >= rev && e.key >= start && e.key < end {
						evs = append(evs, e.event())
					}
				}
			}
			changed, downC, ready := f.changed, f.stateChanged, f.readyC
			if !f.stalled {
				ready = nil
			}
			f.mu.Unlock()
			if len(evs) > 0 {
				rev = evs[len(evs)-1].Kv.ModRevision + 1
				select {
				case ch <- &pb.WatchResponse{Events: evs}:
				case <-ctx.Done():
					return
				}
			}
			select {
			case <-changed:
			case <-downC:
			case <-ready:
			case <-ctx.Done():
				return
			}
		}
	}()
	return fakeKeyStream{ctx, ch}, nil
}

// fakeKeyStream is the fake's watch stream: it ends with the context it
// was opened on, or with io.EOF when the fake's watch ended.
type fakeKeyStream struct {
	ctx context.Context
	ch  <-chan *pb.WatchResponse
}

func (s fakeKeyStream) recv() (*pb.WatchResponse, error) {
	select {
	case resp, ok := <-s.ch:
		if !ok {
			return nil, io.EOF
		}
		return resp, watchEnded(resp)
	case <-s.ctx.Done():
		return nil, s.ctx.Err()
	}
}

// event is e as the watch delivers it.
func (e fakeEvent) event() *mvccpb.Event {
	kv := &mvccpb.KeyValue{Key: []byte(e.key), ModRevision: e.rev}
	if !e.put {
		return &mvccpb.Event{Type: mvccpb.DELETE, Kv: kv}
	}
	kv.Value, kv.Lease, kv.CreateRevision = []byte(e.kv.value), int64(e.kv.lease), e.kv.create
	return &mvccpb.Event{Type: mvccpb.PUT, Kv: kv}
}

// deleteKey deletes key behind the keeper's back.
func (f *fakeBackend) deleteKey(key string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if v, ok := f.kvs[key]; ok {
		f.rev++
		delete(f.kvs, key)
		f.eventLocked(key, false, v)
	}
}

// overwrite writes key behind the keeper's back, with no lease.
func (f *fakeBackend) overwrite(key, value string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.rev++
	f.putLocked(0, kv{key, value})
}

// compact forgets the history up to the current revision: a watch that
// needs it hears it was compacted.
func (f *fakeBackend) compact() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.compacted = f.rev
	close(f.changed)
	f.changed = make(chan struct{})
}

func (f *fakeBackend) del(ctx context.Context, id clientv3.LeaseID, key string) error {
	if err := f.call(ctx, "del"); err != nil {
		return err
	}
	defer f.mu.Unlock()
	if v, ok := f.kvs[key]; ok && v.lease == id {
		f.rev++
		delete(f.kvs, key)
		f.eventLocked(key, false, v)
	}
	return nil
}

func (f *fakeBackend) connState() connectivity.State {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.down {
		return connectivity.TransientFailure
	}
	return connectivity.Ready
}

// waitStateChange waits for down to change, which is the only thing that
// changes the fake's connection state.
func (f *fakeBackend) waitStateChange(ctx context.Context, s connectivity.State) bool {
	f.mu.Lock()
	ready, changed := f.readyC, f.stateChanged
	down := f.down
	f.mu.Unlock()
	if (s == connectivity.Ready) == down {
		return true
	}
	if down {
		changed = ready
	}
	select {
	case <-changed:
		return true
	case <-ctx.Done():
		return false
	}
}

func (f *fakeBackend) connect() {}

// resetConnectBackoff counts the calls, as "reset".
func (f *fakeBackend) resetConnectBackoff() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls["reset"]++
}

func (f *fakeBackend) close() {}

// setDown cuts the keeper off (every call hangs) or reconnects it.
func (f *fakeBackend) setDown(down bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.down == down {
		return
	}
	f.down = down
	if down {
		f.readyC = make(chan struct{})
		close(f.stateChanged)
	} else {
		close(f.readyC)
		f.stateChanged = make(chan struct{})
	}
}

// setStalled starts or ends a silent partition: calls hang, the connection
// stays READY, and calls in flight go through when it ends.
func (f *fakeBackend) setStalled(stalled bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.stalled == stalled {
		return
	}
	f.stalled = stalled
	if stalled {
		f.readyC = make(chan struct{})
	} else {
		close(f.readyC)
	}
}

// restart models an etcd restart or leader change: the server resets every
// lease's expiry to a full TTL from now.
func (f *fakeBackend) restart() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.expireLocked(time.Now())
	for _, l := range f.leases {
		l.expires = time.Now().Add(time.Duration(l.ttl) * time.Second)
	}
}

// refused reports whether the user may not write key. Called with mu held.
func (f *fakeBackend) refused(key string) bool {
	return f.refuse != "" && strings.HasPrefix(key, f.refuse)
}

// setRefuse revokes the permission to write keys with prefix; "" grants
// every key again.
func (f *fakeBackend) setRefuse(prefix string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.refuse = prefix
}

func (f *fakeBackend) setErr(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.err = err
}

// get returns key's value and lease as the server has them now.
func (f *fakeBackend) get(key string) (fakeKV, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.expireLocked(time.Now())
	v, ok := f.kvs[key]
	return v, ok
}

func (f *fakeBackend) count(name string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls[name]
}

// liveLeases counts the leases the server holds now.
func (f *fakeBackend) liveLeases() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.expireLocked(time.Now())
	return len(f.leases)
}

func (f *fakeBackend) leaseAlive(id clientv3.LeaseID) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.expireLocked(time.Now())
	_, ok := f.leases[id]
	return ok
}

func (f *fakeBackend) setHang(n int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.hang = n
}

func (f *fakeBackend) setRenewErr(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.renewErr = err
}

func (f *fakeBackend) setAcquireHang(hang bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.acqHang = hang
}

func (f *fakeBackend) setPutHang(hang bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.putHang = hang
}

func (f *fakeBackend) setLatency(d time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.latency = d
}
