// Package netutil holds small kernel helpers shared by network types.
package netutil

import (
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
)

// ProcSys is where sysctls are read (a managed plugin's /proc/sys is
// read-only: settings are made over netlink instead).
var ProcSys = "/proc/sys"

// IsNotFound reports whether err is netlink's "link not found".
func IsNotFound(err error) bool {
	var nf netlink.LinkNotFoundError
	return errors.As(err, &nf)
}

// DeleteLink removes a link by name; a missing link is not an error.
func DeleteLink(name string) error {
	l, err := netlink.LinkByName(name)
	if err != nil {
		if IsNotFound(err) {
			return nil
		}
		return fmt.Errorf("look up %s: %w", name, err)
	}
	if err := netlink.LinkDel(l); err != nil {
		return fmt.Errorf("delete %s: %w", name, err)
	}
	return nil
}

// AddrOf converts a prefix to a netlink address.
func AddrOf(p netip.Prefix) *netlink.Addr {
	return &netlink.Addr{IPNet: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}}
}

// MACFor makes a locally administered MAC: 02:42 + the IPv4 address as
// Docker does (so ARP caches stay valid across restarts), else random.
func MACFor(ip netip.Addr) net.HardwareAddr {
	if ip.Is4() {
		b := ip.As4()
		return net.HardwareAddr{0x02, 0x42, b[0], b[1], b[2], b[3]}
	}
	m := make(net.HardwareAddr, 6)
	_, _ = rand.Read(m)
	m[0] = (m[0] | 0x02) &^ 0x01
	return m
}
