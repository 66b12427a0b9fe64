package firewall

import (
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the golden files")

func pfx(s string) netip.Prefix { return netip.MustParsePrefix(s) }
func ip(s string) netip.Addr    { return netip.MustParseAddr(s) }

// testBridges stands for what the driver enumerates: the network's own
// bridge, Docker's (covered by patterns) and a bridge no pattern knows.
var testBridges = []string{"weft-n1", "docker0", "br-0123456789ab", "mybr0"}

func base() Network {
	return Network{ID: "n1", Bridge: "weft-n1", Subnets: []netip.Prefix{pfx("10.20.0.0/24")}, ICC: true, Masquerade: true}
}

// goldenCases covers every option combination of the bridge type that changes rules.
func goldenCases() map[string][]Network {
	noICC := base()
	noICC.ICC = false
	noMasq := base()
	noMasq.Masquerade = false
	internal := base()
	internal.Internal = true
	internal.Ports = []PortMap{{Proto: "tcp", HostPort: 8080, ContainerIP: ip("10.20.0.2"), ContainerPort: 80}}
	ports := base()
	ports.Ports = []PortMap{
		{Proto: "udp", HostPort: 5353, ContainerIP: ip("10.20.0.3"), ContainerPort: 53},
		{Proto: "tcp", HostIP: ip("127.0.0.1"), HostPort: 8080, ContainerIP: ip("10.20.0.2"), ContainerPort: 80},
		{Proto: "tcp", HostPort: 8081, ContainerIP: ip("10.20.0.2"), ContainerPort: 81},
	}
	dual := base()
	dual.Subnets = append(dual.Subnets, pfx("fd00:1::/64"))
	second := Network{ID: "n2", Bridge: "weft-n2", Subnets: []netip.Prefix{pfx("10.30.0.0/24")}, ICC: true, Masquerade: true}
	// gateway_mode_ipv4=routed: no NAT at all, published ports opened on
	// the container's address, ICMP in.
	routed := ports
	routed.Routed4 = true
	// host_ipv4: SNAT to a chosen address instead of MASQUERADE.
	snat := base()
	snat.SNAT4 = ip("192.0.2.10")
	// trusted_host_interfaces: direct access to published ports from eth9.
	trusted := ports
	trusted.Trusted = []string{"eth9"}
	// --ipv4=false: an IPv6 subnet only, ports on the IPv6 address in
	// gateway_mode_ipv6=routed.
	v6only := Network{ID: "n1", Bridge: "weft-n1", Subnets: []netip.Prefix{pfx("fd00:1::/64")}, ICC: true, Masquerade: true, Routed6: true,
		Ports: []PortMap{{Proto: "tcp", HostPort: 8080, ContainerIP: ip("fd00:1::2"), ContainerPort: 80}}}
	return map[string][]Network{
		"routed":       {routed, second},
		"host-ipv4":    {snat},
		"trusted":      {trusted},
		"ipv6-only":    {v6only},
		"default":      {base()},
		"icc-off":      {noICC},
		"no-masq":      {noMasq},
		"internal":     {internal},
		"ports":        {ports},
		"dual-stack":   {dual},
		"two-networks": {second, base()},
		"none":         nil,
	}
}

func TestRenderGolden(t *testing.T) {
	for name, nets := range goldenCases() {
		t.Run(name, func(t *testing.T) {
			got := "# IPv4\n" + Render(IPv4, nets, testBridges).Format() + "# IPv6\n" + Render(IPv6, nets, testBridges).Format()
			path := filepath.Join("testdata", name+".golden")
			if *update {
				if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run go test ./firewall -update to create it)", err)
			}
			if got != string(want) {
				t.Errorf("rules differ from %s:\n--- got\n%s--- want\n%s", path, got, want)
			}
		})
	}
}

func TestRenderIsolationOrder(t *testing.T) {
	// Every rule about traffic into a bridge must come before any egress ACCEPT,
	// or one weft network could reach another.
	rs := Render(IPv4, goldenCases()["two-networks"], testBridges)
	rules := rs["filter"][ChainForward]
	lastIn, firstOut := -1, len(rules)
	for i, r := range rules {
		s := join(r)
		if strings.HasPrefix(s, "-o ") && strings.HasSuffix(s, "DROP") {
			lastIn = i
		}
		if strings.HasPrefix(s, "-i ") && strings.HasSuffix(s, "-j ACCEPT") && !strings.Contains(s, " -o ") && i < firstOut {
			firstOut = i
		}
	}
	if lastIn < 0 || lastIn > firstOut {
		t.Fatalf("ingress DROP at %d after egress ACCEPT at %d:\n%s", lastIn, firstOut, rs.Format())
	}
}

