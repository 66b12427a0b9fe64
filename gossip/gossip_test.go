package gossip

import (
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"
)

var key = []byte("0123456789abcdef0123456789abcdef")

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func newMember(t *testing.T, name string, k []byte) (*Cluster, string) {
	t.Helper()
	port := freePort(t)
	c, err := Start(Config{Name: name, Addr: netip.MustParseAddr("127.0.0.1"), Port: port, Key: k, WG: "wg-" + name})
	if err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	return c, fmt.Sprintf("127.0.0.1:%d", port)
}

func eventually(t *testing.T, what string, fn func() error) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := fn()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %v", what, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func entriesOf(c *Cluster, node string) ([]Entry, bool) {
	for _, p := range c.Peers() {
		if p.Name == node {
			return p.Entries, true
		}
	}
	return nil, false
}

func TestTablesSpreadAndLeave(t *testing.T) {
	a, aAddr := newMember(t, "a", key)
	defer a.Shutdown(false)
	b, _ := newMember(t, "b", key)
	c, _ := newMember(t, "c", key)
	defer c.Shutdown(false)
	for _, m := range []*Cluster{b, c} {
		if _, err := m.Join([]string{aAddr}); err != nil {
			t.Fatal(err)
		}
	}
	b.SetEntries([]Entry{{Network: "n1", IP: "10.0.0.2", MAC: "02:42:0a:00:00:02"}})
	eventually(t, "c learns b's endpoint", func() error {
		es, ok := entriesOf(c, "b")
		if !ok || len(es) != 1 || es[0].IP != "10.0.0.2" {
			return fmt.Errorf("c sees b as %v (member %v)", es, ok)
		}
		return nil
	})
	for _, p := range a.Peers() {
		if p.Name == "b" && (p.WG != "wg-b" || p.Addr.String() != "127.0.0.1") {
			t.Errorf("b's node record: %+v", p.Node)
		}
	}
	// A change replaces the table; an unchanged one is not re-sent.
	b.SetEntries([]Entry{{Network: "n1", IP: "10.0.0.3", MAC: "02:42:0a:00:00:03"}})
	eventually(t, "a sees b's new table", func() error {
		es, _ := entriesOf(a, "b")
		if len(es) != 1 || es[0].IP != "10.0.0.3" {
			return fmt.Errorf("a sees %v", es)
		}
		return nil
	})
	// b leaves: its endpoints are gone everywhere.
	b.Shutdown(true)
	eventually(t, "b gone", func() error {
		for _, m := range []*Cluster{a, c} {
			if _, ok := entriesOf(m, "b"); ok {
				return fmt.Errorf("b still a peer")
			}
		}
		return nil
	})
}

func TestRestartedNodeWinsWithNewTable(t *testing.T) {
	a, aAddr := newMember(t, "a", key)
	defer a.Shutdown(false)
	b, _ := newMember(t, "b", key)
	if _, err := b.Join([]string{aAddr}); err != nil {
		t.Fatal(err)
	}
	b.SetEntries([]Entry{{Network: "n", IP: "10.0.0.9", MAC: "02:42:0a:00:00:09"}})
	eventually(t, "a learns b", func() error {
		if es, _ := entriesOf(a, "b"); len(es) != 1 {
			return fmt.Errorf("a sees %v", es)
		}
		return nil
	})
	b.Shutdown(true)
	b2, _ := newMember(t, "b", key)
	defer b2.Shutdown(false)
	if _, err := b2.Join([]string{aAddr}); err != nil {
		t.Fatal(err)
	}
	b2.SetEntries([]Entry{{Network: "n", IP: "10.0.0.7", MAC: "02:42:0a:00:00:07"}})
	eventually(t, "a takes the restarted b's table", func() error {
		if es, _ := entriesOf(a, "b"); len(es) != 1 || es[0].IP != "10.0.0.7" {
			return fmt.Errorf("a sees %v", es)
		}
		return nil
	})
}

func TestWrongKeyCannotJoin(t *testing.T) {
	a, aAddr := newMember(t, "a", key)
	defer a.Shutdown(false)
	x, _ := newMember(t, "x", []byte("another key, 32 bytes long......"))
	defer x.Shutdown(false)
	if _, err := x.Join([]string{aAddr}); err == nil {
		t.Fatal("a member with another key joined")
	}
	if len(a.Peers()) != 0 {
		t.Fatalf("a has peers %v", a.Peers())
	}
	if _, err := Start(Config{Name: "y", Addr: netip.MustParseAddr("127.0.0.1"), Port: freePort(t), Key: []byte("short")}); err == nil {
		t.Fatal("a 5-byte key was accepted")
	}
}

// A table too big for one gossip packet still arrives at once (over TCP),
// not only at the next push/pull (10 s).
func TestBigTableArrivesQuickly(t *testing.T) {
	a, aAddr := newMember(t, "a", key)
	defer a.Shutdown(false)
	b, _ := newMember(t, "b", key)
	defer b.Shutdown(false)
	if _, err := b.Join([]string{aAddr}); err != nil {
		t.Fatal(err)
	}
	var es []Entry
	for i := 0; i < 60; i++ {
		es = append(es, Entry{Network: "network-id-0123456789abcdef0123456789", IP: fmt.Sprintf("10.1.%d.%d", i/250, i%250+1), MAC: "02:42:0a:01:00:01"})
	}
	b.SetEntries(es)
	start := time.Now()
	eventually(t, "a gets b's 60 entries", func() error {
		if got, _ := entriesOf(a, "b"); len(got) != 60 {
			return fmt.Errorf("a has %d", len(got))
		}
		return nil
	})
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("60 entries took %v", d)
	}
}

// A restarted member starts with an unversioned table: until it sets its
// entries, the others keep what they knew (its containers still run).
func TestRestartKeepsEntriesUntilReplaced(t *testing.T) {
	a, aAddr := newMember(t, "a", key)
	defer a.Shutdown(false)
	b, _ := newMember(t, "b", key)
	if _, err := b.Join([]string{aAddr}); err != nil {
		t.Fatal(err)
	}
	b.SetEntries([]Entry{{Network: "n", IP: "10.0.0.5", MAC: "02:42:0a:00:00:05"}})
	eventually(t, "a learns b", func() error {
		if es, _ := entriesOf(a, "b"); len(es) != 1 {
			return fmt.Errorf("a sees %v", es)
		}
		return nil
	})
	b.Shutdown(false)
	b2, _ := newMember(t, "b", key)
	defer b2.Shutdown(false)
	if _, err := b2.Join([]string{aAddr}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond) // a push/pull happened at the join
	if es, ok := entriesOf(a, "b"); !ok || len(es) != 1 {
		t.Fatalf("the restarted b's empty table replaced its entries on a: %v (member %v)", es, ok)
	}
}
