package e2e

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
)

func TestNameResolutionAndAddressing(t *testing.T) {
	n := ipamNetwork(t)
	a := sleeper(t, "--network", n)
	b := sleeper(t, "--network", n)
	// Docker's embedded DNS resolves container names on a weft network.
	if !canPing(a, b) {
		t.Fatalf("%s cannot ping %s by name", a, b)
	}
	// weft IPAM chose the subnet from its default pools.
	subnet := mustDocker(t, "network", "inspect", "-f", "{{(index .IPAM.Config 0).Subnet}}", n)
	p, err := netip.ParsePrefix(subnet)
	if err != nil || !netip.MustParsePrefix("10.201.0.0/16").Contains(p.Addr()) || p.Bits() != 24 {
		t.Fatalf("subnet %q not a /24 from the default pool 10.201.0.0/16", subnet)
	}
	ipA, ipB := ipOf(t, a, n), ipOf(t, b, n)
	if ipA == ipB || !p.Contains(netip.MustParseAddr(ipA)) || !p.Contains(netip.MustParseAddr(ipB)) {
		t.Fatalf("addresses %s, %s not distinct members of %s", ipA, ipB, p)
	}
	// The bridge holds the gateway address; the container's MAC follows Docker's 02:42 scheme.
	br, err := netlink.LinkByName(bridgeOf(t, n))
	if err != nil {
		t.Fatalf("bridge: %v", err)
	}
	gw := mustDocker(t, "network", "inspect", "-f", "{{(index .IPAM.Config 0).Gateway}}", n)
	addrs, _ := netlink.AddrList(br, netlink.FAMILY_V4)
	if len(addrs) != 1 || addrs[0].IP.String() != gw {
		t.Fatalf("bridge addresses %v, want gateway %s", addrs, gw)
	}
	mac := mustDocker(t, "exec", a, "cat", "/sys/class/net/eth0/address")
	if !strings.HasPrefix(mac, "02:42:") {
		t.Fatalf("container MAC %s", mac)
	}
	// The default route points at the gateway.
	route := mustDocker(t, "exec", a, "ip", "route", "show", "default")
	if !strings.Contains(route, "via "+gw) {
		t.Fatalf("default route %q does not use gateway %s", route, gw)
	}
}

func TestIsolation(t *testing.T) {
	n1, n2 := ipamNetwork(t), ipamNetwork(t)
	c1 := sleeper(t, "--network", n1)
	c1b := sleeper(t, "--network", n1)
	c2 := sleeper(t, "--network", n2)
	d0 := sleeper(t) // on Docker's own default bridge
	ip1, ip2, ipd := ipOf(t, c1, n1), ipOf(t, c2, n2), ipOf(t, d0, "bridge")
	if !canPing(c1, ipOf(t, c1b, n1)) {
		t.Fatal("containers on the same network cannot talk")
	}
	// Whatever the host's FORWARD policy (Docker 20.10 keeps ACCEPT when
	// IP forwarding was already on).
	for _, pol := range policies {
		t.Run("policy="+pol, func(t *testing.T) {
			forwardPolicy(t, pol)
			for _, c := range []struct{ from, to, what string }{
				{c1, ip2, "weft network 1 -> weft network 2"},
				{c2, ip1, "weft network 2 -> weft network 1"},
				{d0, ip1, "docker0 -> weft"},
				{c1, ipd, "weft -> docker0"},
			} {
				if canPing(c.from, c.to) {
					t.Errorf("%s: %s reached %s, isolation broken", c.what, c.from, c.to)
				}
			}
			// The host itself can still reach its containers (as with Docker's bridge).
			if out, err := exec("ping", "-c1", "-W2", ip1); err != nil {
				t.Errorf("host cannot ping %s: %v %s", ip1, err, out)
			}
		})
	}
}

