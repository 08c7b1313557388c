package keeper

import "iter"

// keySet maps the registered keys to their records: the only key in the
// set itself while there is one, and every key in a map once there were
// two. The first key and its record live in the set, which lives in the
// keeper's own allocation (parts): a keeper of one key allocates nothing
// more for it.
type keySet struct {
	one  keyEntry           // the only key, while many is nil; rec is nil while the set is empty
	many map[string]*record // every key, once the set held two

	first     record // the first record newRecord returns
	firstUsed bool   // never reused, so no record outlives its key's entry under another key
}

// newRecord returns a zero record for a key about to be set.
func (s *keySet) newRecord() *record {
	if !s.firstUsed {
		s.firstUsed = true
		return &s.first
	}
	return &record{}
}

type keyEntry struct {
	key string
	rec *record
}

func (s *keySet) get(key string) *record {
	if s.many != nil {
		return s.many[key]
	}
	if s.one.rec != nil && s.one.key == key {
		return s.one.rec
	}
	return nil
}

func (s *keySet) set(key string, rec *record) {
	switch {
	case s.many != nil:
		s.many[key] = rec
	case s.one.rec == nil || s.one.key == key:
		s.one = keyEntry{key, rec}
	default:
		s.many = map[string]*record{s.one.key: s.one.rec, key: rec}
		s.one = keyEntry{}
	}
}

func (s *keySet) del(key string) {
	switch {
	case s.many != nil:
		delete(s.many, key)
	case s.one.rec != nil && s.one.key == key:
		s.one = keyEntry{}
	}
}

func (s *keySet) len() int {
	switch {
	case s.many != nil:
		return len(s.many)
	case s.one.rec != nil:
		return 1
	}
	return 0
}

// clear empties the set.
func (s *keySet) clear() {
	s.one, s.many = keyEntry{}, nil
}

// all yields every key and its record. The set must not change meanwhile.
func (s *keySet) all() iter.Seq2[string, *record] {
	return func(yield func(string, *record) bool) {
		if s.many != nil {
			for k, r := range s.many {
				if !yield(k, r) {
					return
				}
			}
			return
		}
		if s.one.rec != nil {
			yield(s.one.key, s.one.rec)
		}
	}
}