func TestSyncIdempotentAndMinimal(t *testing.T) {
	v4, v6 := dockerFake(), NewFake()
	fw := New(v4, v6)
	nets := []Network{base()}
	if err := fw.Sync(nets, nil); err != nil {
		t.Fatal(err)
	}
	dump := v4.Dump()
	if !strings.Contains(dump, "filter/DOCKER-USER\n  -j WEFT-FORWARD\n  -j RETURN\n") || strings.Contains(dump, "filter/FORWARD\n  -j WEFT") {
		t.Fatalf("weft jump not inside DOCKER-USER before its RETURN:\n%s", dump)
	}
	// A second sync with a forgotten cache must read the kernel and change nothing.
	fw.Forget()
	before := fw.Ops
	if err := fw.Sync(nets, nil); err != nil {
		t.Fatal(err)
	}
	if fw.Ops != before {
		t.Fatalf("repeated sync made %d changes", fw.Ops-before)
	}
	// Adding a port inserts rules without rebuilding the chain.
	withPort := base()
	withPort.Ports = []PortMap{{Proto: "tcp", HostPort: 8080, ContainerIP: ip("10.20.0.2"), ContainerPort: 80}}
	before = fw.Ops
	if err := fw.Sync([]Network{withPort}, nil); err != nil {
		t.Fatal(err)
	}
	// Exactly four inserts: DNAT accept, the DNAT itself, hairpin and localhost masquerade.
	if got := fw.Ops - before; got != 4 {
		t.Fatalf("one new port took %d changes, want 4 inserts:\n%s", got, v4.Dump())
	}
	if !strings.Contains(v4.Dump(), "--to-destination 10.20.0.2:80") {
		t.Fatalf("DNAT rule missing:\n%s", v4.Dump())
	}
	// Removing the port removes exactly its rules again.
	if err := fw.Sync(nets, nil); err != nil {
		t.Fatal(err)
	}
	if v4.Dump() != dump {
		t.Fatalf("state after removing the port differs:\n%s\nwant\n%s", v4.Dump(), dump)
	}
	// The last network gone: hooks and chains gone, Docker's rules untouched.
	if err := fw.Sync(nil, nil); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{v4.Dump(), v6.Dump()} {
		if strings.Contains(d, "WEFT") {
			t.Fatalf("weft rules left after last network:\n%s", d)
		}
	}
	if !strings.Contains(v4.Dump(), "-j DOCKER-USER") {
		t.Fatal("Docker's rule was removed")
	}
}

// dockerFake is a Fake with the chains dockerd sets up.
func dockerFake() *Fake {
	f := NewFake()
	_ = f.NewChain("filter", "DOCKER-USER")
	_ = f.Append("filter", "DOCKER-USER", "-j", "RETURN")
	_ = f.Append("filter", "FORWARD", "-j", "DOCKER-USER")
	_ = f.Append("filter", "FORWARD", "-j", "DOCKER-ISOLATION-STAGE-1")
	return f
}

func TestForwardJumpSurvivesDockerAndUsers(t *testing.T) {
	v4 := dockerFake()
	fw := New(v4, nil)
	nets := []Network{base()}
	if err := fw.Sync(nets, nil); err != nil {
		t.Fatal(err)
	}
	// Docker adds a network: its rules go to the top of FORWARD. A user
	// inserts a rule at the top of DOCKER-USER. Neither disturbs weft.
	_ = v4.Insert("filter", "FORWARD", 1, "-i", "br-new", "!", "-o", "br-new", "-j", "ACCEPT")
	_ = v4.Insert("filter", "DOCKER-USER", 1, "-s", "192.0.2.9/32", "-j", "DROP")
	if err := fw.Sync(nets, nil); err != nil {
		t.Fatal(err)
	}
	if d := v4.Dump(); !strings.Contains(d, "filter/DOCKER-USER\n  -s 192.0.2.9/32 -j DROP\n  -j WEFT-FORWARD\n  -j RETURN\n") {
		t.Fatalf("order in DOCKER-USER wrong:\n%s", d)
	}
	// A firewall script flushes DOCKER-USER: the next sync (with nothing
	// else changed, as the watchdog runs it) restores the jump.
	_ = v4.ClearChain("filter", "DOCKER-USER")
	_ = v4.Append("filter", "DOCKER-USER", "-j", "RETURN")
	if err := fw.Sync(nets, nil); err != nil {
		t.Fatal(err)
	}
	if d := v4.Dump(); !strings.Contains(d, "filter/DOCKER-USER\n  -j WEFT-FORWARD\n  -j RETURN\n") {
		t.Fatalf("jump not restored after a flush:\n%s", d)
	}
}

