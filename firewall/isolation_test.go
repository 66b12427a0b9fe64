package firewall

import (
	"net/netip"
	"strings"
	"testing"
)

func chainOf(rs Ruleset, table, chain string) []string {
	var out []string
	for _, r := range rs[table][chain] {
		out = append(out, join(r))
	}
	return out
}

func indexOf(rules []string, r string) int {
	for i, x := range rules {
		if x == r {
			return i
		}
	}
	return -1
}

// Egress from a weft bridge: replies and DNAT first, then a DROP into every
// other local bridge (patterns and enumerated), then the ACCEPT to the
// uplink; never a RETURN that would leave the verdict to the FORWARD policy.
func TestEgressIsolatesOtherBridges(t *testing.T) {
	for _, fam := range []Family{IPv4, IPv6} {
		rules := chainOf(Render(fam, []Network{base()}, []string{"weft-n1", "virbr0", "mybr0", "mybr0", "docker0", "br-abc"}), "filter", ChainForward)
		est := indexOf(rules, "-i weft-n1 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT")
		dnat := indexOf(rules, "-i weft-n1 -m conntrack --ctstate DNAT -j ACCEPT")
		last := indexOf(rules, "-i weft-n1 -j ACCEPT")
		if est < 0 || dnat < 0 || last != len(rules)-1 {
			t.Fatalf("IPv%d: egress accepts missing or misplaced:\n%s", fam, strings.Join(rules, "\n"))
		}
		for _, o := range []string{"docker0", "br-+", "docker_gwbridge", "virbr+", "cni+", "lxcbr+", "lxdbr+", "weft+", "mybr0"} {
			i := indexOf(rules, "-i weft-n1 -o "+o+" -j DROP")
			if i < dnat || i > last {
				t.Errorf("IPv%d: no DROP into %s between the conntrack accepts and the final ACCEPT", fam, o)
			}
		}
		all := strings.Join(rules, "\n")
		for _, bad := range []string{"-j RETURN", "-o weft-n1 -j DROP\n-A", "-o mybr0 -j DROP\n-i weft-n1 -o mybr0", "-o virbr0 ", "-o br-abc ", "-i weft-n1 -o weft-n1 -j DROP"} {
			if strings.Contains(all, bad) {
				t.Errorf("IPv%d: unexpected %q (own bridge, duplicate or pattern-covered bridge, or a RETURN):\n%s", fam, bad, all)
			}
		}
	}
	// --internal networks get no egress at all.
	in := base()
	in.Internal = true
	if all := strings.Join(chainOf(Render(IPv4, []Network{in}, []string{"mybr0"}), "filter", ChainForward), "\n"); strings.Contains(all, "mybr0") || strings.Contains(all, "-i weft-n1 -j ACCEPT") {
		t.Fatalf("internal network has egress rules:\n%s", all)
	}
}

// A routed network drops direct traffic from every other local bridge, but
// never with a pattern that matches its own bridge (its ICC rule follows).
func TestRoutedIngressFromOtherBridges(t *testing.T) {
	n := base()
	n.Bridge = "br-mine"
	n.Routed4 = true
	rules := chainOf(Render(IPv4, []Network{n}, []string{"mybr0"}), "filter", ChainForward)
	all := strings.Join(rules, "\n")
	for _, want := range []string{"-i docker0 -o br-mine -j DROP", "-i virbr+ -o br-mine -j DROP", "-i mybr0 -o br-mine -j DROP", "-i weft+ -o br-mine -j DROP"} {
		if indexOf(rules, want) < 0 {
			t.Errorf("missing %q:\n%s", want, all)
		}
	}
	if indexOf(rules, "-i br-+ -o br-mine -j DROP") >= 0 {
		t.Fatalf("a pattern matching the network's own bridge would break ICC:\n%s", all)
	}
}

// Ports published on loopback addresses get a raw DROP for packets that
// arrive on any interface but lo; other ports do not.
func TestLoopbackPortGuard(t *testing.T) {
	n := base()
	n.Ports = []PortMap{
		{Proto: "tcp", HostIP: ip("127.0.0.1"), HostPort: 8080, ContainerIP: ip("10.20.0.2"), ContainerPort: 80},
		{Proto: "udp", HostIP: ip("127.0.0.2"), HostPort: 5353, ContainerIP: ip("10.20.0.2"), ContainerPort: 53},
		{Proto: "tcp", HostIP: ip("192.0.2.1"), HostPort: 8081, ContainerIP: ip("10.20.0.2"), ContainerPort: 81},
		{Proto: "tcp", HostPort: 8082, ContainerIP: ip("10.20.0.2"), ContainerPort: 82},
	}
	raw := chainOf(Render(IPv4, []Network{n}, nil), "raw", ChainRaw)
	for _, want := range []string{
		"-d 127.0.0.1/32 ! -i lo -p tcp -m tcp --dport 8080 -j DROP",
		"-d 127.0.0.2/32 ! -i lo -p udp -m udp --dport 5353 -j DROP",
	} {
		i := indexOf(raw, want)
		if i < 0 || i > indexOf(raw, "-s 10.20.0.0/24 -i weft-n1 -j RETURN") {
			t.Errorf("missing (or after the source RETURNs) %q:\n%s", want, strings.Join(raw, "\n"))
		}
	}
	if all := strings.Join(raw, "\n"); strings.Contains(all, "8081") || strings.Contains(all, "8082") {
		t.Fatalf("guard for a port not bound to loopback:\n%s", all)
	}
}

