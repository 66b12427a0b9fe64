package e2e

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// hostLinkNames lists every link on the host, sorted.
func hostLinkNames(t *testing.T) string {
	t.Helper()
	links, err := netlink.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, l := range links {
		names = append(names, l.Attrs().Name)
	}
	sort.Strings(names)
	return strings.Join(names, " ")
}

func readSysctl(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile("/proc/sys/" + path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// TestHostileParentsAndNames: parents and bridge names that are not weft's
// to take (bridges, bridge ports, the loopback, weft's own links, Docker's
// and weft's names, existing devices) are refused, naming the option, with
// nothing created; a plain interface is still a valid parent.
func TestHostileParentsAndNames(t *testing.T) {
	other := ipamNetwork(t) // a weft bridge network whose bridge must not become a parent
	otherBr := bridgeOf(t, other)
	// A host bridge with a veth port, made by the test.
	_, _ = exec("ip", "link", "del", "wfe2ebr0")
	_, _ = exec("ip", "link", "del", "wfe2eport0")
	sh(t, "ip link add wfe2ebr0 type bridge && ip link add wfe2eport0 type veth peer name wfe2eport1 && ip link set wfe2eport0 master wfe2ebr0 && ip link set wfe2ebr0 up && ip link set wfe2eport0 up")
	t.Cleanup(func() {
		_, _ = exec("ip", "link", "del", "wfe2eport0")
		_, _ = exec("ip", "link", "del", "wfe2ebr0")
	})
	mv := func(p string) []string {
		return []string{"-o", "type=macvlan", "-o", "parent=" + p, "--subnet", "198.18.90.0/24"}
	}
	iv := func(p string) []string {
		return []string{"-o", "type=ipvlan", "-o", "parent=" + p, "--subnet", "198.18.91.0/24"}
	}
	brName := func(v string) []string {
		return []string{"--subnet", "198.18.92.0/24", "-o", "com.docker.network.bridge.name=" + v}
	}
	cases := []struct {
		name string
		args []string
		want []string
	}{
		{"macvlan on docker0", mv("docker0"), []string{"option parent=docker0", "docker0 is a bridge", "bypass its isolation", "physical interface"}},
		{"ipvlan on docker0", iv("docker0"), []string{"option parent=docker0", "is a bridge"}},
		{"macvlan on another weft network's bridge", mv(otherBr), []string{"option parent=" + otherBr, "is a bridge"}},
		{"macvlan on lo", mv("lo"), []string{"option parent=lo", "loopback"}},
		{"macvlan on a bridge port", mv("wfe2eport0"), []string{"option parent=wfe2eport0", "port of bridge wfe2ebr0"}},
		{"ipvlan on a host bridge", iv("wfe2ebr0"), []string{"option parent=wfe2ebr0", "is a bridge"}},
		{"bridge named docker0", brName("docker0"), []string{"com.docker.network.bridge.name=docker0", "Docker's own bridge", "choose another"}},
		{"bridge named like an existing device", brName("wfe2eport1"), []string{"com.docker.network.bridge.name=wfe2eport1", "already exists", "choose another"}},
		{"bridge named weft-foo", brName("weft-foo"), []string{"com.docker.network.bridge.name=weft-foo", "reserved for the interfaces weft creates"}},
	}
	netsBefore := mustDocker(t, "network", "ls", "-q")
	linksBefore := hostLinkNames(t)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			name := uniq("hostile")
			out, err := docker(append(append([]string{"network", "create", "-d", plugin}, c.args...), name)...)
			if err == nil {
				_, _ = docker("network", "rm", name)
				t.Fatalf("accepted: %v", c.args)
			}
			for _, w := range c.want {
				if !strings.Contains(out, w) {
					t.Errorf("error does not mention %q:\n%s", w, out)
				}
			}
		})
	}
	if after := mustDocker(t, "network", "ls", "-q"); after != netsBefore {
		t.Errorf("docker networks changed:\n%s\n->\n%s", netsBefore, after)
	}
	if after := hostLinkNames(t); after != linksBefore {
		t.Errorf("host links changed:\n%s\n->\n%s", linksBefore, after)
	}
	for _, br := range []string{"wfe2ebr0", otherBr} {
		if l, err := netlink.LinkByName(br); err != nil {
			t.Errorf("%s: %v", br, err)
		} else if a := l.Attrs().Alias; br == "wfe2ebr0" && a != "" {
			t.Errorf("%s was labelled %q", br, a)
		}
	}

	// Control: a plain veth is a valid parent; a container runs on it.
	l := newLAN(t, 93)
	n := l.network(t)
	c := sleeper(t, "--network", n)
	if !canPing(c, l.routerIP) {
		t.Errorf("container on a valid parent cannot reach the LAN router %s", l.routerIP)
	}
}

