// Package firewall turns weft's networks into iptables rules and keeps the
// kernel's tables in step with them.
//
// The rule set is a pure function of the stored networks (Render), so it can
// be compared against golden files, and the kernel is brought to it by Sync,
// which only touches weft's own chains and a few jump rules.
package firewall

import (
	"fmt"
	"net/netip"
	"sort"
	"strconv"
	"strings"
)

// Chain names. Everything weft creates starts with WEFT so it is recognisably ours.
const (
	ChainForward     = "WEFT-FORWARD"
	ChainDNAT        = "WEFT-DNAT"
	ChainPostrouting = "WEFT-POSTROUTING"
	ChainRaw         = "WEFT-PREROUTING"
)

// Network is what the firewall needs to know about one weft bridge network.
type Network struct {
	ID         string
	Bridge     string
	Subnets    []netip.Prefix // IPv4 and IPv6
	ICC        bool           // containers on the network may talk to each other
	Masquerade bool           // SNAT egress to the host's address
	Internal   bool           // no traffic in or out of the network
	Ports      []PortMap
	// Routed4 and Routed6 are gateway mode "routed" per family: no NAT;
	// published ports are opened on the container's own address (the host
	// port is not used) and ICMP reaches the containers.
	Routed4, Routed6 bool
	// SNAT4 is the source address for IPv4 egress (com.docker.network.host_ipv4)
	// instead of MASQUERADE's choice; invalid: MASQUERADE.
	SNAT4 netip.Addr
	// Trusted are host interfaces whose traffic may reach published ports
	// on the container's own address (com.docker.network.bridge.trusted_host_interfaces).
	Trusted []string
}

// routed reports whether the network's family fam is in gateway mode routed.
func (n Network) routed(fam Family) bool {
	if fam == IPv4 {
		return n.Routed4
	}
	return n.Routed6
}

// inFamily reports whether a belongs to fam.
func inFamily(a netip.Addr, fam Family) bool {
	return a.IsValid() && a.Is4() == (fam == IPv4)
}

// hostPrefix is a as a single-address prefix, the way iptables prints it.
func hostPrefix(a netip.Addr) string {
	return netip.PrefixFrom(a, a.BitLen()).String()
}

// directAccess are the rules that let packets reach published ports on a
// container's own address: in routed mode from outside (not from other
// weft or Docker networks, which stay isolated), and from the trusted host
// interfaces in every mode.
func directAccess(fam Family, n Network, nets []Network, bridges []string) []Rule {
	var out []Rule
	ports := sortedPorts(n.Ports)
	if n.routed(fam) {
		for _, o := range nets {
			if o.ID != n.ID {
				out = append(out, Rule{"-i", o.Bridge, "-o", n.Bridge, "-j", "DROP"})
			}
		}
		// Every other local bridge; not a pattern that matches this
		// bridge itself (its ICC rule follows).
		for _, d := range otherBridges(n, nets, bridges) {
			if !covered(n.Bridge, []string{d}) {
				out = append(out, Rule{"-i", d, "-o", n.Bridge, "-j", "DROP"})
			}
		}
	}
	port := func(in []string, p PortMap) Rule {
		r := Rule{"-d", hostPrefix(p.ContainerIP)}
		r = append(r, in...)
		return append(r, "-o", n.Bridge, "-p", p.Proto, "-m", p.Proto, "--dport", strconv.Itoa(int(p.ContainerPort)), "-j", "ACCEPT")
	}
	if n.routed(fam) {
		for _, p := range ports {
			if inFamily(p.ContainerIP, fam) {
				out = append(out, port([]string{"!", "-i", n.Bridge}, p))
			}
		}
		icmp := "icmp"
		if fam == IPv6 {
			icmp = "ipv6-icmp"
		}
		out = append(out, Rule{"!", "-i", n.Bridge, "-o", n.Bridge, "-p", icmp, "-j", "ACCEPT"})
	}
	for _, in := range n.Trusted {
		for _, p := range ports {
			if inFamily(p.ContainerIP, fam) {
				out = append(out, port([]string{"-i", in}, p))
			}
		}
	}
	return out
}

