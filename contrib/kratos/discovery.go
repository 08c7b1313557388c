package kratos

import (
	"context"
	"encoding/json"
	"slices"
	"time"

	"github.com/go-kratos/kratos/v2/registry"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Discovery is a registry.Discovery over the keys a Registrar, or kratos's
// own etcd registry, writes. Its methods are safe for concurrent use.
type Discovery struct {
	cli *clientv3.Client
	ns  string
}

var _ registry.Discovery = (*Discovery)(nil)

// NewDiscovery returns a Discovery on cli. Of the options only Namespace
// applies.
func NewDiscovery(cli *clientv3.Client, opts ...Option) (*Discovery, error) {
	o, err := newOptions(opts)
	if err != nil {
		return nil, err
	}
	return &Discovery{cli: cli, ns: o.namespace}, nil
}

func (d *Discovery) prefix(name string) string { return d.ns + "/" + name + "/" }

// GetService returns the instances of the service called name, read from
// etcd now. A value that is not an instance of that service is skipped.
func (d *Discovery) GetService(ctx context.Context, name string) ([]*registry.ServiceInstance, error) {
	resp, err := d.cli.Get(ctx, d.prefix(name), clientv3.WithPrefix())
	if err != nil {
		return nil, err
	}
	return list(decodeAll(resp.Kvs, name)), nil
}

// Watch returns a watcher of the service called name. Its first Next
// returns the instances there are, and each later one the instances once
// they changed. Through an etcd outage Next keeps waiting: the watcher
// lists the service again once etcd answers, and never returns an error
// but the context's, when ctx ends or Stop is called.
func (d *Discovery) Watch(ctx context.Context, name string) (registry.Watcher, error) {
	if err := checkName(name); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	return &watcher{d: d, name: name, ctx: ctx, cancel: cancel, first: true}, nil
}

// watcher follows one service: it lists it, then watches its prefix from
// the revision after the list, and lists it again when the watch ends.
// Next is called from one goroutine at a time (kratos's resolver calls it
// in a loop); Stop from any.
type watcher struct {
	d      *Discovery
	name   string
	ctx    context.Context
	cancel context.CancelFunc

	wch   clientv3.WatchChan  // nil until listed, and after the watch ended
	set   map[string]instance // by key
	first bool                // Next has not returned yet
}

// relist bounds the wait between two lists of a service while etcd does
// not answer.
const (
	relistMin = 100 * time.Millisecond
	relistMax = 2 * time.Second
)

// Next returns the instances once they changed (the first time, at once).
func (w *watcher) Next() ([]*registry.ServiceInstance, error) {
	wait := relistMin
	for {
		if err := w.ctx.Err(); err != nil {
			return nil, err
		}
		if w.wch == nil {
			changed, err := w.list()
			if err != nil {
				// Keep the last list: an outage is no reason for the
				// resolver to drop instances that may well be serving.
				select {
				case <-w.ctx.Done():
				case <-time.After(wait):
				}
				wait = min(2*wait, relistMax)
				continue
			}
			wait = relistMin
			if changed || w.first {
				w.first = false
				return list(w.set), nil
			}
			continue
		}
		select {
		case <-w.ctx.Done():
			return nil, w.ctx.Err()
		case resp, ok := <-w.wch:
			if !ok || resp.Err() != nil {
				// Compacted past, or canceled by the server: list again.
				w.wch = nil
				continue
			}
			if w.apply(resp.Events) {
				return list(w.set), nil
			}
		}
	}
}

// list reads the service and starts a watch from the revision after it,
// and reports whether the set changed.
func (w *watcher) list() (bool, error) {
	ctx, cancel := context.WithTimeout(w.ctx, relistMax)
	defer cancel()
	resp, err := w.d.cli.Get(ctx, w.d.prefix(w.name), clientv3.WithPrefix())
	if err != nil {
		return false, err
	}
	set := decodeAll(resp.Kvs, w.name)
	changed := !same(w.set, set)
	w.set = set
	w.wch = w.d.cli.Watch(w.ctx, w.d.prefix(w.name), clientv3.WithPrefix(), clientv3.WithRev(resp.Header.Revision+1))
	return changed, nil
}

// apply applies events to the set and reports whether it changed.
func (w *watcher) apply(events []*clientv3.Event) bool {
	changed := false
	for _, ev := range events {
		key := string(ev.Kv.Key)
		old, had := w.set[key]
		if ev.Type == clientv3.EventTypeDelete {
			if had {
				delete(w.set, key)
				changed = true
			}
			continue
		}
		si := decode(ev.Kv.Value, w.name)
		switch {
		case si == nil && had:
			delete(w.set, key)
			changed = true
		case si != nil && (!had || old.raw != string(ev.Kv.Value)):
			w.set[key] = instance{si: si, raw: string(ev.Kv.Value)}
			changed = true
		}
	}
	return changed
}

// Stop ends the watch; a Next waiting returns context.Canceled.
func (w *watcher) Stop() error {
	w.cancel()
	return nil
}

// instance is a decoded value and the value itself, which tells whether an
// instance changed (registry.ServiceInstance.Equal sorts the endpoints of
// both instances in place, which the resolver may be reading).
type instance struct {
	si  *registry.ServiceInstance
	raw string
}

// decode returns the instance a value holds, or nil when it holds none of
// the service called name.
func decode(value []byte, name string) *registry.ServiceInstance {
	var si registry.ServiceInstance
	if json.Unmarshal(value, &si) != nil || si.Name != name {
		return nil
	}
	return &si
}

// decodeAll returns the instances of the service called name that kvs hold,
// by key.
func decodeAll(kvs []*mvccpb.KeyValue, name string) map[string]instance {
	set := make(map[string]instance, len(kvs))
	for _, kv := range kvs {
		if si := decode(kv.Value, name); si != nil {
			set[string(kv.Key)] = instance{si: si, raw: string(kv.Value)}
		}
	}
	return set
}

// list returns the instances of set in the order of their keys.
func list(set map[string]instance) []*registry.ServiceInstance {
	keys := make([]string, 0, len(set))
	for k := range set {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	out := make([]*registry.ServiceInstance, 0, len(keys))
	for _, k := range keys {
		out = append(out, set[k].si)
	}
	return out
}

func same(a, b map[string]instance) bool {
	if len(a) != len(b) {
		return false
	}
	for k, in := range a {
		if o, ok := b[k]; !ok || o.raw != in.raw {
			return false
		}
	}
	return true
}