// Sources: a weft bridge passes only its own subnets (IPv6 also link-local
// and ::), per family, after the loopback guards.
func TestAntiSpoof(t *testing.T) {
	n := base()
	n.Subnets = []netip.Prefix{pfx("10.20.0.0/24"), pfx("10.21.0.0/24"), pfx("fd00:1::/64")}
	v4 := chainOf(Render(IPv4, []Network{n}, nil), "raw", ChainRaw)
	want4 := []string{
		"-d 127.0.0.0/8 -i weft-n1 -j DROP",
		"-s 10.20.0.0/24 -i weft-n1 -j RETURN",
		"-s 10.21.0.0/24 -i weft-n1 -j RETURN",
		"-i weft-n1 -j DROP",
	}
	if strings.Join(v4, "\n") != strings.Join(want4, "\n") {
		t.Fatalf("IPv4 raw:\n%s\nwant\n%s", strings.Join(v4, "\n"), strings.Join(want4, "\n"))
	}
	v6 := chainOf(Render(IPv6, []Network{n}, nil), "raw", ChainRaw)
	want6 := []string{
		"-s fd00:1::/64 -i weft-n1 -j RETURN",
		"-s fe80::/10 -i weft-n1 -j RETURN",
		"-s ::/128 -i weft-n1 -j RETURN",
		"-i weft-n1 -j DROP",
	}
	if strings.Join(v6, "\n") != strings.Join(want6, "\n") {
		t.Fatalf("IPv6 raw:\n%s\nwant\n%s", strings.Join(v6, "\n"), strings.Join(want6, "\n"))
	}
	// Both families hook raw PREROUTING.
	for _, fam := range []Family{IPv4, IPv6} {
		found := false
		for _, h := range Hooks(fam) {
			found = found || (h.Table == "raw" && h.Chain == "PREROUTING")
		}
		if !found {
			t.Errorf("IPv%d: no raw PREROUTING hook", fam)
		}
	}
}

// A new bridge enumerated by the driver adds its DROP in place (no rebuild);
// its removal takes it out again; the raw hooks exist in both families.
func TestSyncFollowsBridges(t *testing.T) {
	v4, v6 := dockerFake(), NewFake()
	fw := New(v4, v6)
	nets := []Network{base()}
	if err := fw.Sync(nets, nil); err != nil {
		t.Fatal(err)
	}
	before := v4.Dump()
	ops := fw.Ops
	if err := fw.Sync(nets, []string{"lab0"}); err != nil {
		t.Fatal(err)
	}
	// One insert per family.
	if fw.Ops-ops != 2 || !strings.Contains(v4.Dump(), "-i weft-n1 -o lab0 -j DROP") || !strings.Contains(v6.Dump(), "-i weft-n1 -o lab0 -j DROP") {
		t.Fatalf("new bridge took %d changes:\n%s", fw.Ops-ops, v4.Dump())
	}
	if err := fw.Sync(nets, nil); err != nil {
		t.Fatal(err)
	}
	if v4.Dump() != before {
		t.Fatalf("bridge gone, rules differ:\n%s\nwant\n%s", v4.Dump(), before)
	}
	if d := v6.Dump(); !strings.Contains(d, "raw/PREROUTING\n  -j WEFT-PREROUTING") {
		t.Fatalf("no IPv6 raw hook:\n%s", d)
	}
	if err := fw.Sync(nil, nil); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(v6.Dump(), "WEFT") || strings.Contains(v4.Dump(), "WEFT") {
		t.Fatalf("left after the last network:\n%s\n%s", v4.Dump(), v6.Dump())
	}
}

func TestCovered(t *testing.T) {
	for name, want := range map[string]bool{"docker0": true, "br-1234": true, "br0": false, "virbr1": true, "cni0": true, "mybr": false, "weft-abc": true, "docker_gwbridge": true} {
		if covered(name, BridgePatterns) != want {
			t.Errorf("covered(%s) = %v", name, !want)
		}
	}
}