func sortedPorts(in []PortMap) []PortMap {
	ports := append([]PortMap(nil), in...)
	sort.Slice(ports, func(i, j int) bool {
		if ports[i].HostPort != ports[j].HostPort {
			return ports[i].HostPort < ports[j].HostPort
		}
		if ports[i].Proto != ports[j].Proto {
			return ports[i].Proto < ports[j].Proto
		}
		if ports[i].HostIP != ports[j].HostIP {
			return ports[i].HostIP.Less(ports[j].HostIP)
		}
		if ports[i].ContainerPort != ports[j].ContainerPort {
			return ports[i].ContainerPort < ports[j].ContainerPort
		}
		return ports[i].ContainerIP.Less(ports[j].ContainerIP)
	})
	return ports
}

// natPorts reports whether n has IPv4 ports published through DNAT.
func natPorts(n Network) bool {
	if n.Routed4 {
		return false
	}
	for _, p := range n.Ports {
		if p.ContainerIP.Is4() {
			return true
		}
	}
	return false
}

// PortMap is one published port (docker run -p).
type PortMap struct {
	Proto         string     // "tcp" or "udp"
	HostIP        netip.Addr // invalid or unspecified: every host address
	HostPort      uint16
	ContainerIP   netip.Addr
	ContainerPort uint16
}

// Family selects iptables or ip6tables.
type Family int

// The two address families.
const (
	IPv4 Family = 4
	IPv6 Family = 6
)

// Rule is one rule's arguments in the canonical form `iptables -S` prints them.
type Rule []string

// Ruleset is the content of weft's chains for one family: table -> chain -> rules.
type Ruleset map[string]map[string][]Rule

// BridgePatterns are the names of other local bridges that a weft container
// may only reach through a published port (DNAT) or with a reply: Docker's,
// swarm's docker_gwbridge, libvirt's, CNI's, LXC's and LXD's, and weft's
// own. They guard a bridge of those kinds before netlink enumeration (the
// bridges argument of Render) has seen it.
var BridgePatterns = []string{"docker0", "br-+", "docker_gwbridge", "virbr+", "cni+", "lxcbr+", "lxdbr+", "weft+"}

// covered reports whether interface name is matched by one of the iptables
// interface patterns (a trailing + matches any suffix).
func covered(name string, patterns []string) bool {
	for _, p := range patterns {
		if p == name || (strings.HasSuffix(p, "+") && strings.HasPrefix(name, strings.TrimSuffix(p, "+"))) {
			return true
		}
	}
	return false
}

// otherBridges is the sorted list of interfaces (patterns, then enumerated
// bridges no pattern covers) that weft network self must not open new
// connections into; weft's own bridges are left out (their ingress rules
// already drop what is not theirs).
func otherBridges(self Network, nets []Network, bridges []string) []string {
	own := map[string]bool{}
	for _, n := range nets {
		own[n.Bridge] = true
	}
	var out []string
	for _, p := range BridgePatterns {
		if p != self.Bridge {
			out = append(out, p)
		}
	}
	extra := append([]string(nil), bridges...)
	sort.Strings(extra)
	for i, b := range extra {
		if b == "" || own[b] || covered(b, BridgePatterns) || (i > 0 && extra[i-1] == b) {
			continue
		}
		out = append(out, b)
	}
	return out
}

// loopbackHost reports whether a published port is bound to a loopback
// address of family fam (127.0.0.0/8 or ::1).
func loopbackHost(p PortMap, fam Family) bool {
	return inFamily(p.HostIP, fam) && p.HostIP.IsLoopback()
}

