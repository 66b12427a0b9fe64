package ipamdriver

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
)

// rtTableUnspec is RT_TABLE_UNSPEC: with RT_FILTER_TABLE it asks netlink for
// the routes of every table, not only "main" (policy routing, VPNs and
// Docker's own tables all live elsewhere).
const rtTableUnspec = 0

// dumpRetries bounds retries of netlink dumps that the kernel interrupted
// because the tables changed meanwhile.
const dumpRetries = 3

// HostPrefixesNetlink lists the prefixes in use on the host: the destinations
// of all routes in all tables (without default routes, which would overlap
// everything) and the subnets of all interface addresses, IPv4 and IPv6.
func HostPrefixesNetlink() ([]netip.Prefix, error) {
	routes, err := withDumpRetry(func() ([]netlink.Route, error) {
		return netlink.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Table: rtTableUnspec}, netlink.RT_FILTER_TABLE)
	})
	if err != nil {
		return nil, fmt.Errorf("list host routes: %w", err)
	}
	addrs, err := withDumpRetry(func() ([]netlink.Addr, error) {
		return netlink.AddrList(nil, netlink.FAMILY_ALL)
	})
	if err != nil {
		return nil, fmt.Errorf("list host addresses: %w", err)
	}
	var out []netip.Prefix
	for _, r := range routes {
		if p, ok := prefixFromIPNet(r.Dst); ok && p.Bits() > 0 {
			out = append(out, p)
		}
	}
	for _, a := range addrs {
		if p, ok := prefixFromIPNet(a.IPNet); ok {
			out = append(out, p)
		}
		// Point-to-point links (VPNs) carry the remote side's subnet here.
		if p, ok := prefixFromIPNet(a.Peer); ok {
			out = append(out, p)
		}
	}
	return out, nil
}

func withDumpRetry[T any](list func() ([]T, error)) ([]T, error) {
	var err error
	for range dumpRetries {
		var res []T
		res, err = list()
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			return res, err
		}
	}
	return nil, err
}

// prefixFromIPNet converts to a canonical netip.Prefix; a nil Dst is how
// netlink reports a default route.
func prefixFromIPNet(n *net.IPNet) (netip.Prefix, bool) {
	if n == nil {
		return netip.Prefix{}, false
	}
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, bits := n.Mask.Size()
	if bits == 0 {
		return netip.Prefix{}, false // non-canonical mask
	}
	if bits == 32 {
		a = a.Unmap() // net.IP often stores IPv4 in 16 bytes
	}
	p, err := a.Prefix(ones)
	if err != nil {
		return netip.Prefix{}, false
	}
	return p, true
}
