package ipamdriver

import (
	"fmt"
	"net/netip"
	"strings"
)

// lastAddr is the highest address of p (the IPv4 broadcast address). It
// works on the 4 or 16 address bytes, so IPv6 gets full 128-bit math.
func lastAddr(p netip.Prefix) netip.Addr {
	p = p.Masked()
	b := p.Addr().AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

// reservedReason says why a in pool must never be handed out, or "" when it
// may be. IPv4 /31 and /32 (RFC 3021) and IPv6 /127 and /128 (RFC 6164) have
// no network, broadcast or subnet-router anycast address.
func reservedReason(pool netip.Prefix, a netip.Addr) string {
	if pool.Addr().Is4() {
		if pool.Bits() >= 31 {
			return ""
		}
		switch a {
		case pool.Addr():
			return "the network address"
		case lastAddr(pool):
			return "the broadcast address"
		}
		return ""
	}
	if pool.Bits() < 127 && a == pool.Addr() {
		return "the subnet-router anycast address"
	}
	return ""
}

// parseAddr accepts "10.20.0.5" and, to be lenient, "10.20.0.5/24".
func parseAddr(s string) (netip.Addr, error) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Addr{}, fmt.Errorf("%q is not an IP address: %w", s, err)
		}
		return p.Addr().Unmap(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("%q is not an IP address: %w", s, err)
	}
	if a.Zone() != "" {
		return netip.Addr{}, fmt.Errorf("%q: an address with a zone cannot be assigned", s)
	}
	// A 4-in-6 form of an IPv4 address means the IPv4 address.
	return a.Unmap(), nil
}

// parseSubnet checks a user-given --subnet or --ip-range.
func parseSubnet(flag, s string, v6 bool) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("invalid %s %q: want a subnet in CIDR form such as 10.20.0.0/24: %w", flag, s, err)
	}
	if p.Addr().Is4In6() {
		return netip.Prefix{}, fmt.Errorf("invalid %s %s: IPv4-mapped IPv6 subnets are not supported, write it as plain IPv4 or IPv6", flag, s)
	}
	if m := p.Masked(); m != p {
		return netip.Prefix{}, fmt.Errorf("invalid %s %s: it has host bits set, use %s %s", flag, s, flag, m)
	}
	if p.Addr().Is6() != v6 {
		want, got := "IPv4", "IPv6"
		if v6 {
			want, got = "IPv6", "IPv4"
		}
		return netip.Prefix{}, fmt.Errorf("invalid %s %s: it is an %s subnet but Docker asked for an %s pool", flag, s, got, want)
	}
	return p, nil
}

func family(v6 bool) string {
	if v6 {
		return "IPv6"
	}
	return "IPv4"
}
