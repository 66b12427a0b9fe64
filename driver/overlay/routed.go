package overlay

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/driver/api"
	"github.com/weft-net/weft/gossip"
	"github.com/weft-net/weft/netutil"
)

// Encrypted networks are routed, not bridged: each container's veth ends
// in the host, which answers its ARP (proxy ARP) and routes its packets by
// policy (iif -> the network's table, numbered by its VNI) either to a
// local container or into the WireGuard device. Without a VXLAN layer the
// kernel hands wireguard-go whole TCP segments (TSO), which is what lets a
// userspace tunnel keep up; a VXLAN over the tunnel is segmented first and
// runs at a tenth of the speed (docs/benchmarks.md).
//
// Fail closed: each network's table ends in a blackhole default route, so
// with the tunnel device gone a packet for a remote container is dropped,
// never routed out of the underlay in clear. The host's own traffic never
// consults these tables.
const (
	ingressTable = 4095 // every encrypted endpoint, for traffic out of the tunnel (VNIs start at 4096)
	rulePrio     = 4800 // iif <container veth> lookup <VNI>
	ingressPrio  = 4801 // iif wfwg0 lookup ingressTable
)

func tableOf(n *api.Network) int { v, _ := strconv.Atoi(n.State[stVNI]); return v }

func host32(a netip.Addr) *net.IPNet {
	return &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(32, 32)}
}

// ensureRule adds an IPv4 policy rule unless an equal one exists.
func ensureRule(iif string, table, prio int) error {
	rules, err := netlink.RuleList(unix.AF_INET)
	if err != nil {
		return fmt.Errorf("list rules: %w", err)
	}
	for _, r := range rules {
		if r.IifName == iif && r.Table == table && r.Priority == prio {
			return nil
		}
	}
	r := netlink.NewRule()
	r.IifName, r.Table, r.Priority, r.Family = iif, table, prio, unix.AF_INET
	if err := netlink.RuleAdd(r); err != nil {
		return fmt.Errorf("rule iif %s lookup %d: %w", iif, table, err)
	}
	return nil
}

// deleteRules removes every IPv4 rule at prio matching iif ("" = any).
func deleteRules(iif string, prio int) {
	rules, err := netlink.RuleList(unix.AF_INET)
	if err != nil {
		return
	}
	for _, r := range rules {
		if r.Priority == prio && (iif == "" || r.IifName == iif) {
			r := r
			_ = netlink.RuleDel(&r)
		}
	}
}

// ensureRouted prepares a network's table and the tunnel's ingress rule.
func ensureRouted(n *api.Network) error {
	b, err := os.ReadFile(filepath.Join(netutil.ProcSys, "net/ipv4/ip_forward"))
	if err == nil && strings.TrimSpace(string(b)) == "0" {
		return errors.New("-o encrypted: IP forwarding is off on this host (net.ipv4.ip_forward=0; Docker turns it on unless started with --ip-forward=false): set it to 1")
	}
	bh := &netlink.Route{Table: tableOf(n), Type: unix.RTN_BLACKHOLE, Family: unix.AF_INET,
		Dst: &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}}
	if err := netlink.RouteReplace(bh); err != nil {
		return fmt.Errorf("fail-closed route in table %d: %w", tableOf(n), err)
	}
	return ensureRule(wgName, ingressTable, ingressPrio)
}

// removeRouted drops a network's table and its remote routes from the
// ingress table; the ingress rule goes with the last encrypted network.
func removeRouted(n *api.Network, last bool) {
	flushTable(tableOf(n), nil)
	flushTable(ingressTable, n.Pools)
	if last {
		deleteRules(wgName, ingressPrio)
	}
}

// flushTable deletes the IPv4 routes of a table, only those inside pools if given.
func flushTable(table int, pools []netip.Prefix) {
	rs, err := netlink.RouteListFiltered(unix.AF_INET, &netlink.Route{Table: table}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return
	}
	for _, r := range rs {
		if pools != nil && !inPools(r.Dst, pools) {
			continue
		}
		r := r
		_ = netlink.RouteDel(&r)
	}
}

func inPools(dst *net.IPNet, pools []netip.Prefix) bool {
	if dst == nil {
		return false
	}
	a, ok := netip.AddrFromSlice(dst.IP)
	if !ok {
		return false
	}
	for _, p := range pools {
		if p.Contains(a.Unmap()) {
			return true
		}
	}
	return false
}

// plugRouted routes a local endpoint: proxy ARP on its host veth, a route
// to it in the network's and the ingress table, and its policy rule.
func plugRouted(n *api.Network, ep *api.Endpoint, hl netlink.Link) error {
	if ep.Addr6.IsValid() && !ep.Addr4.IsValid() {
		return errors.New("-o encrypted networks carry IPv4 only")
	}
	if err := netutil.SetIPv4DevConf(hl, netutil.IPv4DevConfProxyARP, 1); err != nil {
		return err
	}
	// Answer at once: the default proxy_delay holds a first ARP up to 0.8 s.
	if err := netutil.SetARPProxyDelay(hl, 0); err != nil {
		return err
	}
	for _, tbl := range []int{tableOf(n), ingressTable} {
		r := &netlink.Route{LinkIndex: hl.Attrs().Index, Dst: host32(ep.Addr4.Addr()), Table: tbl, Scope: netlink.SCOPE_LINK}
		if err := netlink.RouteReplace(r); err != nil {
			return fmt.Errorf("route %s in table %d: %w", ep.Addr4.Addr(), tbl, err)
		}
	}
	return ensureRule(hl.Attrs().Name, tableOf(n), rulePrio)
}

// unplugRouted removes what plugRouted made (the routes go with the veth).
func unplugRouted(host string) { deleteRules(host, rulePrio) }

// programRouted makes the network's routes to remote endpoints exactly
// those of peers with a WireGuard key, through the tunnel device.
func programRouted(n *api.Network, peers []gossip.Peer) error {
	wg, err := netlink.LinkByName(wgName)
	if err != nil {
		return nil // tunnel down: the blackhole default drops remote traffic
	}
	want := map[netip.Addr]bool{}
	for _, p := range peers {
		if p.WG == "" {
			continue
		}
		for _, e := range p.Entries {
			if a, err := netip.ParseAddr(e.IP); err == nil && e.Network == n.ID && a.Is4() {
				want[a] = true
			}
		}
	}
	var errs []error
	for _, tbl := range []int{tableOf(n), ingressTable} {
		have := map[netip.Addr]bool{}
		rs, err := netlink.RouteListFiltered(unix.AF_INET, &netlink.Route{Table: tbl, LinkIndex: wg.Attrs().Index},
			netlink.RT_FILTER_TABLE|netlink.RT_FILTER_OIF)
		if err != nil {
			return fmt.Errorf("list table %d: %w", tbl, err)
		}
		for _, r := range rs {
			if !inPools(r.Dst, n.Pools) {
				continue
			}
			a, _ := netip.AddrFromSlice(r.Dst.IP)
			if want[a.Unmap()] {
				have[a.Unmap()] = true
				continue
			}
			r := r
			_ = netlink.RouteDel(&r)
		}
		for a := range want {
			if have[a] {
				continue
			}
			r := &netlink.Route{LinkIndex: wg.Attrs().Index, Dst: host32(a), Table: tbl, Scope: netlink.SCOPE_LINK}
			if err := netlink.RouteReplace(r); err != nil {
				errs = append(errs, fmt.Errorf("route %s into the tunnel: %w", a, err))
			}
		}
	}
	return errors.Join(errs...)
}
