package e2e

// What Docker Engine 28/29 added for network plugins, driven through the
// engine under test: --subnet 0.0.0.0/N with weft's IPAM, IPv6-only
// networks (--ipv4=false), GwAllocCheck, and Docker's newer bridge options
// (gateway modes, host_ipv4, trusted_host_interfaces, the refused ones).

import (
	"fmt"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
)

// needEngine skips on engines older than major, with why.
func needEngine(t *testing.T, major int, why string) {
	t.Helper()
	if m := dockerMajor(t); m < major {
		t.Skip("[engine] " + why)
	}
}

func subnets(t *testing.T, n string) []netip.Prefix {
	t.Helper()
	out := mustDocker(t, "network", "inspect", "-f", `{{range .IPAM.Config}}{{.Subnet}} {{end}}`, n)
	var ps []netip.Prefix
	for _, f := range strings.Fields(out) {
		p, err := netip.ParsePrefix(f)
		if err != nil {
			t.Fatalf("network %s: subnet %q: %v", n, f, err)
		}
		ps = append(ps, p)
	}
	return ps
}

// gateways lists the IPAM gateways of a network ("" where none was allocated).
func gateways(t *testing.T, n string) []string {
	t.Helper()
	out := mustDocker(t, "network", "inspect", "-f", `{{range .IPAM.Config}}[{{.Gateway}}]{{end}}`, n)
	var gws []string
	for _, g := range strings.Split(strings.TrimSuffix(strings.TrimPrefix(out, "["), "]"), "][") {
		gws = append(gws, g)
	}
	return gws
}

// createFails runs docker network create with weft and returns its output;
// the test fails if it succeeds.
func createFails(t *testing.T, args ...string) string {
	t.Helper()
	name := uniq("bad")
	out, err := docker(append(append([]string{"network", "create", "-d", plugin}, args...), name)...)
	if err == nil {
		_, _ = docker("network", "rm", name)
		t.Fatalf("docker network create %s succeeded, want a refusal", strings.Join(args, " "))
	}
	return out
}

func wantIn(t *testing.T, what, out string, subs ...string) {
	t.Helper()
	for _, s := range subs {
		if !strings.Contains(out, s) {
			t.Errorf("%s: %q does not contain %q", what, out, s)
		}
	}
}

// bridgeAddrs are the addresses on a weft network's bridge for family
// (netlink.FAMILY_V4 or FAMILY_V6), without link-local ones.
func bridgeAddrs(t *testing.T, n string, family int) []string {
	t.Helper()
	br, err := netlink.LinkByName(bridgeOf(t, n))
	if err != nil {
		t.Fatalf("bridge of %s: %v", n, err)
	}
	addrs, err := netlink.AddrList(br, family)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, a := range addrs {
		if !a.IP.IsLinkLocalUnicast() {
			out = append(out, a.IP.String())
		}
	}
	return out
}

