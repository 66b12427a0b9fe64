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

// dockerBridges are output interfaces whose traffic Docker's own FORWARD
// rules must judge (so a weft container reaches a Docker container only
// through a published port), matched by Docker's naming.
var dockerBridges = []string{"docker0", "br-+"}

// Render builds the desired rules for family from nets.
func Render(family Family, nets []Network) Ruleset {
	nets = append([]Network(nil), nets...)
	sort.Slice(nets, func(i, j int) bool { return nets[i].ID < nets[j].ID })
	rs := Ruleset{"filter": {ChainForward: nil}}
	if family == IPv4 {
		rs["nat"] = map[string][]Rule{ChainDNAT: nil, ChainPostrouting: nil}
		// route_localnet (for published ports on 127.0.0.1) would also let a
		// container send to the host's loopback services: drop that early.
		var raw []Rule
		for _, n := range nets {
			raw = append(raw, Rule{"-d", "127.0.0.0/8", "-i", n.Bridge, "-j", "DROP"})
		}
		rs["raw"] = map[string][]Rule{ChainRaw: raw}
	}
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
		if !n.Internal && family == IPv4 && len(n.Ports) > 0 {
			// Before the ICC rule: published ports stay reachable from the
			// same network with enable_icc=false, as with Docker's bridge.
			add("-o", br, "-m", "conntrack", "--ctstate", "DNAT", "-j", "ACCEPT")
		}
		if n.ICC {
			add("-i", br, "-o", br, "-j", "ACCEPT")
		} else {
			add("-i", br, "-o", br, "-j", "DROP")
		}
		add("-o", br, "-j", "DROP")
	}
	for _, n := range nets {
		if n.Internal {
			continue
		}
		br := n.Bridge
		for _, d := range dockerBridges {
			add("-i", br, "-o", d, "-j", "RETURN")
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
			if n.Masquerade {
				post = append(post, Rule{"-s", s.String(), "!", "-o", br, "-j", "MASQUERADE"})
			}
			if len(n.Ports) > 0 {
				// Hairpin: a container reaching a published port of its own
				// network must see the reply come back through the host.
				post = append(post, Rule{"-s", s.String(), "-o", br, "-m", "conntrack", "--ctstate", "DNAT", "-j", "MASQUERADE"})
			}
		}
		if len(n.Ports) > 0 {
			// The host reaching a published port through 127.0.0.1 (needs route_localnet on the bridge).
			post = append(post, Rule{"-s", "127.0.0.0/8", "-o", br, "-j", "MASQUERADE"})
		}
		ports := append([]PortMap(nil), n.Ports...)
		sort.Slice(ports, func(i, j int) bool {
			if ports[i].HostPort != ports[j].HostPort {
				return ports[i].HostPort < ports[j].HostPort
			}
			if ports[i].Proto != ports[j].Proto {
				return ports[i].Proto < ports[j].Proto
			}
			return ports[i].HostIP.Less(ports[j].HostIP)
		})
		for _, p := range ports {
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
	h := []Hook{{Table: "filter", Chain: "FORWARD", Rule: Rule{"-j", ChainForward}}}
	if family == IPv4 {
		h = append(h,
			Hook{Table: "raw", Chain: "PREROUTING", Rule: Rule{"-j", ChainRaw}},
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
