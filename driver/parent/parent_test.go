package parent

import (
	"strings"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/weft-net/weft/driver/api"
	"github.com/weft-net/weft/internal/nstest"
)

func mustAdd(t *testing.T, l netlink.Link) netlink.Link {
	t.Helper()
	if err := netlink.LinkAdd(l); err != nil {
		t.Fatalf("add %s: %v", l.Attrs().Name, err)
	}
	got, err := netlink.LinkByName(l.Attrs().Name)
	if err != nil {
		t.Fatal(err)
	}
	return got
}

func veth(name string) *netlink.Veth {
	return &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: name + "p"}
}

// Parents that are not weft's to take are refused with the option and the
// reason; a plain interface and weft's own VLAN of one pass.
func TestCheckParent(t *testing.T) {
	nstest.Run(t, func() {
		br := mustAdd(t, &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br0"}})
		mustAdd(t, &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "docker0"}})
		port := mustAdd(t, veth("port0"))
		if err := netlink.LinkSetMaster(port, br); err != nil {
			t.Fatal(err)
		}
		plain := mustAdd(t, veth("eth0"))
		labelled := mustAdd(t, veth("mine0"))
		if err := netlink.LinkSetAlias(labelled, api.AliasPrefix+"local-x:"+strings.Repeat("a", 64)); err != nil {
			t.Fatal(err)
		}
		mustAdd(t, veth("wfhdeadbeef0"))
		vlanOK := true
		if err := netlink.LinkAdd(&netlink.Vlan{LinkAttrs: netlink.LinkAttrs{Name: "eth0.10", ParentIndex: plain.Attrs().Index}, VlanId: 10}); err != nil {
			vlanOK = false
			t.Logf("no 802.1q in this kernel (%v): the VLAN cases are skipped", err)
		} else {
			v, _ := netlink.LinkByName("eth0.10")
			_ = netlink.LinkSetAlias(v, api.AliasPrefix+"local-x:"+strings.Repeat("b", 64))
			if err := netlink.LinkAdd(&netlink.Vlan{LinkAttrs: netlink.LinkAttrs{Name: "br0.20", ParentIndex: br.Attrs().Index}, VlanId: 20}); err != nil {
				t.Fatal(err)
			}
		}
		for _, c := range []struct {
			parent string
			want   []string // nil: accepted
		}{
			{"eth0", nil},
			{"eth0.30", nil}, // to be created on a plain base
			{"nosuch0", nil}, // the caller says it does not exist
			{"lo", []string{"option parent=lo:", "loopback"}},
			{"docker0", []string{"option parent=docker0: docker0 is a bridge", "bypass its isolation", "give a physical interface"}},
			{"docker_gwbridge", []string{"option parent=docker_gwbridge:", "bridge"}},
			{"br0", []string{"option parent=br0: br0 is a bridge"}},
			{"port0", []string{"option parent=port0: port0 is a port of bridge br0"}},
			{"mine0", []string{"option parent=mine0:", "weft created"}},
			{"wfhdeadbeef0", []string{"option parent=wfhdeadbeef0:", "name weft gives"}},
			{"br0.30", []string{"option parent=br0.30: its base interface br0 is a bridge"}},
			{"docker0.5", []string{"option parent=docker0.5: its base interface docker0 is a bridge"}},
		} {
			err := Check(c.parent, slaveFix)
			if c.want == nil {
				if err != nil {
					t.Errorf("parent=%s refused: %v", c.parent, err)
				}
				continue
			}
			for _, w := range c.want {
				if err == nil || !strings.Contains(err.Error(), w) {
					t.Errorf("parent=%s: error does not say %q: %v", c.parent, w, err)
				}
			}
		}
		if vlanOK {
			if err := Check("eth0.10", slaveFix); err != nil {
				t.Errorf("weft's VLAN of a plain interface refused: %v", err)
			}
			if err := Check("br0.20", slaveFix); err == nil || !strings.Contains(err.Error(), "its base interface br0 is a bridge") {
				t.Errorf("a VLAN of a bridge: %v", err)
			}
		}
	})
}

// Release and RemoveShim never delete a device without weft's label that
// sits under a weft-made name.
func TestReleaseLeavesUnlabelled(t *testing.T) {
	nstest.Run(t, func() {
		mustAdd(t, &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "wfdaaaaaaaaaaaa"}, PeerName: "peer1"})
		mustAdd(t, &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "wfsaaaaaaaaaaaa"}, PeerName: "peer2"})
		n := &api.Network{ID: strings.Repeat("a", 64), State: map[string]string{StName: "wfdaaaaaaaaaaaa", StCreated: "placeholder", stShim: "wfsaaaaaaaaaaaa"}}
		if err := Release(n, nil, "local-x"); err != nil {
			t.Fatal(err)
		}
		if err := RemoveShim(n); err != nil {
			t.Fatal(err)
		}
		for _, name := range []string{"wfdaaaaaaaaaaaa", "wfsaaaaaaaaaaaa"} {
			if _, err := netlink.LinkByName(name); err != nil {
				t.Errorf("%s (unlabelled) was deleted", name)
			}
		}
		// Labelled: deleted.
		l, _ := netlink.LinkByName("wfdaaaaaaaaaaaa")
		_ = netlink.LinkSetAlias(l, alias("local-x", n))
		if err := Release(n, nil, "local-x"); err != nil {
			t.Fatal(err)
		}
		if _, err := netlink.LinkByName("wfdaaaaaaaaaaaa"); err == nil {
			t.Error("weft's labelled placeholder was not deleted")
		}
	})
}