func TestICCDisabled(t *testing.T) {
	n := ipamNetwork(t, "-o", "com.docker.network.bridge.enable_icc=false")
	a := sleeper(t, "--network", n)
	b := sleeper(t, "--network", n)
	if canPing(a, ipOf(t, b, n)) {
		t.Fatal("enable_icc=false but containers talk to each other")
	}
	gw := mustDocker(t, "network", "inspect", "-f", "{{(index .IPAM.Config 0).Gateway}}", n)
	if !canPing(a, gw) {
		t.Fatal("enable_icc=false must still let a container reach its gateway")
	}
}

func TestEgressMasqueradeAndInternal(t *testing.T) {
	o := newOutside(t)
	n := ipamNetwork(t)
	c := sleeper(t, "--network", n)
	got := o.listenTCP(t, 7001)
	if out, err := execIn(c, "sh", "-c", fmt.Sprintf("echo hi | nc -w 3 %s 7001", o.peerIP)); err != nil {
		t.Fatalf("container cannot reach the outside host: %v %s", err, out)
	}
	select {
	case remote := <-got:
		// Masquerade: the outside host sees this host's address, not the container's.
		if !strings.HasPrefix(remote, o.hostIP+":") {
			t.Fatalf("outside saw %s, want the host address %s (masquerade)", remote, o.hostIP)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no connection arrived outside")
	}

	// enable_ip_masquerade=false: the outside sees the container's own address.
	nm := ipamNetwork(t, "-o", "com.docker.network.bridge.enable_ip_masquerade=false")
	cm := sleeper(t, "--network", nm)
	sh(t, fmt.Sprintf("ip -n %s route add %s via %s", o.ns, mustDocker(t, "network", "inspect", "-f", "{{(index .IPAM.Config 0).Subnet}}", nm), o.hostIP))
	got = o.listenTCP(t, 7002)
	if out, err := execIn(cm, "sh", "-c", fmt.Sprintf("echo hi | nc -w 3 %s 7002", o.peerIP)); err != nil {
		t.Fatalf("unmasqueraded container cannot reach outside: %v %s", err, out)
	}
	select {
	case remote := <-got:
		if !strings.HasPrefix(remote, ipOf(t, cm, nm)+":") {
			t.Fatalf("outside saw %s, want the container address %s", remote, ipOf(t, cm, nm))
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no connection arrived outside")
	}

	// --internal: no way out, but the containers still talk among themselves.
	in := ipamNetwork(t, "--internal")
	ci := sleeper(t, "--network", in)
	ci2 := sleeper(t, "--network", in)
	if canPing(ci, o.peerIP) {
		t.Fatal("a container on an --internal network reached the outside host")
	}
	if !canPing(ci, ci2) {
		t.Fatal("containers on an --internal network cannot talk to each other")
	}
	if r := mustDocker(t, "exec", ci, "ip", "route"); strings.Contains(r, "default") {
		t.Fatalf("--internal container has a default route: %s", r)
	}
}

func TestMTU(t *testing.T) {
	n := ipamNetwork(t, "-o", "com.docker.network.driver.mtu=1400")
	c := sleeper(t, "--network", n)
	if mtu := mustDocker(t, "exec", c, "cat", "/sys/class/net/eth0/mtu"); mtu != "1400" {
		t.Fatalf("container MTU %s, want 1400", mtu)
	}
	br, err := netlink.LinkByName(bridgeOf(t, n))
	if err != nil || br.Attrs().MTU != 1400 {
		t.Fatalf("bridge MTU: %v %v", err, br)
	}
	// The host end of the veth carries the MTU too.
	links, _ := netlink.LinkList()
	found := false
	for _, l := range links {
		if l.Attrs().MasterIndex == br.Attrs().Index {
			found = true
			if l.Attrs().MTU != 1400 {
				t.Fatalf("host veth %s MTU %d", l.Attrs().Name, l.Attrs().MTU)
			}
		}
	}
	if !found {
		t.Fatal("no veth on the bridge")
	}
	// The short alias works the same.
	n2 := ipamNetwork(t, "-o", "mtu=1300")
	c2 := sleeper(t, "--network", n2)
	if mtu := mustDocker(t, "exec", c2, "cat", "/sys/class/net/eth0/mtu"); mtu != "1300" {
		t.Fatalf("mtu=1300 gave %s", mtu)
	}
}

func TestStaticAddressRangeGatewayAux(t *testing.T) {
	n := ipamNetwork(t, "--subnet", "10.77.0.0/24", "--ip-range", "10.77.0.128/25", "--gateway", "10.77.0.1",
		"--aux-address", "reserved=10.77.0.129")
	auto := sleeper(t, "--network", n)
	ip := netip.MustParseAddr(ipOf(t, auto, n))
	if !netip.MustParsePrefix("10.77.0.128/25").Contains(ip) || ip.String() == "10.77.0.129" {
		t.Fatalf("automatic address %s not in --ip-range or is the aux address", ip)
	}
	static := sleeper(t, "--network", n, "--ip", "10.77.0.10")
	if got := ipOf(t, static, n); got != "10.77.0.10" {
		t.Fatalf("--ip gave %s", got)
	}
	if !canPing(auto, "10.77.0.10") {
		t.Fatal("auto container cannot reach the static one")
	}
	if mustDocker(t, "network", "inspect", "-f", "{{(index .IPAM.Config 0).Gateway}}", n) != "10.77.0.1" {
		t.Fatal("gateway not as requested")
	}
	// Docker's default IPAM with the weft driver works too.
	d := network(t, "--subnet", "10.78.0.0/24")
	cd := sleeper(t, "--network", d, "--ip", "10.78.0.50")
	if ipOf(t, cd, d) != "10.78.0.50" {
		t.Fatal("static address with Docker's IPAM")
	}
}

func TestIPv6DualStack(t *testing.T) {
	n := ipamNetwork(t, "--ipv6", "--subnet", "10.79.0.0/24", "--subnet", "fd00:77:1::/64")
	a := sleeper(t, "--network", n)
	b := sleeper(t, "--network", n)
	a6, b6 := ip6Of(t, a, n), ip6Of(t, b, n)
	if a6 == "" || b6 == "" || a6 == b6 {
		t.Fatalf("IPv6 addresses %q %q", a6, b6)
	}
	if !netip.MustParsePrefix("fd00:77:1::/64").Contains(netip.MustParseAddr(b6)) {
		t.Fatalf("%s not in the IPv6 subnet", b6)
	}
	eventually(t, 10*time.Second, "ping6 between containers", func() error {
		out, err := execIn(a, "ping", "-6", "-c", "1", "-W", "2", b6)
		if err != nil {
			return fmt.Errorf("%v %s", err, out)
		}
		return nil
	})
	// The gateway answers on IPv6 too.
	gw6 := mustDocker(t, "inspect", "-f", fmt.Sprintf(`{{(index .NetworkSettings.Networks %q).IPv6Gateway}}`, n), a)
	if out, err := execIn(a, "ping", "-6", "-c", "1", "-W", "2", gw6); err != nil {
		t.Fatalf("IPv6 gateway %s: %v %s", gw6, err, out)
	}
}

func TestConnectDisconnect(t *testing.T) {
	n1, n2 := ipamNetwork(t), ipamNetwork(t)
	a := sleeper(t, "--network", n1)
	b := sleeper(t, "--network", n2)
	if canPing(a, ipOf(t, b, n2)) {
		t.Fatal("reached another network before connecting")
	}
	mustDocker(t, "network", "connect", n2, a)
	if !canPing(a, b) {
		t.Fatal("after network connect, cannot reach the other network's container by name")
	}
	if out := mustDocker(t, "exec", a, "ip", "-o", "link"); !strings.Contains(out, "eth1") {
		t.Fatalf("no eth1 after connect: %s", out)
	}
	mustDocker(t, "network", "disconnect", n2, a)
	if out := mustDocker(t, "exec", a, "ip", "-o", "link"); strings.Contains(out, "eth1") {
		t.Fatalf("eth1 still there after disconnect: %s", out)
	}
	if canPing(a, ipOf(t, b, n2)) {
		t.Fatal("still reaching the other network after disconnect")
	}
}