// TestHostileUnlabelledLinkSurvivesRestart: a link with a weft-style name
// but without weft's label is someone else's: a plugin restart (leftover
// sweep, reconcile) neither deletes nor adopts it.
func TestHostileUnlabelledLinkSurvivesRestart(t *testing.T) {
	_, _ = exec("ip", "link", "del", "wfhdeadbeef0")
	sh(t, "ip link add wfhdeadbeef0 type veth peer name wfe2epeer0 && ip link set wfhdeadbeef0 up")
	t.Cleanup(func() { _, _ = exec("ip", "link", "del", "wfhdeadbeef0") })
	n := ipamNetwork(t) // a stored network for reconcile to work on
	_ = sleeper(t, "--network", n)
	restartPlugin(t)
	mustDocker(t, "network", "inspect", n) // the plugin answers again
	eventually(t, 10*time.Second, "a second network create after the restart", func() error {
		name := uniq("probe")
		if out, err := docker("network", "create", "-d", plugin, "--ipam-driver", plugin, name); err != nil {
			return fmt.Errorf("%v: %s", err, out)
		}
		_, _ = docker("network", "rm", name)
		return nil
	})
	l, err := netlink.LinkByName("wfhdeadbeef0")
	if err != nil {
		t.Fatalf("the unlabelled wfhdeadbeef0 was deleted by the plugin restart: %v", err)
	}
	if a := l.Attrs().Alias; a != "" {
		t.Errorf("wfhdeadbeef0 was labelled %q", a)
	}
	if l.Attrs().MasterIndex != 0 {
		t.Errorf("wfhdeadbeef0 was enslaved to link %d", l.Attrs().MasterIndex)
	}
	if _, err := netlink.LinkByName("wfe2epeer0"); err != nil {
		t.Errorf("its peer is gone: %v", err)
	}
}

// setBackend restarts the plugin with IPTABLES_BACKEND=v.
func setBackend(t *testing.T, v string) {
	t.Helper()
	mustDocker(t, "plugin", "disable", "-f", plugin)
	mustDocker(t, "plugin", "set", plugin, "IPTABLES_BACKEND="+v)
	mustDocker(t, "plugin", "enable", plugin)
}