func TestForwardJumpWithoutDockerThenWithDocker(t *testing.T) {
	v4 := NewFake()
	_ = v4.Append("filter", "FORWARD", "-j", "SOMETHING")
	fw := New(v4, nil)
	nets := []Network{base()}
	if err := fw.Sync(nets, nil); err != nil {
		t.Fatal(err)
	}
	if d := v4.Dump(); !strings.Contains(d, "filter/FORWARD\n  -j WEFT-FORWARD\n  -j SOMETHING\n") {
		t.Fatalf("without DOCKER-USER the jump belongs at the top of FORWARD:\n%s", d)
	}
	// dockerd starts after weft and creates DOCKER-USER: the jump moves there.
	_ = v4.NewChain("filter", "DOCKER-USER")
	_ = v4.Append("filter", "DOCKER-USER", "-j", "RETURN")
	_ = v4.Insert("filter", "FORWARD", 1, "-j", "DOCKER-USER")
	if err := fw.Sync(nets, nil); err != nil {
		t.Fatal(err)
	}
	d := v4.Dump()
	if strings.Count(d, "-j WEFT-FORWARD") != 1 || !strings.Contains(d, "filter/DOCKER-USER\n  -j WEFT-FORWARD\n  -j RETURN\n") {
		t.Fatalf("jump not moved into DOCKER-USER:\n%s", d)
	}
	if err := fw.Sync(nil, nil); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(v4.Dump(), "WEFT") {
		t.Fatalf("left after the last network:\n%s", v4.Dump())
	}
}

func TestSyncRepairsTamperedChain(t *testing.T) {
	v4 := NewFake()
	fw := New(v4, nil)
	nets := []Network{base(), goldenCases()["two-networks"][0]}
	if err := fw.Sync(nets, nil); err != nil {
		t.Fatal(err)
	}
	want := v4.Dump()
	// Someone deletes a rule and adds a foreign one, and reorders: sync restores.
	rules, _ := listRules(v4, "filter", ChainForward)
	_ = v4.Delete("filter", ChainForward, strings.Fields(rules[0])...)
	_ = v4.Append("filter", ChainForward, "-j", "ACCEPT")
	_ = v4.Append("filter", ChainForward, strings.Fields(rules[0])...)
	fw.Forget()
	if err := fw.Sync(nets, nil); err != nil {
		t.Fatal(err)
	}
	if got := v4.Dump(); got != want {
		t.Fatalf("not repaired:\n%s\nwant\n%s", got, want)
	}
}

// A DOCKER-USER chain that FORWARD does not reach (left by an iptables run
// of Docker before it switched to nftables, or after `iptables -F`) must
// not swallow the jump: it goes to the top of FORWARD, and back into
// DOCKER-USER once FORWARD jumps there again.
func TestForwardJumpIgnoresUnreachedDockerUser(t *testing.T) {
	v4 := NewFake()
	_ = v4.NewChain("filter", "DOCKER-USER")
	_ = v4.Append("filter", "DOCKER-USER", "-j", "RETURN")
	fw := New(v4, nil)
	nets := []Network{base()}
	if err := fw.Sync(nets, nil); err != nil {
		t.Fatal(err)
	}
	d := v4.Dump()
	if !strings.Contains(d, "filter/FORWARD\n  -j WEFT-FORWARD\n") || strings.Count(d, "-j WEFT-FORWARD") != 1 {
		t.Fatalf("orphaned DOCKER-USER: the jump belongs at the top of FORWARD, once:\n%s", d)
	}

	// Docker (iptables backend) comes up: the jump moves into DOCKER-USER.
	_ = v4.Insert("filter", "FORWARD", 1, "-j", "DOCKER-USER")
	if err := fw.Sync(nets, nil); err != nil {
		t.Fatal(err)
	}
	d = v4.Dump()
	if strings.Count(d, "-j WEFT-FORWARD") != 1 || !strings.Contains(d, "filter/DOCKER-USER\n  -j WEFT-FORWARD\n  -j RETURN\n") {
		t.Fatalf("jump not moved into the reached DOCKER-USER:\n%s", d)
	}

	// iptables -F: every chain emptied, DOCKER-USER kept but unreached.
	_ = v4.ClearChain("filter", "FORWARD")
	_ = v4.ClearChain("filter", "DOCKER-USER")
	fw.Forget()
	if err := fw.Sync(nets, nil); err != nil {
		t.Fatal(err)
	}
	d = v4.Dump()
	if !strings.Contains(d, "filter/FORWARD\n  -j WEFT-FORWARD\n") || strings.Count(d, "-j WEFT-FORWARD") != 1 {
		t.Fatalf("after iptables -F the jump must be back at the top of FORWARD:\n%s", d)
	}
	if !strings.Contains(d, "filter/WEFT-FORWARD\n  -o ") {
		t.Fatalf("weft's chain not refilled after the flush:\n%s", d)
	}
}