// Docker 29: --subnet 0.0.0.0/N (::/N) means any free /N from the IPAM
// driver's pools. weft's IPAM carves it from DEFAULT_POOLS, and the bridge
// gets the chosen subnet.
func TestEngineAnySubnetFromPools(t *testing.T) {
	needEngine(t, 29, "Docker 20.10 has no --subnet 0.0.0.0/N (Engine 29+)")
	def4, def6 := netip.MustParsePrefix("10.201.0.0/16"), netip.MustParsePrefix("fd77:7765:6674::/48")
	a := ipamNetwork(t, "--subnet", "0.0.0.0/26")
	b := ipamNetwork(t, "--subnet", "0.0.0.0/26")
	pa, pb := subnets(t, a), subnets(t, b)
	if len(pa) != 1 || len(pb) != 1 {
		t.Fatalf("subnets %v, %v", pa, pb)
	}
	for _, p := range []netip.Prefix{pa[0], pb[0]} {
		if p.Bits() != 26 || !def4.Contains(p.Addr()) {
			t.Fatalf("subnet %s: want a /26 from the default pool %s", p, def4)
		}
	}
	if pa[0].Overlaps(pb[0]) {
		t.Fatalf("two networks got overlapping subnets %s and %s", pa[0], pb[0])
	}
	// The network driver got the chosen subnet: the bridge holds the
	// gateway, containers get addresses in it and talk.
	gw := gateways(t, a)[0]
	if g, err := netip.ParseAddr(gw); err != nil || !pa[0].Contains(g) {
		t.Fatalf("gateway %q not in %s", gw, pa[0])
	}
	if got := bridgeAddrs(t, a, netlink.FAMILY_V4); len(got) != 1 || got[0] != gw {
		t.Fatalf("bridge addresses %v, want %s", got, gw)
	}
	c1, c2 := sleeper(t, "--network", a), sleeper(t, "--network", a)
	if ip := netip.MustParseAddr(ipOf(t, c1, a)); !pa[0].Contains(ip) {
		t.Fatalf("container address %s not in %s", ip, pa[0])
	}
	if !canPing(c1, c2) {
		t.Fatal("containers on a 0.0.0.0/26 network cannot talk")
	}
	// IPv6: ::/64 from the IPv6 default pool.
	d := ipamNetwork(t, "--ipv6", "--subnet", "0.0.0.0/24", "--subnet", "::/64")
	pd := subnets(t, d)
	if len(pd) != 2 || !def4.Contains(pd[0].Addr()) || pd[0].Bits() != 24 || !def6.Contains(pd[1].Addr()) || pd[1].Bits() != 64 {
		t.Fatalf("dual-stack 0.0.0.0/24 + ::/64 got %v", pd)
	}
	// Control: a real subnet is kept as given.
	if p := subnets(t, ipamNetwork(t, "--subnet", "10.61.0.0/24")); len(p) != 1 || p[0].String() != "10.61.0.0/24" {
		t.Fatalf("explicit subnet became %v", p)
	}
	// A size no default pool can hold is refused, naming the setting.
	wantIn(t, "0.0.0.0/8", createFails(t, "--ipam-driver", plugin, "--subnet", "0.0.0.0/8"),
		"no IPv4 default pool can hold a /8", "DEFAULT_POOLS")
}

// Docker 28+: --ipv4=false --ipv6 makes an IPv6-only network. weft builds
// a bridge with only the IPv6 gateway and no IPv4 NAT for it; containers
// talk over IPv6 and by name.
func TestEngineIPv6OnlyBridge(t *testing.T) {
	needEngine(t, 28, "Docker 20.10 has no --ipv4=false (Engine 28+)")
	n := ipamNetwork(t, "--ipv4=false", "--ipv6")
	if v := mustDocker(t, "network", "inspect", "-f", "{{.EnableIPv4}} {{.EnableIPv6}}", n); v != "false true" {
		t.Fatalf("EnableIPv4 EnableIPv6 = %s", v)
	}
	ps := subnets(t, n)
	if len(ps) != 1 || !ps[0].Addr().Is6() {
		t.Fatalf("subnets %v, want one IPv6 subnet", ps)
	}
	if v4 := bridgeAddrs(t, n, netlink.FAMILY_V4); len(v4) != 0 {
		t.Fatalf("IPv4 addresses on the bridge of an IPv6-only network: %v", v4)
	}
	gw6 := gateways(t, n)[0]
	if got := bridgeAddrs(t, n, netlink.FAMILY_V6); len(got) != 1 || netip.MustParseAddr(got[0]) != netip.MustParseAddr(gw6) {
		t.Fatalf("bridge IPv6 addresses %v, want the gateway %s", got, gw6)
	}
	a, b := sleeper(t, "--network", n), sleeper(t, "--network", n)
	if ip := ipOf(t, a, n); ip != "" {
		t.Fatalf("container got IPv4 %s on an IPv6-only network", ip)
	}
	a6, b6 := ip6Of(t, a, n), ip6Of(t, b, n)
	if a6 == "" || b6 == "" || !ps[0].Contains(netip.MustParseAddr(b6)) {
		t.Fatalf("IPv6 addresses %q %q not in %s", a6, b6, ps[0])
	}
	eventually(t, 10*time.Second, "ping6 between containers", func() error {
		if out, err := execIn(a, "ping", "-6", "-c", "1", "-W", "2", b6); err != nil {
			return fmt.Errorf("%v %s", err, out)
		}
		return nil
	})
	if out, err := execIn(a, "ping", "-6", "-c", "1", "-W", "2", b); err != nil {
		t.Fatalf("ping6 by name: %v %s", err, out)
	}
	if r := mustDocker(t, "exec", a, "ip", "-6", "route", "show", "default"); !strings.Contains(r, "via "+gw6) {
		t.Fatalf("IPv6 default route %q does not use the gateway %s", r, gw6)
	}
	if out := mustDocker(t, "exec", a, "ip", "-4", "addr", "show", "dev", "eth0"); strings.Contains(out, "inet ") {
		t.Fatalf("eth0 has an IPv4 address: %s", out)
	}
	// No IPv4 NAT for it; control: a dual-stack network has its MASQUERADE.
	dual := ipamNetwork(t, "--ipv6")
	nat := sh(t, "iptables-nft -t nat -S WEFT-POSTROUTING")
	if strings.Contains(nat, bridgeOf(t, n)) {
		t.Fatalf("IPv4 NAT rules for the IPv6-only network:\n%s", nat)
	}
	if !strings.Contains(nat, "! -o "+bridgeOf(t, dual)+" -j MASQUERADE") {
		t.Fatalf("control: no MASQUERADE for the dual-stack network in\n%s", nat)
	}
	// IPv4-only options are refused on it.
	wantIn(t, "host_binding_ipv4 on IPv6-only", createFails(t, "--ipam-driver", plugin, "--ipv4=false", "--ipv6",
		"-o", "com.docker.network.bridge.host_binding_ipv4=127.0.0.1"), "no IPv4 (--ipv4=false)")
}

