package keeper

import "iter"

// smallKeys is how many keys a keySet holds in a slice before it moves them
// to a map: most keepers register one key or a few, and a map costs a
// few hundred bytes even for one.
const smallKeys = 8

// keySet maps the registered keys to their records: in a slice while there
// are few, searched in order, and in a map beyond smallKeys. The first key
// and its record live in the set itself, which lives in the keeper's own
// allocation (parts): a keeper of one key allocates nothing more for it.
type keySet struct {
	few  []keyEntry
	many map[string]*record

	one       [1]keyEntry // few's array while it holds one key
	first     record      // the first record newRecord returns
	firstUsed bool        // never reused, so no record outlives its key's entry under another key
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
	for _, e := range s.few {
		if e.key == key {
			return e.rec
		}
	}
	return nil
}

func (s *keySet) set(key string, rec *record) {
	if s.many != nil {
		s.many[key] = rec
		return
	}
	for i, e := range s.few {
		if e.key == key {
			s.few[i].rec = rec
			return
		}
	}
	if len(s.few) < smallKeys {
		if s.few == nil {
			s.few = s.one[:0]
		}
		s.few = append(s.few, keyEntry{key, rec})
		return
	}
	s.many = make(map[string]*record, 2*smallKeys)
	for _, e := range s.few {
		s.many[e.key] = e.rec
	}
	s.many[key] = rec
	s.few = nil
}

func (s *keySet) del(key string) {
	if s.many != nil {
		delete(s.many, key)
		return
	}
	for i, e := range s.few {
		if e.key == key {
			s.few = append(s.few[:i], s.few[i+1:]...)
			s.few = s.few[:len(s.few):len(s.few)]
			if len(s.few) == 0 {
				s.few = nil
			}
			return
		}
	}
}

func (s *keySet) len() int {
	if s.many != nil {
		return len(s.many)
	}
	return len(s.few)
}

// clear empties the set.
func (s *keySet) clear() {
	clear(s.one[:])
	s.few, s.many = nil, nil
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
		for _, e := range s.few {
			if !yield(e.key, e.rec) {
				return
			}
		}
	}
}
