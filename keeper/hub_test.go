package keeper

import (
	"context"
	"reflect"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"

	"github.com/leasekeeper/leasekeeper/statemachine"
)

// TestConfigKeyHasEveryField keeps configKey in step with Config: a field
// added to Config and not to the key would make keepers configured apart
// share one config.
func TestConfigKeyHasEveryField(t *testing.T) {
	ct, kt := reflect.TypeFor[Config](), reflect.TypeFor[configKey]()
	n := 0
	for f := range ct.Fields() {
		if f.Name == "Callbacks" || f.Name == "Observers" {
			continue
		}
		n++
		kf, ok := kt.FieldByName(f.Name)
		if assert.True(t, ok, "configKey lacks Config.%s", f.Name) {
			assert.Equal(t, f.Type, kf.Type, "configKey.%s", f.Name)
		}
	}
	assert.Equal(t, n, kt.NumField(), "configKey has fields Config does not")

	// Every field of the key tells configs apart.
	base := DefaultConfig()
	bk, ok := keyOf(&base)
	require.True(t, ok)
	for i := range kt.NumField() {
		c := base
		v := reflect.ValueOf(&c).Elem().FieldByName(kt.Field(i).Name)
		switch v.Kind() {
		case reflect.Int64, reflect.Int:
			v.SetInt(v.Int() + 1)
		case reflect.Bool:
			v.SetBool(!v.Bool())
		case reflect.Struct:
			v.Field(0).SetInt(v.Field(0).Int() + 1)
		case reflect.Pointer:
			v.Set(reflect.ValueOf(zap.NewNop()))
		default:
			t.Fatalf("configKey.%s: kind %s not covered", kt.Field(i).Name, v.Kind())
		}
		ck, ok := keyOf(&c)
		require.True(t, ok)
		assert.NotEqual(t, bk, ck, "changing %s", kt.Field(i).Name)
	}
}

// TestKeepersConfiguredAlikeShareConfig checks that keepers of one client
// configured alike keep one copy of their config, that keepers configured
// apart or with callbacks or observers keep their own, and that the hub
// forgets a config once its last keeper is closed.
func TestKeepersConfiguredAlikeShareConfig(t *testing.T) {
	f := newFake()
	plain := DefaultConfig()
	longer := DefaultConfig()
	longer.TTL = 20 * time.Second
	called := DefaultConfig()
	called.Callbacks.OnLost = func(statemachine.Transition) {}
	observed := DefaultConfig()
	observed.Observers = []Observer{nopObserver{}}

	var ks []*Keeper
	for _, cfg := range []Config{plain, plain, longer, called, called, observed} {
		k, err := newKeeper(f, cfg)
		require.NoError(t, err)
		ks = append(ks, k)
	}
	assert.Same(t, ks[0].cfg, ks[1].cfg, "keepers configured alike")
	assert.NotSame(t, ks[0].cfg, ks[2].cfg, "keepers of different TTLs")
	assert.Equal(t, 20*time.Second, ks[2].cfg.TTL)
	assert.NotSame(t, ks[3].cfg, ks[4].cfg, "keepers with callbacks")
	assert.NotNil(t, ks[3].cfg.Callbacks.OnLost)
	assert.Len(t, ks[5].cfg.Observers, 1)

	h := ks[0].hub
	hubs.Lock()
	assert.Equal(t, 2, h.configs.len(), "the plain config and the longer one")
	hubs.Unlock()

	// The caller's Config stays the caller's: changing it after New
	// changes no keeper.
	plain.TTL = time.Hour
	assert.Equal(t, 10*time.Second, ks[0].cfg.TTL)

	require.NoError(t, ks[0].Close(context.Background()))
	assert.Equal(t, 10*time.Second, ks[0].cfg.TTL, "a closed keeper keeps its config")
	hubs.Lock()
	assert.Equal(t, 2, h.configs.len(), "the second plain keeper still holds its config")
	hubs.Unlock()
	for _, k := range ks[1:] {
		require.NoError(t, k.Close(context.Background()))
	}
	hubs.Lock()
	defer hubs.Unlock()
	assert.Zero(t, h.configs.len())
	assert.NotContains(t, hubs.m, any(f), "the hub is gone with its last keeper")
}

// TestKeySet drives a keySet through one key, several and back.
func TestKeySet(t *testing.T) {
	var s keySet
	keys := func() map[string]*record {
		m := map[string]*record{}
		for k, r := range s.all() {
			m[k] = r
		}
		assert.Len(t, m, s.len())
		return m
	}
	assert.Empty(t, keys())
	assert.Nil(t, s.get("a"))

	a := s.newRecord()
	assert.Same(t, &s.first, a, "the first record lives in the set")
	s.set("a", a)
	assert.Same(t, a, s.get("a"))
	assert.Nil(t, s.get("b"))
	assert.Equal(t, map[string]*record{"a": a}, keys())

	a2 := s.newRecord()
	assert.NotSame(t, a, a2, "the first record is never handed out twice")
	s.set("a", a2)
	assert.Same(t, a2, s.get("a"), "setting a key again replaces its record")
	assert.Equal(t, 1, s.len())

	b := s.newRecord()
	s.set("b", b)
	c := s.newRecord()
	s.set("c", c)
	assert.Equal(t, map[string]*record{"a": a2, "b": b, "c": c}, keys())

	s.del("a")
	s.del("missing")
	assert.Equal(t, map[string]*record{"b": b, "c": c}, keys())
	s.del("b")
	s.del("c")
	assert.Empty(t, keys())
	s.set("d", b)
	assert.Same(t, b, s.get("d"))

	s.clear()
	assert.Empty(t, keys())
	s.set("e", c)
	s.del("f")
	assert.Equal(t, map[string]*record{"e": c}, keys())
	s.del("e")
	assert.Empty(t, keys())

	// Stopping early stops the iteration.
	s.set("x", a)
	s.set("y", b)
	n := 0
	for range s.all() {
		n++
		break
	}
	assert.Equal(t, 1, n)
}

// TestConfigSet joins and leaves configs in an order that moves the first
// slot: a config in the map is still found once the slot holds another.
func TestConfigSet(t *testing.T) {
	var s configSet
	cfgs := make([]Config, 3)
	keys := make([]configKey, 3)
	for i := range cfgs {
		cfgs[i] = DefaultConfig()
		cfgs[i].TTL = time.Duration(i+5) * time.Second
		keys[i], _ = keyOf(&cfgs[i])
	}
	a := s.join(keys[0], &cfgs[0])
	b := s.join(keys[1], &cfgs[1])
	assert.Same(t, a, s.join(keys[0], &cfgs[0]))
	assert.Equal(t, 2, s.len())
	s.leave(keys[0])
	s.leave(keys[0])
	assert.Equal(t, 1, s.len())
	c := s.join(keys[2], &cfgs[2]) // takes the free slot
	assert.Same(t, b, s.join(keys[1], &cfgs[1]), "found in the map")
	assert.Equal(t, 6*time.Second, b.TTL)
	assert.Equal(t, 7*time.Second, c.TTL)
	s.leave(keys[1])
	s.leave(keys[1])
	s.leave(keys[2])
	s.leave(keys[2]) // one leave too many does nothing
	assert.Zero(t, s.len())
	assert.NotSame(t, a, s.join(keys[0], &cfgs[0]), "a config forgotten is copied again")
}