// -p on an IPv6-only network: refused at docker run (weft publishes through
// IPv4 NAT), unless the network opens ports on the container's IPv6 address
// (gateway_mode_ipv6=routed), where a host outside reaches the port.
func TestEngineIPv6OnlyPublish(t *testing.T) {
	needEngine(t, 28, "Docker 20.10 has no --ipv4=false (Engine 28+)")
	n := ipamNetwork(t, "--ipv4=false", "--ipv6")
	name := uniq("c")
	t.Cleanup(func() { _, _ = docker("rm", "-f", name) })
	out, err := docker("run", "-d", "--name", name, "--network", n, "-p", "18480:80", image, "httpd", "-f", "-p", "80", "-h", "/www")
	if err == nil {
		t.Fatal("docker run -p on an IPv6-only network succeeded")
	}
	t.Logf("docker run -p on an IPv6-only network: %s", out)
	wantIn(t, "docker run -p", out, "cannot publish port 80/tcp", "IPv6-only (--ipv4=false)", "gateway_mode_ipv6=routed")
	if st, _ := docker("inspect", "-f", "{{.State.Running}}", name); st == "true" {
		t.Fatal("the refused container runs")
	}
	// Control on the same network: without -p it starts.
	sleeper(t, "--network", n)

	// Routed: the port is opened on the container's IPv6 address.
	o := newOutside(t)
	r := ipamNetwork(t, "--ipv4=false", "--ipv6", "--subnet", "fd00:62::/64", "-o", "com.docker.network.bridge.gateway_mode_ipv6=routed")
	plain := ipamNetwork(t, "--ipv4=false", "--ipv6", "--subnet", "fd00:63::/64")
	o.ipv6(t, "fd00:62::/64", "fd00:63::/64")
	w := web(t, "--network", r, "-p", "18481:80")
	wp := web(t, "--network", plain)
	w6, wp6 := ip6Of(t, w, r), ip6Of(t, wp, plain)
	eventually(t, 10*time.Second, "routed IPv6 published port from outside", func() error {
		body, err := o.get("[" + w6 + "]:80")
		if err != nil || !strings.Contains(body, page) {
			return fmt.Errorf("%v %q", err, body)
		}
		return nil
	})
	// Control: a server on a network without the option answers the host
	// itself but not the outside host.
	eventually(t, 10*time.Second, "IPv6 server from the host", func() error {
		body, err := httpGet("[" + wp6 + "]:80")
		if err != nil || !strings.Contains(body, page) {
			return fmt.Errorf("%v %q", err, body)
		}
		return nil
	})
	wantNoPage(t, "IPv6 container of a network without the option, from outside", "["+wp6+"]:80", o.get)
}