// Render builds the desired rules for family from nets. bridges are the
// host's other bridges (every link of type bridge netlink lists, except
// uplinks): a weft container reaches them only through published ports.
// Render is pure: the caller enumerates.
func Render(family Family, nets []Network, bridges []string) Ruleset {
	nets = append([]Network(nil), nets...)
	sort.Slice(nets, func(i, j int) bool { return nets[i].ID < nets[j].ID })
	rs := Ruleset{"filter": {ChainForward: nil}}
	if family == IPv4 {
		rs["nat"] = map[string][]Rule{ChainDNAT: nil, ChainPostrouting: nil}
	}
	rs["raw"] = map[string][]Rule{ChainRaw: renderRaw(family, nets)}
	fwd := &[]Rule{}
	add := func(r ...string) { *fwd = append(*fwd, Rule(r)) }

	// First the walls of --internal networks, then every rule about
	// traffic INTO a weft bridge, then every rule about traffic OUT of one:
	// a packet from one weft network to another meets the destination's
	// DROP before the source's egress ACCEPT.
	for _, n := range nets {
		if n.Internal {
			add("-i", n.Bridge, "!", "-o", n.Bridge, "-j", "DROP")
			add("!", "-i", n.Bridge, "-o", n.Bridge, "-j", "DROP")
		}
	}
	for _, n := range nets {
		br := n.Bridge
		add("-o", br, "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT")
		if !n.Internal && family == IPv4 && natPorts(n) {
			// Before the ICC rule: published ports stay reachable from the
			// same network with enable_icc=false, as with Docker's bridge.
			add("-o", br, "-m", "conntrack", "--ctstate", "DNAT", "-j", "ACCEPT")
		}
		if !n.Internal {
			*fwd = append(*fwd, directAccess(family, n, nets, bridges)...)
		}
		if n.ICC {
			add("-i", br, "-o", br, "-j", "ACCEPT")
		} else {
			add("-i", br, "-o", br, "-j", "DROP")
		}
		add("-o", br, "-j", "DROP")
	}
	// Egress, whatever the FORWARD policy: replies and connections to
	// published ports (DNAT) go anywhere; new connections into any other
	// local bridge are dropped; the rest (the uplink) is accepted.
	for _, n := range nets {
		if n.Internal {
			continue
		}
		br := n.Bridge
		add("-i", br, "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT")
		add("-i", br, "-m", "conntrack", "--ctstate", "DNAT", "-j", "ACCEPT")
		for _, o := range otherBridges(n, nets, bridges) {
			add("-i", br, "-o", o, "-j", "DROP")
		}
		add("-i", br, "-j", "ACCEPT")
	}
	rs["filter"][ChainForward] = *fwd
	if family != IPv4 {
		return rs
	}

	var dnat, post []Rule
	for _, n := range nets {
		if n.Internal {
			continue
		}
		br := n.Bridge
		for _, s := range n.Subnets {
			if !s.Addr().Is4() {
				continue
			}
			if n.Masquerade && !n.Routed4 {
				if n.SNAT4.IsValid() {
					post = append(post, Rule{"-s", s.String(), "!", "-o", br, "-j", "SNAT", "--to-source", n.SNAT4.String()})
				} else {
					post = append(post, Rule{"-s", s.String(), "!", "-o", br, "-j", "MASQUERADE"})
				}
			}
			if natPorts(n) {
				// Hairpin: a container reaching a published port of its own
				// network must see the reply come back through the host.
				post = append(post, Rule{"-s", s.String(), "-o", br, "-m", "conntrack", "--ctstate", "DNAT", "-j", "MASQUERADE"})
			}
		}
		if !natPorts(n) {
			continue
		}
		// The host reaching a published port through 127.0.0.1 (needs route_localnet on the bridge).
		post = append(post, Rule{"-s", "127.0.0.0/8", "-o", br, "-j", "MASQUERADE"})
		for _, p := range sortedPorts(n.Ports) {
			if !p.ContainerIP.Is4() {
				continue
			}
			var r Rule
			if p.HostIP.IsValid() && !p.HostIP.IsUnspecified() {
				if !p.HostIP.Is4() {
					continue
				}
				r = append(r, "-d", p.HostIP.String()+"/32")
			}
			r = append(r, "-p", p.Proto, "-m", p.Proto, "--dport", strconv.Itoa(int(p.HostPort)),
				"-j", "DNAT", "--to-destination", fmt.Sprintf("%s:%d", p.ContainerIP, p.ContainerPort))
			dnat = append(dnat, r)
		}
	}
	rs["nat"][ChainDNAT] = dnat
	rs["nat"][ChainPostrouting] = post
	return rs
}

