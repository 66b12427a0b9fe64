package bridge

import (
	"net/netip"
	"os"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/weft-net/weft/driver/api"
	"github.com/weft-net/weft/internal/nstest"
)

func sysctl(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile("/proc/sys/" + path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// Bridge names that are not weft's to take are refused at validation.
func TestValidateRefusesForeignBridgeNames(t *testing.T) {
	nstest.Run(t, func() {
		if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "taken0"}, PeerName: "taken1"}); err != nil {
			t.Fatal(err)
		}
		for _, c := range []struct {
			name string
			want []string
		}{
			{"docker0", []string{"com.docker.network.bridge.name=docker0", "Docker's own bridge", "choose another"}},
			{"docker_gwbridge", []string{"bridge.name=docker_gwbridge", "Docker's own bridge"}},
			{"weft-foo", []string{"bridge.name=weft-foo", "reserved for the interfaces weft creates"}},
			{"wfh12", []string{"bridge.name=wfh12", "reserved"}},
			{"taken0", []string{"bridge.name=taken0", "already exists", "choose another"}},
			{"lo", []string{"bridge.name=lo", "already exists"}},
		} {
			n := newNet(map[string]string{OptName: c.name}, false, false)
			err := (&Type{}).Validate(n, nil)
			for _, w := range c.want {
				if err == nil || !strings.Contains(err.Error(), w) {
					t.Errorf("%s: error does not say %q: %v", c.name, w, err)
				}
			}
		}
		if err := (&Type{}).Validate(newNet(map[string]string{OptName: "mybr0"}, false, false), nil); err != nil {
			t.Errorf("a free name is refused: %v", err)
		}
		// host_binding_ipv4 on the loopback without a firewall.
		n := newNet(map[string]string{OptHostBinding: "127.0.0.1"}, false, false)
		if err := (&Type{NoLoopbackGuard: true}).Validate(n, nil); err == nil || !strings.Contains(err.Error(), "IPTABLES_BACKEND=none") {
			t.Errorf("loopback host binding without a firewall: %v", err)
		}
		if err := (&Type{}).Validate(newNet(map[string]string{OptHostBinding: "127.0.0.1"}, false, false), nil); err != nil {
			t.Errorf("loopback host binding with a firewall: %v", err)
		}
	})
}

// A weft bridge ignores Router Advertisements (accept_ra=0, autoconf=0),
// at creation and again at reconcile; route_localnet is on only when a
// firewall guards the loopback.
func TestBridgeSysctls(t *testing.T) {
	for _, guard := range []bool{true, false} {
		nstest.Run(t, func() {
			ty := &Type{Scope: "local-x", NoLoopbackGuard: !guard}
			n := newNet(nil, false, false)
			n.IPv6 = true
			if err := ty.Validate(n, nil); err != nil {
				t.Fatal(err)
			}
			if err := ty.CreateNetwork(n, nil); err != nil {
				t.Fatal(err)
			}
			br := BridgeName(n)
			check := func(when string) {
				for _, k := range []string{"accept_ra", "autoconf"} {
					if v := sysctl(t, "net/ipv6/conf/"+br+"/"+k); v != "0" {
						t.Errorf("%s: net.ipv6.conf.%s.%s = %s, want 0", when, br, k, v)
					}
				}
				want := "1"
				if !guard {
					want = "0"
				}
				if v := sysctl(t, "net/ipv4/conf/"+br+"/route_localnet"); v != want {
					t.Errorf("%s (guard %t): route_localnet = %s, want %s", when, guard, v, want)
				}
			}
			check("created")
			// Reconcile puts them back.
			for _, k := range []string{"accept_ra", "autoconf"} {
				if err := os.WriteFile("/proc/sys/net/ipv6/conf/"+br+"/"+k, []byte("1"), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			if err := os.WriteFile("/proc/sys/net/ipv4/conf/"+br+"/route_localnet", []byte("1"), 0o644); err != nil {
				t.Fatal(err)
			}
			if err := ty.Reconcile(n, nil); err != nil {
				t.Fatal(err)
			}
			if !guard {
				check("reconciled")
			} else {
				for _, k := range []string{"accept_ra", "autoconf"} {
					if v := sysctl(t, "net/ipv6/conf/"+br+"/"+k); v != "0" {
						t.Errorf("reconciled: %s = %s", k, v)
					}
				}
			}
		})
	}
}

// A device under a network's bridge name without weft's label is neither
// adopted at reconcile nor deleted with the network.
func TestBridgeNotAdoptedNorDeleted(t *testing.T) {
	nstest.Run(t, func() {
		ty := &Type{Scope: "local-x"}
		n := newNet(nil, false, false)
		if err := ty.Validate(n, nil); err != nil {
			t.Fatal(err)
		}
		name := BridgeName(n)
		if err := netlink.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name}}); err != nil {
			t.Fatal(err)
		}
		err := ty.Reconcile(n, nil)
		if err == nil || !strings.Contains(err.Error(), "without weft's label") {
			t.Fatalf("an unlabelled bridge was adopted: %v", err)
		}
		l, _ := netlink.LinkByName(name)
		if l.Attrs().Alias != "" {
			t.Errorf("labelled: %q", l.Attrs().Alias)
		}
		if a, _ := netlink.AddrList(l, netlink.FAMILY_V4); len(a) != 0 {
			t.Errorf("addresses added: %v", a)
		}
		if err := ty.DeleteNetwork(n, nil); err != nil {
			t.Fatal(err)
		}
		if _, err := netlink.LinkByName(name); err != nil {
			t.Fatal("the unlabelled bridge was deleted")
		}
		// weft's own (labelled) bridge is repaired and deleted as before.
		_ = netlink.LinkSetAlias(l, api.AliasPrefix+"local-x:"+n.ID)
		if err := ty.Reconcile(n, nil); err != nil {
			t.Fatal(err)
		}
		if a, _ := netlink.AddrList(l, netlink.FAMILY_V4); len(a) != 1 || a[0].IP.String() != netip.MustParsePrefix("10.1.0.1/24").Addr().String() {
			t.Errorf("gateway not restored: %v", a)
		}
		if err := ty.DeleteNetwork(n, nil); err != nil {
			t.Fatal(err)
		}
		if _, err := netlink.LinkByName(name); err == nil {
			t.Fatal("weft's bridge was not deleted")
		}
	})
}
