package parent

import (
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"

	"github.com/weft-net/weft/driver/api"
	"github.com/weft-net/weft/netutil"
)

// host_access: the kernel does not let a macvlan or ipvlan parent talk to
// its own children. A "shim" of the same kind on the parent, holding an
// address the user reserved with --aux-address host=IP, gives the host a
// way in; a /32 route per container points at it.
const (
	OptHostAccess = "host_access"
	AuxHost       = "host"
	stShim        = "shim"
	stShimAddr    = "shim_address"
)

// ValidateHostAccess checks the option and records the shim's name and address.
func ValidateHostAccess(n *api.Network) error {
	on, err := api.Bool(n.Options, OptHostAccess, false)
	if err != nil || !on {
		return err
	}
	if n.State[StCreated] == "placeholder" {
		return fmt.Errorf("option %s=true needs option parent: a network without a parent is internal", OptHostAccess)
	}
	if n.NoIPv4 {
		return fmt.Errorf("option %s=true: weft's host access is IPv4 (a shim address and a /32 route per container), and this network has no IPv4 (--ipv4=false); remove the option", OptHostAccess)
	}
	a, ok := n.Aux[AuxHost]
	if !ok || !a.Is4() {
		return fmt.Errorf("option %s=true needs an IPv4 address for the host on this network: add --aux-address %s=<a free address in the subnet>", OptHostAccess, AuxHost)
	}
	var bits int
	for _, p := range n.Pools {
		if p.Contains(a) {
			bits = p.Bits()
		}
	}
	if bits == 0 {
		return fmt.Errorf("--aux-address %s=%s is not inside the network's subnet", AuxHost, a)
	}
	n.State[stShim] = "wfs" + n.ID[:min(12, len(n.ID))]
	n.State[stShimAddr] = netip.PrefixFrom(a, 32).String()
	return nil
}

// ShimName is the host shim of a network, or "".
func ShimName(n *api.Network) string { return n.State[stShim] }

// EnsureShim creates (if missing) the shim made by mk and gives it its address.
func EnsureShim(n *api.Network, scope string, mk func(name string, parentIndex int) netlink.Link) error {
	name := ShimName(n)
	if name == "" {
		return nil
	}
	l, err := netlink.LinkByName(name)
	if err != nil {
		p, err := netlink.LinkByName(n.State[StName])
		if err != nil {
			return fmt.Errorf("host_access: parent %s: %w", n.State[StName], err)
		}
		if err := netlink.LinkAdd(mk(name, p.Attrs().Index)); err != nil {
			return fmt.Errorf("host_access: create %s on %s: %w", name, n.State[StName], err)
		}
		if l, err = netlink.LinkByName(name); err != nil {
			return fmt.Errorf("host_access: %w", err)
		}
		_ = netlink.LinkSetAlias(l, alias(scope, n))
	} else if !api.LabelledFor(l.Attrs().Alias, n.ID) {
		return fmt.Errorf("host_access: a device named %s exists without weft's label (alias %q); weft does not take over a device it did not create: rename or delete it", name, l.Attrs().Alias)
	}
	// The shim shares a segment with the containers: their Router
	// Advertisements must not change the host's routes or addresses.
	if err := netutil.RefuseRouterAdvertisements(name); err != nil {
		return fmt.Errorf("host_access: %w", err)
	}
	addr := netip.MustParsePrefix(n.State[stShimAddr])
	if err := netlink.AddrReplace(l, netutil.AddrOf(addr)); err != nil {
		return fmt.Errorf("host_access: address %s on %s: %w", addr, name, err)
	}
	if err := netlink.LinkSetUp(l); err != nil {
		return fmt.Errorf("host_access: bring up %s: %w", name, err)
	}
	return nil
}

// RemoveShim deletes the shim (and with it its routes).
func RemoveShim(n *api.Network) error {
	if ShimName(n) == "" {
		return nil
	}
	return deleteOwned(ShimName(n))
}

func hostRoute(n *api.Network, ep *api.Endpoint) (*netlink.Route, error) {
	l, err := netlink.LinkByName(ShimName(n))
	if err != nil {
		return nil, fmt.Errorf("host_access: shim %s: %w", ShimName(n), err)
	}
	src := netip.MustParsePrefix(n.State[stShimAddr]).Addr()
	return &netlink.Route{LinkIndex: l.Attrs().Index, Dst: netutil.AddrOf(netip.PrefixFrom(ep.Addr4.Addr(), 32)).IPNet,
		Src: src.AsSlice(), Scope: netlink.SCOPE_LINK}, nil
}

// AddHostRoute routes the endpoint's IPv4 address through the shim.
func AddHostRoute(n *api.Network, ep *api.Endpoint) error {
	if ShimName(n) == "" || !ep.Addr4.IsValid() {
		return nil
	}
	r, err := hostRoute(n, ep)
	if err != nil {
		return err
	}
	if err := netlink.RouteReplace(r); err != nil {
		return fmt.Errorf("host_access: route %s via %s: %w", ep.Addr4.Addr(), ShimName(n), err)
	}
	return nil
}

// DelHostRoute removes the endpoint's route; a missing one is fine.
func DelHostRoute(n *api.Network, ep *api.Endpoint) {
	if ShimName(n) == "" || !ep.Addr4.IsValid() {
		return
	}
	if r, err := hostRoute(n, ep); err == nil {
		_ = netlink.RouteDel(r)
	}
}

// ContName is the name of an endpoint's interface until Docker moves it.
func ContName(epID string) string { return "wfc" + epID[:min(12, len(epID))] }

// Join is the Join reply shared by macvlan and ipvlan: the network's
// gateways, and for an internal (e.g. parent-less) network no way out, so
// Docker must not add docker_gwbridge either.
func Join(n *api.Network, ep *api.Endpoint) *api.JoinInfo {
	ji := &api.JoinInfo{SrcName: ContName(ep.ID), DstPrefix: "eth", DisableGatewayService: n.Internal}
	ji.Gateway, ji.GatewayIPv6 = api.Gateways(n, ep)
	return ji
}

// DeleteEndpoint removes an endpoint's host route and, if it is still in
// the host namespace, its interface.
func DeleteEndpoint(n *api.Network, ep *api.Endpoint) error {
	DelHostRoute(n, ep)
	return netutil.DeleteLink(ContName(ep.ID))
}

// Reconcile re-creates a weft-made parent and the host_access shim (after
// a reboot) and the shim's routes.
func Reconcile(n *api.Network, eps []*api.Endpoint, scope string, mkShim func(name string, parentIndex int) netlink.Link) error {
	if err := Ensure(n, scope); err != nil {
		return err
	}
	if err := EnsureShim(n, scope, mkShim); err != nil {
		return err
	}
	for _, ep := range eps {
		if err := AddHostRoute(n, ep); err != nil {
			return err
		}
	}
	return nil
}