// ipv6 gives the outside host an IPv6 address on its link and routes the
// given subnets through this host, with IPv6 forwarding on for the test.
func (o *outside) ipv6(t *testing.T, routes ...string) {
	t.Helper()
	sh(t, fmt.Sprintf(`ip addr add fd00:198:18::1/64 dev wfe2eo0 nodad && ip -n %[1]s addr add fd00:198:18::2/64 dev wfe2eo1 nodad &&
		ip -n %[1]s -6 route add default via fd00:198:18::1`, o.ns))
	for _, r := range routes {
		sh(t, fmt.Sprintf("ip -n %s -6 route replace %s via fd00:198:18::1", o.ns, r))
	}
	const fwd = "/proc/sys/net/ipv6/conf/all/forwarding"
	prev, err := os.ReadFile(fwd)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(fwd, []byte("1"), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.WriteFile(fwd, prev, 0o644) })
}

// GwAllocCheck (Docker 28+): weft tells Docker which networks need no
// gateway address, and Docker then reserves none.
func TestEngineGwAllocCheck(t *testing.T) {
	needEngine(t, 28, "Docker 20.10 never calls GwAllocCheck (Engine 28+)")
	l := newLAN(t, 51)
	mac := func(args ...string) string {
		return ipamNetwork(t, append([]string{"-o", "type=macvlan", "-o", "parent=" + l.parent}, args...)...)
	}
	internal := mac("--subnet", "198.18.51.0/25", "--internal")
	if gw := gateways(t, internal); len(gw) != 1 || gw[0] != "" {
		t.Fatalf("internal macvlan network got gateway %v, want none", gw)
	}
	c := sleeper(t, "--network", internal)
	if ip := ipOf(t, c, internal); ip == "" || !netip.MustParsePrefix("198.18.51.0/25").Contains(netip.MustParseAddr(ip)) {
		t.Fatalf("container address %q", ip)
	}
	// Controls: not internal, a gateway is reserved; internal with
	// --gateway, the user's is kept; Docker's own IPAM asks weft too.
	if gw := gateways(t, mac("--subnet", "198.18.51.128/26")); len(gw) != 1 || gw[0] == "" {
		t.Fatalf("macvlan network without --internal got no gateway: %v", gw)
	}
	if gw := gateways(t, mac("--subnet", "198.18.51.192/27", "--internal", "--gateway", "198.18.51.222")); len(gw) != 1 || gw[0] != "198.18.51.222" {
		t.Fatalf("internal macvlan with --gateway: %v", gw)
	}
	dockerIPAM := network(t, "-o", "type=macvlan", "-o", "parent="+l.parent, "--subnet", "198.18.51.224/28", "--internal")
	if gw := gateways(t, dockerIPAM); len(gw) != 1 || gw[0] != "" {
		t.Fatalf("internal macvlan with Docker's IPAM got gateway %v", gw)
	}

	t.Run("ipvlan l3", func(t *testing.T) {
		if !kernelHasIPvlan(t) {
			t.Skip("this kernel has no ipvlan (CONFIG_IPVLAN); ipvlan is covered by the kernel lab")
		}
		l3 := ipamNetwork(t, "-o", "type=ipvlan", "-o", "parent="+l.parent, "-o", "ipvlan_mode=l3", "--subnet", "198.18.52.0/24")
		if gw := gateways(t, l3); len(gw) != 1 || gw[0] != "" {
			t.Fatalf("ipvlan l3 network got gateway %v, want none", gw)
		}
	})
}

func kernelHasIPvlan(t *testing.T) bool {
	t.Helper()
	_, _ = exec("ip", "link", "del", "wfe2eipv")
	if _, err := exec("ip", "link", "add", "wfe2eipv", "type", "veth", "peer", "name", "wfe2eipv1"); err != nil {
		t.Fatal(err)
	}
	defer exec("ip", "link", "del", "wfe2eipv")
	_, err := exec("ip", "link", "add", "link", "wfe2eipv", "name", "wfe2eipv2", "type", "ipvlan", "mode", "l3")
	return err == nil
}

