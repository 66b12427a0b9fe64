package store

import (
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
)

type rec struct{ A string }

func TestPutGetForEachDelete(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.db")
	s, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Update(func(tx *Tx) error {
		for _, k := range []string{"n1/a", "n1/b", "n2/a"} {
			if err := tx.Put("b", k, rec{A: k}); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	// A failed transaction must leave nothing behind.
	boom := errors.New("boom")
	if err := s.Update(func(tx *Tx) error {
		_ = tx.Put("b", "n3/x", rec{})
		return boom
	}); !errors.Is(err, boom) {
		t.Fatalf("want boom, got %v", err)
	}
	s.Close()

	s, err = Open(path) // state survives reopening
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	_ = s.View(func(tx *Tx) error {
		var r rec
		ok, err := tx.Get("b", "n1/b", &r)
		if !ok || err != nil || r.A != "n1/b" {
			t.Errorf("get: %v %v %+v", ok, err, r)
		}
		if ok, _ := tx.Get("b", "n3/x", &r); ok {
			t.Error("rolled back record is present")
		}
		if n := tx.Count("b", "n1/"); n != 2 {
			t.Errorf("count n1/ = %d, want 2", n)
		}
		return nil
	})
	_ = s.Update(func(tx *Tx) error { return tx.DeletePrefix("b", "n1/") })
	_ = s.View(func(tx *Tx) error {
		var keys []string
		_ = tx.ForEach("b", "", func(k string, _ []byte) error { keys = append(keys, k); return nil })
		if len(keys) != 1 || keys[0] != "n2/a" {
			t.Errorf("keys after DeletePrefix = %v", keys)
		}
		return nil
	})
}

// TestConcurrentUpdatesGroupAndIsolateFailures: many concurrent updates all
// land; one failing call fails alone and leaves nothing.
func TestConcurrentUpdatesGroupAndIsolateFailures(t *testing.T) {
	s, err := Open(filepath.Join(t.TempDir(), "s.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	const n = 200
	errs := make(chan error, n)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			errs <- s.Update(func(tx *Tx) error {
				if err := tx.Put("b", fmt.Sprintf("k%03d", i), i); err != nil {
					return err
				}
				if i == 77 {
					return errors.New("boom")
				}
				return nil
			})
		}(i)
	}
	wg.Wait()
	close(errs)
	failed := 0
	for err := range errs {
		if err != nil {
			failed++
		}
	}
	if failed != 1 {
		t.Fatalf("%d updates failed, want exactly 1", failed)
	}
	_ = s.View(func(tx *Tx) error {
		if c := tx.Count("b", ""); c != n-1 {
			t.Errorf("%d records, want %d", c, n-1)
		}
		var v int
		if ok, _ := tx.Get("b", "k077", &v); ok {
			t.Error("the failed update's record was committed")
		}
		return nil
	})
}

func TestInstanceIDStable(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.db")
	s, _ := Open(path)
	a, err := s.InstanceID()
	s.Close()
	if err != nil || len(a) != 8 {
		t.Fatalf("id %q %v", a, err)
	}
	s, _ = Open(path)
	defer s.Close()
	if b, _ := s.InstanceID(); b != a {
		t.Fatalf("id changed across reopen: %s -> %s", a, b)
	}
	o, _ := Open(filepath.Join(t.TempDir(), "o.db"))
	defer o.Close()
	if c, _ := o.InstanceID(); c == a {
		t.Fatal("two stores share an id")
	}
}
