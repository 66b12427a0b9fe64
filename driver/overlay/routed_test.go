package overlay

import (
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/driver/api"
	"github.com/weft-net/weft/gossip"
	"github.com/weft-net/weft/internal/nstest"
	"github.com/weft-net/weft/netutil"
)

func tableRoutes(t *testing.T, table int) []string {
	t.Helper()
	rs, err := netlink.RouteListFiltered(unix.AF_INET, &netlink.Route{Table: table}, netlink.RT_FILTER_TABLE)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, r := range rs {
		dev := ""
		if l, err := netlink.LinkByIndex(r.LinkIndex); err == nil {
			dev = l.Attrs().Name
		}
		dst := "default"
		if r.Dst != nil && r.Dst.IP != nil && !r.Dst.IP.IsUnspecified() {
			dst = r.Dst.String()
		}
		if r.Type == unix.RTN_BLACKHOLE {
			dev = "blackhole"
		}
		out = append(out, dst+">"+dev)
	}
	return out
}

func hasRule(iif string, table, prio int) bool {
	rules, _ := netlink.RuleList(unix.AF_INET)
	for _, r := range rules {
		if r.IifName == iif && r.Table == table && r.Priority == prio {
			return true
		}
	}
	return false
}

// TestRoutedDataPlane: an encrypted network's tables, rules and proxy ARP,
// programmed from the control plane's view, and fail closed without the
// tunnel device.
func TestRoutedDataPlane(t *testing.T) {
	nstest.Run(t, func() {
		proc := t.TempDir()
		_ = os.MkdirAll(filepath.Join(proc, "net/ipv4"), 0o755)
		_ = os.WriteFile(filepath.Join(proc, "net/ipv4/ip_forward"), []byte("1\n"), 0o644)
		old := netutil.ProcSys
		netutil.ProcSys = proc
		defer func() { netutil.ProcSys = old }()

		// A stand-in for the WireGuard device: routes only need a link.
		if err := netlink.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: wgName}}); err != nil {
			t.Fatal(err)
		}
		wg, _ := netlink.LinkByName(wgName)
		_ = netlink.LinkSetUp(wg)
		n := &api.Network{ID: "encnet", State: map[string]string{stVNI: "5000", stEncrypted: "true"}, Pools: []netip.Prefix{netip.MustParsePrefix("10.9.0.0/24")}}
		if err := ensureRouted(n); err != nil {
			t.Fatal(err)
		}
		if got := strings.Join(tableRoutes(t, 5000), ","); got != "default>blackhole" {
			t.Errorf("table 5000: %s", got)
		}
		if !hasRule(wgName, ingressTable, ingressPrio) {
			t.Error("no ingress rule for the tunnel")
		}
		if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "wfohtest"}, PeerName: "wfoctest"}); err != nil {
			t.Fatal(err)
		}
		hl, _ := netlink.LinkByName("wfohtest")
		_ = netlink.LinkSetUp(hl)
		ep := &api.Endpoint{ID: "ep", NetworkID: n.ID, Addr4: netip.MustParsePrefix("10.9.0.2/24")}
		if err := plugRouted(n, ep, hl); err != nil {
			t.Fatal(err)
		}
		if b, _ := os.ReadFile("/proc/sys/net/ipv4/conf/wfohtest/proxy_arp"); strings.TrimSpace(string(b)) != "1" {
			t.Errorf("proxy_arp on the host veth: %q", b)
		}
		if !hasRule("wfohtest", 5000, rulePrio) {
			t.Error("no rule for the endpoint's veth")
		}
		key := "dGVzdA=="
		peers := []gossip.Peer{
			{Node: gossip.Node{Name: "p1", Addr: netip.MustParseAddr("192.0.2.1"), WG: key},
				Entries: []gossip.Entry{{Network: n.ID, IP: "10.9.0.7", MAC: "02:00:00:00:00:07"}, {Network: "other", IP: "10.8.0.7"}}},
			{Node: gossip.Node{Name: "p2", Addr: netip.MustParseAddr("192.0.2.2")}, // no key: no routes (fail closed)
				Entries: []gossip.Entry{{Network: n.ID, IP: "10.9.0.8", MAC: "02:00:00:00:00:08"}}},
		}
		if err := programRouted(n, peers); err != nil {
			t.Fatal(err)
		}
		for _, tbl := range []int{5000, ingressTable} {
			got := strings.Join(tableRoutes(t, tbl), ",")
			if !strings.Contains(got, "10.9.0.2/32>wfohtest") || !strings.Contains(got, "10.9.0.7/32>"+wgName) || strings.Contains(got, "10.9.0.8") || strings.Contains(got, "10.8.0.7") {
				t.Errorf("table %d: %s", tbl, got)
			}
		}
		// The peer leaves: its routes go.
		if err := programRouted(n, nil); err != nil {
			t.Fatal(err)
		}
		if got := strings.Join(tableRoutes(t, 5000), ","); strings.Contains(got, "10.9.0.7") {
			t.Errorf("a departed peer's route stayed: %s", got)
		}
		// Tunnel gone: traffic from the container to a remote address hits
		// the blackhole, not the main table (which here has a default route).
		if err := programRouted(n, peers); err != nil {
			t.Fatal(err)
		}
		lo, _ := netlink.LinkByName("lo")
		_ = netlink.LinkSetUp(lo)
		if err := netlink.AddrAdd(lo, &netlink.Addr{IPNet: &net.IPNet{IP: net.ParseIP("192.0.2.100"), Mask: net.CIDRMask(32, 32)}}); err != nil {
			t.Fatal(err)
		}
		_ = netlink.RouteAdd(&netlink.Route{LinkIndex: lo.Attrs().Index, Dst: &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}})
		_ = netlink.LinkDel(wg)
		if _, err := netlink.RouteGetWithOptions(net.ParseIP("10.9.0.7"), &netlink.RouteGetOptions{Iif: "wfohtest", SrcAddr: net.ParseIP("10.9.0.2")}); err == nil {
			t.Error("with the tunnel device gone, a remote container's address is still routable from the container")
		}
		unplugRouted("wfohtest")
		removeRouted(n, true)
		if hasRule("wfohtest", 5000, rulePrio) || hasRule(wgName, ingressTable, ingressPrio) {
			t.Error("rules left behind")
		}
		if got := tableRoutes(t, 5000); len(got) != 0 {
			t.Errorf("table 5000 left: %v", got)
		}
	})
}