// Docker's bridge options that weft does not implement are refused by
// name; the ones it implements work (a working control beside each refusal).
func TestEngineBridgeOptionsRefused(t *testing.T) {
	for _, c := range []struct {
		opt  string
		want []string
	}{
		{"com.docker.network.bridge.inhibit_ipv4=true", []string{"com.docker.network.bridge.inhibit_ipv4 is Docker bridge's; weft does not support it yet"}},
		{"com.docker.network.bridge.default_bridge=true", []string{"default_bridge is Docker bridge's", "docker0"}},
		{"com.docker.network.host_ipv6=fd00::1", []string{"host_ipv6 is Docker bridge's"}},
		{"com.docker.network.bridge.gateway_mode_ipv4=nat-unprotected", []string{"gateway_mode_ipv4=nat-unprotected is Docker bridge's; weft does not support it yet"}},
		{"com.docker.network.bridge.gateway_mode_ipv6=nat", []string{"gateway_mode_ipv6=nat is Docker bridge's", "routed"}},
	} {
		wantIn(t, c.opt, createFails(t, "-o", c.opt), c.want...)
	}
	// Controls: the same keys with values weft supports.
	network(t, "-o", "com.docker.network.bridge.gateway_mode_ipv4=nat", "-o", "com.docker.network.bridge.gateway_mode_ipv6=routed")
	network(t, "-o", "com.docker.network.advertise_addr_nmsgs=1")
	// A bridge option on a macvlan network names the type it belongs to.
	l := newLAN(t, 53)
	wantIn(t, "bridge option on macvlan", createFails(t, "-o", "type=macvlan", "-o", "parent="+l.parent, "-o", "com.docker.network.bridge.enable_icc=false"),
		`"com.docker.network.bridge.enable_icc" is for type=bridge networks, and this network is type=macvlan`)
}

