package netutil

import (
	"os"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/weft-net/weft/internal/nstest"
)

// TestSetIPv4DevConf sets route_localnet over netlink in a fresh namespace
// and reads it back through /proc/sys.
func TestSetIPv4DevConf(t *testing.T) {
	nstest.Run(t, func() {
		if err := netlink.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "wftest0"}}); err != nil {
			t.Fatal(err)
		}
		l, _ := netlink.LinkByName("wftest0")
		read := func() string {
			b, _ := os.ReadFile("/proc/sys/net/ipv4/conf/wftest0/route_localnet")
			return strings.TrimSpace(string(b))
		}
		if read() != "0" {
			t.Fatalf("route_localnet starts at %s", read())
		}
		if err := SetIPv4DevConf(l, IPv4DevConfRouteLocalnet, 1); err != nil {
			t.Fatal(err)
		}
		if read() != "1" {
			t.Fatalf("route_localnet = %s after setting it over netlink", read())
		}
	})
}

// TestProxyARPSettings turns on proxy ARP without delay over netlink and
// reads both back through /proc/sys.
func TestProxyARPSettings(t *testing.T) {
	nstest.Run(t, func() {
		if err := netlink.LinkAdd(&netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Name: "wftest1"}}); err != nil {
			if err := netlink.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "wftest1"}}); err != nil {
				t.Fatal(err)
			}
		}
		l, err := netlink.LinkByName("wftest1")
		if err != nil {
			t.Fatal(err)
		}
		if err := SetIPv4DevConf(l, IPv4DevConfProxyARP, 1); err != nil {
			t.Fatal(err)
		}
		if err := SetARPProxyDelay(l, 0); err != nil {
			t.Fatal(err)
		}
		for f, want := range map[string]string{"conf/wftest1/proxy_arp": "1", "neigh/wftest1/proxy_delay": "0"} {
			b, err := os.ReadFile("/proc/sys/net/ipv4/" + f)
			if err != nil || strings.TrimSpace(string(b)) != want {
				t.Errorf("%s = %q (%v), want %s", f, b, err, want)
			}
		}
	})
}