// TestHostileLoopbackWithoutFirewall: with IPTABLES_BACKEND=none no rule
// keeps containers off the host's loopback, so weft bridges keep
// route_localnet off and publishing on 127.0.0.1 is refused clearly. With
// the firewall (control) route_localnet is on and the same run works.
func TestHostileLoopbackWithoutFirewall(t *testing.T) {
	// Control, normal mode.
	n := ipamNetwork(t)
	br := bridgeOf(t, n)
	if v := readSysctl(t, "net/ipv4/conf/"+br+"/route_localnet"); v != "1" {
		t.Errorf("normal mode: net.ipv4.conf.%s.route_localnet = %s, want 1", br, v)
	}
	c := uniq("c")
	t.Cleanup(func() { _, _ = docker("rm", "-f", c) })
	mustDocker(t, "run", "-d", "--name", c, "--network", n, "-p", "127.0.0.1:18431:80", image, "sleep", "600")
	mustDocker(t, "rm", "-f", c)
	if _, err := docker("network", "rm", n); err != nil {
		t.Fatal(err)
	}

	setBackend(t, "none")
	t.Cleanup(func() { setBackend(t, "auto") })
	n = ipamNetwork(t)
	br = bridgeOf(t, n)
	if v := readSysctl(t, "net/ipv4/conf/"+br+"/route_localnet"); v != "0" {
		t.Errorf("IPTABLES_BACKEND=none: net.ipv4.conf.%s.route_localnet = %s, want 0 (no rule guards the loopback)", br, v)
	}
	c = uniq("c")
	t.Cleanup(func() { _, _ = docker("rm", "-f", c) })
	out, err := docker("run", "-d", "--name", c, "--network", n, "-p", "127.0.0.1:18432:80", image, "sleep", "600")
	if err == nil {
		t.Fatalf("publishing on 127.0.0.1 with IPTABLES_BACKEND=none was accepted: %s", out)
	}
	for _, w := range []string{"127.0.0.1:18432/tcp", "IPTABLES_BACKEND=none", "route_localnet", "IPTABLES_BACKEND=auto"} {
		if !strings.Contains(out, w) {
			t.Errorf("error does not mention %q:\n%s", w, out)
		}
	}
	if v := readSysctl(t, "net/ipv4/conf/"+br+"/route_localnet"); v != "0" {
		t.Errorf("after the refused run: route_localnet = %s", v)
	}
	// The network's own loopback default is refused at creation too.
	name := uniq("lo")
	out, err = docker("network", "create", "-d", plugin, "--ipam-driver", plugin, "-o", "com.docker.network.bridge.host_binding_ipv4=127.0.0.1", name)
	if err == nil {
		_, _ = docker("network", "rm", name)
		t.Fatal("host_binding_ipv4=127.0.0.1 accepted with IPTABLES_BACKEND=none")
	}
	if !strings.Contains(out, "host_binding_ipv4=127.0.0.1") || !strings.Contains(out, "IPTABLES_BACKEND=none") {
		t.Errorf("error does not name the option and the setting:\n%s", out)
	}
}

// routerAdvertisement is an ICMPv6 RA (checksum left to the kernel)
// announcing a default router and the autonomous prefix 2001:db8:77::/64.
func routerAdvertisement() []byte {
	b := make([]byte, 16+32)
	b[0] = 134                               // type: Router Advertisement
	b[4] = 64                                // cur hop limit
	binary.BigEndian.PutUint16(b[6:], 1800)  // router lifetime: a default router
	o := b[16:]                              // Prefix Information option
	o[0], o[1], o[2], o[3] = 3, 4, 64, 0xc0  // type, length (8-byte units), prefix length, L+A
	binary.BigEndian.PutUint32(o[4:], 86400) // valid lifetime
	binary.BigEndian.PutUint32(o[8:], 14400) // preferred lifetime
	p := netip.MustParseAddr("2001:db8:77::").As16()
	copy(o[16:], p[:])
	return b
}