// gateway_mode_ipv4=routed: no NAT; a published port is reached on the
// container's own address from another host, not through a host port.
// Control: a NAT network is reached through the host port only.
func TestEngineGatewayModeRouted(t *testing.T) {
	o := newOutside(t)
	routed := ipamNetwork(t, "--subnet", "10.64.0.0/24", "-o", "com.docker.network.bridge.gateway_mode_ipv4=routed")
	nat := ipamNetwork(t, "--subnet", "10.65.0.0/24")
	sh(t, fmt.Sprintf("ip -n %[1]s route add 10.64.0.0/24 via %[2]s && ip -n %[1]s route add 10.65.0.0/24 via %[2]s", o.ns, o.hostIP))
	wr := web(t, "--network", routed, "-p", "18482:80")
	wn := web(t, "--network", nat, "-p", "18483:80")
	wrIP, wnIP := ipOf(t, wr, routed), ipOf(t, wn, nat)
	eventually(t, 10*time.Second, "routed port from outside", func() error {
		body, err := o.get(wrIP + ":80")
		if err != nil || !strings.Contains(body, page) {
			return fmt.Errorf("%v %q", err, body)
		}
		return nil
	})
	wantNoPage(t, "routed network through a host port", o.hostIP+":18482", o.get)
	wantPage(t, "NAT network through its host port", o.hostIP+":18483", o.get)
	wantNoPage(t, "NAT network on the container's address", wnIP+":80", o.get)
	// ICMP reaches routed containers (as with Docker), not NATed ones.
	if _, err := exec("ip", "netns", "exec", o.ns, "ping", "-c1", "-W2", wrIP); err != nil {
		t.Errorf("ping from outside to a routed container: %v", err)
	}
	if _, err := exec("ip", "netns", "exec", o.ns, "ping", "-c1", "-W2", wnIP); err == nil {
		t.Error("ping from outside reached a NATed container")
	}
	// No NAT: the outside host sees the container's own address.
	seen := o.listenTCP(t, 18484)
	mustDocker(t, "exec", wr, "sh", "-c", fmt.Sprintf("echo x | nc -w 2 %s 18484 || true", o.peerIP))
	select {
	case from := <-seen:
		if !strings.HasPrefix(from, wrIP+":") {
			t.Fatalf("outside host saw %s, want the container's %s", from, wrIP)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no connection from the routed container")
	}
}

// host_ipv4: outgoing IPv4 is SNATed to the chosen address; trusted host
// interfaces reach published ports on the container's address.
func TestEngineHostIPv4AndTrustedInterfaces(t *testing.T) {
	o := newOutside(t)
	const snat = "198.18.0.9"
	sh(t, "ip addr add "+snat+"/32 dev wfe2eo0")
	n := ipamNetwork(t, "--subnet", "10.66.0.0/24", "-o", "com.docker.network.host_ipv4="+snat,
		"-o", "com.docker.network.bridge.trusted_host_interfaces=wfe2eo0")
	plain := ipamNetwork(t, "--subnet", "10.67.0.0/24")
	sh(t, fmt.Sprintf("ip -n %[1]s route add 10.66.0.0/24 via %[2]s && ip -n %[1]s route add 10.67.0.0/24 via %[2]s", o.ns, o.hostIP))
	for _, c := range []struct {
		net, want string
		port      int
	}{{n, snat, 18485}, {plain, o.hostIP, 18486}} {
		c1 := sleeper(t, "--network", c.net)
		seen := o.listenTCP(t, c.port)
		mustDocker(t, "exec", c1, "sh", "-c", fmt.Sprintf("echo x | nc -w 2 %s %d || true", o.peerIP, c.port))
		select {
		case from := <-seen:
			if !strings.HasPrefix(from, c.want+":") {
				t.Fatalf("network %s: outside host saw %s, want %s", c.net, from, c.want)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("network %s: no connection reached the outside host", c.net)
		}
	}
	// Trusted: the outside link reaches the published port directly;
	// control: the same on a network without the option does not.
	wt := web(t, "--network", n, "-p", "18487:80")
	wp := web(t, "--network", plain, "-p", "18488:80")
	eventually(t, 10*time.Second, "trusted interface to the container's published port", func() error {
		body, err := o.get(ipOf(t, wt, n) + ":80")
		if err != nil || !strings.Contains(body, page) {
			return fmt.Errorf("%v %q", err, body)
		}
		return nil
	})
	wantPage(t, "control: published port of the plain network", o.hostIP+":18488", o.get)
	wantNoPage(t, "untrusted direct access", ipOf(t, wp, plain)+":80", o.get)
}

// gateway_mode_ipv4=isolated (with --internal): no address of the host on
// the network; containers still talk to each other.
func TestEngineGatewayModeIsolated(t *testing.T) {
	iso := ipamNetwork(t, "--internal", "-o", "com.docker.network.bridge.gateway_mode_ipv4=isolated")
	ctl := ipamNetwork(t, "--internal")
	if a := bridgeAddrs(t, iso, netlink.FAMILY_V4); len(a) != 0 {
		t.Fatalf("isolated bridge has IPv4 addresses %v", a)
	}
	if dockerMajor(t) >= 28 {
		if gw := gateways(t, iso); len(gw) != 1 || gw[0] != "" {
			t.Fatalf("isolated network got gateway %v (GwAllocCheck)", gw)
		}
	}
	a, b := sleeper(t, "--network", iso), sleeper(t, "--network", iso)
	if !canPing(a, ipOf(t, b, iso)) {
		t.Fatal("containers on an isolated network cannot talk")
	}
	if out, err := exec("ping", "-c1", "-W2", ipOf(t, a, iso)); err == nil {
		t.Fatalf("the host reached a container on an isolated network: %s", out)
	}
	c := sleeper(t, "--network", ctl)
	if out, err := exec("ping", "-c1", "-W2", ipOf(t, c, ctl)); err != nil {
		t.Fatalf("control: the host cannot reach a container on an --internal network: %v %s", err, out)
	}
	wantIn(t, "isolated without --internal", createFails(t, "-o", "com.docker.network.bridge.gateway_mode_ipv4=isolated"), "--internal")
}
