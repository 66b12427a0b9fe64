// Package store persists weft's state (networks, endpoints, IPAM pools and
// addresses) in a bbolt file. Every driver call commits its change here
// before it replies to Docker, because Docker never replays calls to a
// remote driver after a restart.
package store

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Store is a bbolt database of JSON records grouped in buckets.
type Store struct {
	db   *bolt.DB
	path string

	// Group commit: Update calls that arrive while a commit is running are
	// committed together in the next transaction, so many containers
	// starting at once share fsyncs instead of queueing for one each.
	mu      sync.Mutex
	pending []*call
	running bool
}

type call struct {
	fn   func(*Tx) error
	done chan error
}

// Tx is one read or read-write transaction.
type Tx struct {
	tx *bolt.Tx
}

// Open opens (creating if needed) the database at path.
func Open(path string) (*Store, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("store: create directory for %s: %w", path, err)
	}
	// A short timeout: a second weft instance pointed at the same file must
	// fail fast with a clear message rather than hang dockerd's plugin start.
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 2 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("store: open %s (is another weft instance using it?): %w", path, err)
	}
	return &Store{db: db, path: path}, nil
}

// InstanceID returns the store's random identity, created with the store.
// weft puts it in the labels of the links it creates, so a plugin only ever
// sweeps leftovers made under its own store: a second instance, or one
// started on the wrong state directory, cannot mistake live links for its own.
func (s *Store) InstanceID() (string, error) {
	var id string
	err := s.db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists([]byte("meta"))
		if err != nil {
			return err
		}
		if v := b.Get([]byte("instance")); v != nil {
			id = string(v)
			return nil
		}
		buf := make([]byte, 4)
		if _, err := rand.Read(buf); err != nil {
			return err
		}
		id = hex.EncodeToString(buf)
		return b.Put([]byte("instance"), []byte(id))
	})
	if err != nil {
		return "", fmt.Errorf("store: instance id: %w", err)
	}
	return id, nil
}

// Path is the database file.
func (s *Store) Path() string { return s.path }

// Close closes the database.
func (s *Store) Close() error { return s.db.Close() }

// Update runs fn in a read-write transaction that is committed (fsynced)
// before Update returns, or rolled back if fn fails. Concurrent calls may
// share one transaction; fn may then run twice (once in the shared
// transaction, once alone if another call's fn failed), so it must only
// write values computed beforehand.
func (s *Store) Update(fn func(*Tx) error) error {
	c := &call{fn: fn, done: make(chan error, 1)}
	s.mu.Lock()
	s.pending = append(s.pending, c)
	leader := !s.running
	s.running = true
	s.mu.Unlock()
	if leader {
		s.commitPending()
	}
	return <-c.done
}

// commitPending commits queued calls in groups until none are left.
func (s *Store) commitPending() {
	for {
		s.mu.Lock()
		group := s.pending
		s.pending = nil
		if len(group) == 0 {
			s.running = false
			s.mu.Unlock()
			return
		}
		s.mu.Unlock()
		if len(group) == 1 {
			group[0].done <- s.single(group[0])
			continue
		}
		err := s.db.Update(func(tx *bolt.Tx) error {
			for _, c := range group {
				if err := c.fn(&Tx{tx: tx}); err != nil {
					return err
				}
			}
			return nil
		})
		if err == nil {
			for _, c := range group {
				c.done <- nil
			}
			continue
		}
		// One of them failed: commit each alone so only that one fails.
		for _, c := range group {
			c.done <- s.single(c)
		}
	}
}

func (s *Store) single(c *call) error {
	return s.db.Update(func(tx *bolt.Tx) error { return c.fn(&Tx{tx: tx}) })
}

// View runs fn in a read-only transaction.
func (s *Store) View(fn func(*Tx) error) error {
	return s.db.View(func(tx *bolt.Tx) error { return fn(&Tx{tx: tx}) })
}

// Put stores v as JSON under bucket/key.
func (t *Tx) Put(bucket, key string, v any) error {
	b, err := t.tx.CreateBucketIfNotExists([]byte(bucket))
	if err != nil {
		return fmt.Errorf("store: bucket %s: %w", bucket, err)
	}
	raw, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("store: encode %s/%s: %w", bucket, key, err)
	}
	if err := b.Put([]byte(key), raw); err != nil {
		return fmt.Errorf("store: put %s/%s: %w", bucket, key, err)
	}
	return nil
}

// Get decodes bucket/key into v and reports whether it existed.
func (t *Tx) Get(bucket, key string, v any) (bool, error) {
	b := t.tx.Bucket([]byte(bucket))
	if b == nil {
		return false, nil
	}
	raw := b.Get([]byte(key))
	if raw == nil {
		return false, nil
	}
	if err := json.Unmarshal(raw, v); err != nil {
		return true, fmt.Errorf("store: decode %s/%s: %w", bucket, key, err)
	}
	return true, nil
}

// Delete removes bucket/key; a missing key is not an error.
func (t *Tx) Delete(bucket, key string) error {
	b := t.tx.Bucket([]byte(bucket))
	if b == nil {
		return nil
	}
	if err := b.Delete([]byte(key)); err != nil {
		return fmt.Errorf("store: delete %s/%s: %w", bucket, key, err)
	}
	return nil
}

// ErrStop ends a ForEach early without an error.
var ErrStop = errors.New("stop")

// ForEach calls fn for every key in bucket that starts with prefix, in key order.
func (t *Tx) ForEach(bucket, prefix string, fn func(key string, raw []byte) error) error {
	b := t.tx.Bucket([]byte(bucket))
	if b == nil {
		return nil
	}
	c := b.Cursor()
	p := []byte(prefix)
	for k, v := c.Seek(p); k != nil && bytes.HasPrefix(k, p); k, v = c.Next() {
		if err := fn(string(k), v); err != nil {
			if errors.Is(err, ErrStop) {
				return nil
			}
			return err
		}
	}
	return nil
}

// DeletePrefix removes every key in bucket starting with prefix.
func (t *Tx) DeletePrefix(bucket, prefix string) error {
	b := t.tx.Bucket([]byte(bucket))
	if b == nil {
		return nil
	}
	var keys [][]byte
	c := b.Cursor()
	p := []byte(prefix)
	for k, _ := c.Seek(p); k != nil && bytes.HasPrefix(k, p); k, _ = c.Next() {
		keys = append(keys, append([]byte(nil), k...))
	}
	for _, k := range keys {
		if err := b.Delete(k); err != nil {
			return fmt.Errorf("store: delete %s/%s: %w", bucket, k, err)
		}
	}
	return nil
}

// Count returns the number of keys in bucket starting with prefix.
func (t *Tx) Count(bucket, prefix string) int {
	n := 0
	_ = t.ForEach(bucket, prefix, func(string, []byte) error { n++; return nil })
	return n
}

// Decode unmarshals a raw record obtained from ForEach.
func Decode(raw []byte, v any) error {
	if err := json.Unmarshal(raw, v); err != nil {
		return fmt.Errorf("store: decode record: %w", err)
	}
	return nil
}
