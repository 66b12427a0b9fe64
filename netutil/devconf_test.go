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