// sendRA sends the RA to ff02::1 with hop limit 255 out of ifname inside
// the namespace at nsPath, three times.
func sendRA(t *testing.T, nsPath, ifname string) {
	t.Helper()
	err := inNetns(nsPath, func() error {
		// The sender needs a usable link-local source address.
		for _, k := range []string{"accept_dad=0", "disable_ipv6=0"} {
			kv := strings.SplitN(k, "=", 2)
			_ = os.WriteFile("/proc/sys/net/ipv6/conf/"+ifname+"/"+kv[0], []byte(kv[1]), 0o644)
		}
		ifi, err := net.InterfaceByName(ifname)
		if err != nil {
			return err
		}
		link, err := netlink.LinkByName(ifname)
		if err != nil {
			return err
		}
		deadline := time.Now().Add(10 * time.Second)
		for {
			addrs, _ := netlink.AddrList(link, netlink.FAMILY_V6)
			ll := false
			for _, a := range addrs {
				if a.IP.IsLinkLocalUnicast() && a.Flags&(unix.IFA_F_TENTATIVE|unix.IFA_F_DADFAILED) == 0 {
					ll = true
				}
			}
			if ll {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("%s has no usable IPv6 link-local address: %v", ifname, addrs)
			}
			time.Sleep(100 * time.Millisecond)
		}
		fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_RAW, unix.IPPROTO_ICMPV6)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_MULTICAST_HOPS, 255); err != nil {
			return err
		}
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_MULTICAST_IF, ifi.Index); err != nil {
			return err
		}
		to := &unix.SockaddrInet6{Addr: netip.MustParseAddr("ff02::1").As16(), ZoneId: uint32(ifi.Index)}
		for i := 0; i < 3; i++ {
			if err := unix.Sendto(fd, routerAdvertisement(), 0, to); err != nil {
				return fmt.Errorf("send RA: %w", err)
			}
			time.Sleep(300 * time.Millisecond)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// raEffects reports the default routes through dev and the addresses in
// 2001:db8:77::/64 on dev, as `ip` shows them (in namespace ns, "" = host).
func raEffects(ns, dev string) (routes, addrs string) {
	ipc := func(args ...string) string {
		if ns != "" {
			args = append([]string{"-n", ns}, args...)
		}
		out, _ := exec("ip", args...)
		return out
	}
	routes = ipc("-6", "route", "show", "default", "dev", dev)
	for _, l := range strings.Split(ipc("-6", "-o", "addr", "show", "dev", dev), "\n") {
		if strings.Contains(l, "2001:db8:77:") {
			addrs += l + "\n"
		}
	}
	return strings.TrimSpace(routes), strings.TrimSpace(addrs)
}

// TestHostileRouterAdvertisement: a container sending a Router
// Advertisement must not give the host a default route or an address.
// weft bridges have accept_ra=0 and autoconf=0. Control: the same RA, sent
// between two test namespaces to a receiver with accept_ra=2, does
// configure a route and an address, so the crafted RA is valid.
func TestHostileRouterAdvertisement(t *testing.T) {
	// Control first.
	a, b := uniq("raA"), uniq("raB")
	sh(t, fmt.Sprintf(`ip netns add %[1]s && ip netns add %[2]s && ip -n %[1]s link add wfe2era0 type veth peer name wfe2era1 netns %[2]s &&
		ip netns exec %[2]s sh -c 'echo 2 > /proc/sys/net/ipv6/conf/wfe2era1/accept_ra && echo 1 > /proc/sys/net/ipv6/conf/wfe2era1/autoconf && echo 0 > /proc/sys/net/ipv6/conf/wfe2era1/accept_dad' &&
		ip netns exec %[1]s sh -c 'echo 0 > /proc/sys/net/ipv6/conf/wfe2era0/accept_dad' &&
		ip -n %[1]s link set wfe2era0 up && ip -n %[2]s link set wfe2era1 up`, a, b))
	t.Cleanup(func() {
		_, _ = exec("ip", "netns", "del", a)
		_, _ = exec("ip", "netns", "del", b)
	})
	eventually(t, 20*time.Second, "control: the RA configures the receiving namespace", func() error {
		sendRA(t, "/var/run/netns/"+a, "wfe2era0")
		r, ad := raEffects(b, "wfe2era1")
		if r == "" || ad == "" {
			all, _ := exec("ip", "-n", b, "-6", "addr", "show", "dev", "wfe2era1")
			return fmt.Errorf("route %q, address %q; addresses: %s", r, ad, all)
		}
		return nil
	})

	n := ipamNetwork(t)
	br := bridgeOf(t, n)
	for _, k := range []string{"accept_ra", "autoconf"} {
		if v := readSysctl(t, "net/ipv6/conf/"+br+"/"+k); v != "0" {
			t.Errorf("net.ipv6.conf.%s.%s = %s, want 0", br, k, v)
		}
	}
	routesBefore, _ := exec("ip", "-6", "route", "show", "default")
	c := sleeper(t, "--network", n)
	sendRA(t, "/proc/"+pidOf(t, c)+"/ns/net", "eth0")
	time.Sleep(2 * time.Second)
	if r, ad := raEffects("", br); r != "" || ad != "" {
		t.Errorf("a container's Router Advertisement changed the host: default route %q, addresses %q", r, ad)
	}
	if after, _ := exec("ip", "-6", "route", "show", "default"); after != routesBefore {
		t.Errorf("the host's IPv6 default routes changed:\n%s\n->\n%s", routesBefore, after)
	}
}