// renderRaw is the raw PREROUTING chain for family: before conntrack and
// DNAT, (1) a weft container may not send to 127.0.0.0/8 (route_localnet on
// weft bridges would let it reach host loopback services); (2) a port
// published on a loopback address is for the host only: packets to it that
// arrive on any interface but lo are dropped, as Docker 28+ does for its own
// mappings (the kernel's martian check comes after DNAT, too late); (3) a
// weft bridge accepts only sources of its own network's subnets (IPv6:
// also link-local and the unspecified address, for neighbour discovery),
// so a container cannot send as another network and be masqueraded by its
// rule. (3) comes last: its RETURNs end the chain for a bridge's packets.
func renderRaw(fam Family, nets []Network) []Rule {
	var raw []Rule
	if fam == IPv4 {
		for _, n := range nets {
			raw = append(raw, Rule{"-d", "127.0.0.0/8", "-i", n.Bridge, "-j", "DROP"})
		}
	}
	type key struct {
		ip    netip.Addr
		proto string
		port  uint16
	}
	seen := map[key]bool{}
	for _, n := range nets {
		if n.Internal {
			continue
		}
		for _, p := range sortedPorts(n.Ports) {
			k := key{p.HostIP, p.Proto, p.HostPort}
			if !loopbackHost(p, fam) || seen[k] {
				continue
			}
			seen[k] = true
			raw = append(raw, Rule{"-d", hostPrefix(p.HostIP), "!", "-i", "lo", "-p", p.Proto, "-m", p.Proto, "--dport", strconv.Itoa(int(p.HostPort)), "-j", "DROP"})
		}
	}
	for _, n := range nets {
		var allowed []string
		for _, s := range n.Subnets {
			if inFamily(s.Addr(), fam) {
				allowed = append(allowed, s.Masked().String())
			}
		}
		if fam == IPv6 {
			allowed = append(allowed, "fe80::/10", "::/128")
		}
		for _, a := range allowed {
			raw = append(raw, Rule{"-s", a, "-i", n.Bridge, "-j", "RETURN"})
		}
		raw = append(raw, Rule{"-i", n.Bridge, "-j", "DROP"})
	}
	return raw
}

// Hook is a jump from a built-in chain into one of weft's chains.
type Hook struct {
	Table, Chain string
	Rule         Rule
}

// Docker inserts each new network's rules at the top of FORWARD and then
// moves its DOCKER-USER jump back to first place, so a jump placed in
// FORWARD would sink below Docker's ACCEPT rules. Docker never reorders
// DOCKER-USER itself: weft's jump goes there, before its closing RETURN,
// so user rules (inserted at the top) keep precedence and Docker's rules
// come after weft's.
const dockerUser = "DOCKER-USER"

// Hooks lists the jumps weft needs for family (the FORWARD one is placed
// by forwardHook).
func Hooks(family Family) []Hook {
	h := []Hook{
		{Table: "filter", Chain: "FORWARD", Rule: Rule{"-j", ChainForward}},
		{Table: "raw", Chain: "PREROUTING", Rule: Rule{"-j", ChainRaw}},
	}
	if family == IPv4 {
		h = append(h,
			Hook{Table: "nat", Chain: "PREROUTING", Rule: Rule{"-m", "addrtype", "--dst-type", "LOCAL", "-j", ChainDNAT}},
			Hook{Table: "nat", Chain: "OUTPUT", Rule: Rule{"-m", "addrtype", "--dst-type", "LOCAL", "-j", ChainDNAT}},
			Hook{Table: "nat", Chain: "POSTROUTING", Rule: Rule{"-j", ChainPostrouting}},
		)
	}
	return h
}

// Format prints a ruleset the way iptables-save would, for golden files and logs.
func (rs Ruleset) Format() string {
	var out string
	tables := make([]string, 0, len(rs))
	for t := range rs {
		tables = append(tables, t)
	}
	sort.Strings(tables)
	for _, t := range tables {
		out += "*" + t + "\n"
		chains := make([]string, 0, len(rs[t]))
		for c := range rs[t] {
			chains = append(chains, c)
		}
		sort.Strings(chains)
		for _, c := range chains {
			out += ":" + c + "\n"
		}
		for _, c := range chains {
			for _, r := range rs[t][c] {
				out += "-A " + c + " " + join(r) + "\n"
			}
		}
	}
	return out
}

func join(r Rule) string {
	s := ""
	for i, a := range r {
		if i > 0 {
			s += " "
		}
		s += a
	}
	return s
}

func sortStrings(s []string) { sort.Strings(s) }
