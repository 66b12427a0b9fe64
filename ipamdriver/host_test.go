package ipamdriver

import (
	"net"
	"net/netip"
	"testing"
)

func TestPrefixFromIPNet(t *testing.T) {
	cases := []struct {
		in   *net.IPNet
		want string
	}{
		{&net.IPNet{IP: net.ParseIP("10.1.2.3"), Mask: net.CIDRMask(24, 32)}, "10.1.2.0/24"},
		{&net.IPNet{IP: net.ParseIP("10.1.2.3").To4(), Mask: net.CIDRMask(16, 32)}, "10.1.0.0/16"},
		{&net.IPNet{IP: net.ParseIP("fd00::5"), Mask: net.CIDRMask(64, 128)}, "fd00::/64"},
		{nil, ""},
		{&net.IPNet{IP: net.ParseIP("10.1.2.3"), Mask: net.IPv4Mask(255, 0, 255, 0)}, ""},
	}
	for _, c := range cases {
		p, ok := prefixFromIPNet(c.in)
		got := ""
		if ok {
			got = p.String()
		}
		if got != c.want {
			t.Errorf("prefixFromIPNet(%v) = %q, want %q", c.in, got, c.want)
		}
	}
}

// TestHostPrefixesNetlink reads the real host tables (read-only, no network
// traffic) and checks them against the interface addresses Go's net package
// reports.
func TestHostPrefixesNetlink(t *testing.T) {
	got, err := HostPrefixesNetlink()
	if err != nil {
		t.Skipf("netlink not usable here: %v", err)
	}
	set := map[netip.Prefix]bool{}
	for _, p := range got {
		if p.Bits() == 0 {
			t.Errorf("default route %s not skipped", p)
		}
		if p != p.Masked() {
			t.Errorf("prefix %s not canonical", p)
		}
		set[p] = true
	}
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		n, ok := a.(*net.IPNet)
		if !ok {
			continue
		}
		want, ok := prefixFromIPNet(n)
		if ok && !set[want] {
			t.Errorf("interface subnet %s missing from %v", want, got)
		}
	}
}
