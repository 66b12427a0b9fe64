package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
)

// lan is a LAN segment: a namespace holding a "router" address, joined to
// the host by a veth whose host end is the macvlan parent.
type lan struct {
	ns, parent, routerIP, subnet string
}

func newLAN(t *testing.T, third int) *lan {
	t.Helper()
	l := &lan{ns: uniq("lan"), parent: fmt.Sprintf("wfe2el%d", third), routerIP: fmt.Sprintf("198.18.%d.254", third),
		subnet: fmt.Sprintf("198.18.%d.0/24", third)}
	peer := fmt.Sprintf("wfe2er%d", third)
	_, _ = exec("ip", "link", "del", l.parent)
	sh(t, fmt.Sprintf(`ip netns add %[1]s && ip link add %[2]s type veth peer name %[3]s && ip link set %[3]s netns %[1]s &&
		ip link set %[2]s up && ip -n %[1]s addr add %[4]s/24 dev %[3]s && ip -n %[1]s link set %[3]s up && ip -n %[1]s link set lo up`,
		l.ns, l.parent, peer, l.routerIP))
	t.Cleanup(func() {
		_, _ = exec("ip", "link", "del", l.parent)
		_, _ = exec("ip", "netns", "del", l.ns)
	})
	return l
}

func (l *lan) network(t *testing.T, args ...string) string {
	return ipamNetwork(t, append([]string{"-o", "type=macvlan", "-o", "parent=" + l.parent, "--subnet", l.subnet, "--gateway", l.routerIP}, args...)...)
}

func linkExists(name string) bool {
	_, err := netlink.LinkByName(name)
	return err == nil
}

func TestMacvlanLAN(t *testing.T) {
	a, b := newLAN(t, 31), newLAN(t, 32)
	na := a.network(t, "-o", "host_access=true", "--aux-address", "host=198.18.31.250")
	nb := b.network(t, "-o", "mtu=1400")
	c1 := sleeper(t, "--network", na)
	c2 := sleeper(t, "--network", na)
	cb := sleeper(t, "--network", nb)
	if !canPing(c1, c2) {
		t.Fatal("containers on one macvlan network cannot talk")
	}
	if !canPing(c1, a.routerIP) {
		t.Fatal("container cannot reach the LAN on its parent")
	}
	// The LAN host sees the container with its own MAC (not the host's).
	mac := mustDocker(t, "exec", c1, "cat", "/sys/class/net/eth0/address")
	ip1 := ipOf(t, c1, na)
	neigh := sh(t, fmt.Sprintf("ip -n %s neigh show %s", a.ns, ip1))
	if !strings.Contains(neigh, mac) {
		t.Fatalf("LAN neighbour entry %q lacks the container MAC %s", neigh, mac)
	}
	// Networks on different parents are separate segments.
	if canPing(c1, ipOf(t, cb, nb)) || canPing(cb, ip1) {
		t.Fatal("containers on different parents reached each other")
	}
	if mtu := mustDocker(t, "exec", cb, "cat", "/sys/class/net/eth0/mtu"); mtu != "1400" {
		t.Fatalf("container MTU %s, want 1400", mtu)
	}
	if r := mustDocker(t, "exec", cb, "ip", "route", "show", "default"); !strings.Contains(r, "via "+b.routerIP) {
		t.Fatalf("default route %q is not via the LAN router", r)
	}
	// host_access: the host reaches its own macvlan containers through the shim.
	shim := "wfs" + netID(t, na)[:12]
	if !linkExists(shim) {
		t.Fatalf("host_access shim %s missing", shim)
	}
	if out, err := exec("ping", "-c1", "-W2", ip1); err != nil {
		t.Fatalf("host cannot ping its macvlan container %s with host_access: %v %s", ip1, err, out)
	}
	// State survives a plugin restart.
	mustDocker(t, "plugin", "disable", "-f", plugin)
	mustDocker(t, "plugin", "enable", plugin)
	if !canPing(c1, c2) || !canPing(c1, a.routerIP) {
		t.Fatal("macvlan connectivity lost across a plugin restart")
	}
	c3 := sleeper(t, "--network", na)
	if ip := ipOf(t, c3, na); ip == ip1 || ip == ipOf(t, c2, na) {
		t.Fatalf("new container got a used address %s", ip)
	}
	// Removing the network removes the shim and its routes.
	for _, c := range []string{c1, c2, c3} {
		mustDocker(t, "rm", "-f", c)
	}
	mustDocker(t, "network", "rm", na)
	if linkExists(shim) {
		t.Fatal("shim left after network rm")
	}
	if out, _ := exec("ip", "route", "show", ip1); out != "" {
		t.Fatalf("host route left: %s", out)
	}
}

func TestMacvlanPassthruAndInternal(t *testing.T) {
	p := newLAN(t, 33)
	pn := p.network(t, "-o", "macvlan_mode=passthru")
	out, err := docker("network", "create", "-d", plugin, "-o", "type=macvlan", "-o", "parent="+p.parent, "--subnet", "198.18.34.0/24", uniq("bad"))
	if err == nil || !strings.Contains(out, "passthru") {
		t.Fatalf("second network on a passthru parent: %v %s", err, out)
	}
	c := sleeper(t, "--network", pn)
	if !canPing(c, p.routerIP) {
		t.Fatal("passthru container cannot reach the LAN")
	}
	// No parent: an internal network on a private placeholder.
	in := ipamNetwork(t, "-o", "type=macvlan", "--subnet", "198.18.35.0/24")
	placeholder := "wfd" + netID(t, in)[:12]
	if !linkExists(placeholder) {
		t.Fatalf("placeholder parent %s missing", placeholder)
	}
	x, y := sleeper(t, "--network", in), sleeper(t, "--network", in)
	if !canPing(x, y) {
		t.Fatal("containers on a parent-less macvlan network cannot talk")
	}
	if r := mustDocker(t, "exec", x, "ip", "route"); strings.Contains(r, "default") {
		t.Fatalf("parent-less (internal) network gave a default route: %s", r)
	}
	mustDocker(t, "rm", "-f", x, y)
	mustDocker(t, "network", "rm", in)
	if linkExists(placeholder) {
		t.Fatal("placeholder parent left after network rm")
	}
}

// TestMacvlanIpvlanBadInput covers bad options and the kernel features this
// machine lacks (ipvlan, 802.1q): clear errors, nothing created.
func TestMacvlanIpvlanBadInput(t *testing.T) {
	l := newLAN(t, 36)
	_ = l.network(t)    // occupies 198.18.36.0/24 on the parent
	il := newLAN(t, 40) // a parent for the ipvlan cases (ipvlan cannot share with macvlan)
	linksBefore, storeBefore := weftLinks(), mustStore(t)
	mv := func(args ...string) []string {
		return append([]string{"network", "create", "-d", plugin, "-o", "type=macvlan"}, args...)
	}
	iv := func(args ...string) []string {
		return append([]string{"network", "create", "-d", plugin, "-o", "type=ipvlan"}, args...)
	}
	kernelHasVLAN := linkKindWorks(&netlink.Vlan{LinkAttrs: netlink.LinkAttrs{Name: "wfe2eprobe", ParentIndex: mustIndex(t, l.parent)}, VlanId: 99})
	kernelHasIPVLAN := linkKindWorks(&netlink.IPVlan{LinkAttrs: netlink.LinkAttrs{Name: "wfe2eprobe", ParentIndex: mustIndex(t, il.parent)}})
	cases := []struct {
		name string
		args []string
		want []string
	}{
		{"bad macvlan mode", mv("-o", "parent="+l.parent, "-o", "macvlan_mode=fast"), []string{"macvlan_mode=fast", "bridge, private, vepa, passthru"}},
		{"missing parent", mv("-o", "parent=nosuch0"), []string{"parent=nosuch0", "no such interface"}},
		{"missing VLAN base", mv("-o", "parent=nosuch0.30"), []string{"parent=nosuch0.30", "nosuch0"}},
		{"VLAN ID out of range", mv("-o", "parent="+l.parent+".5000"), []string{"VLAN ID 5000"}},
		{"MTU above the parent's", mv("-o", "parent="+l.parent, "-o", "mtu=9000"), []string{"mtu=9000", "larger than the MTU 1500"}},
		{"overlapping subnet on the same parent", mv("--ipam-driver", plugin, "-o", "parent="+l.parent, "--subnet", "198.18.36.0/25"), []string{"overlaps"}},
		{"host_access without a host address", mv("-o", "parent="+l.parent, "--subnet", "198.18.37.0/24", "-o", "host_access=true"), []string{"--aux-address host="}},
		{"bad ipvlan mode", iv("-o", "parent="+il.parent, "-o", "ipvlan_mode=l4"), []string{"ipvlan_mode=l4", "l2, l3, l3s"}},
		{"bad ipvlan flag", iv("-o", "parent="+il.parent, "-o", "ipvlan_flag=open"), []string{"ipvlan_flag=open"}},
		{"macvlan option on ipvlan", iv("-o", "parent="+il.parent, "-o", "macvlan_mode=bridge"), []string{`"macvlan_mode"`}},
		{"ipvlan on a macvlan parent", iv("-o", "parent="+l.parent, "--subnet", "198.18.41.0/24"), []string{"macvlan network", "cannot share"}},
	}
	if !kernelHasVLAN {
		cases = append(cases, struct {
			name string
			args []string
			want []string
		}{"802.1q missing in this kernel", mv("-o", "parent="+l.parent+".30", "--subnet", "198.18.38.0/24"), []string{"802.1q VLAN is not available in this kernel (CONFIG_VLAN_8021Q)"}})
	}
	if !kernelHasIPVLAN {
		cases = append(cases, struct {
			name string
			args []string
			want []string
		}{"ipvlan missing in this kernel", iv("-o", "parent="+il.parent, "--subnet", "198.18.39.0/24"), []string{"ipvlan is not available in this kernel (CONFIG_IPVLAN)"}})
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			name := uniq("bad")
			out, err := docker(append(c.args, name)...)
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
	if after := weftLinks(); strings.Join(sorted(after), ",") != strings.Join(sorted(linksBefore), ",") {
		t.Errorf("links changed: %v -> %v", linksBefore, after)
	}
	if linkExists(l.parent + ".30") {
		t.Error("a VLAN sub-interface was left behind")
	}
	if after := mustStore(t); fmt.Sprint(after) != fmt.Sprint(storeBefore) {
		t.Errorf("store changed: %v -> %v", storeBefore, after)
	}
}

func mustStore(t *testing.T) map[string]int {
	t.Helper()
	c, err := storeCounts()
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func mustIndex(t *testing.T, name string) int {
	t.Helper()
	l, err := netlink.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	return l.Attrs().Index
}

// linkKindWorks reports whether this kernel can create such a link.
func linkKindWorks(l netlink.Link) bool {
	if err := netlink.LinkAdd(l); err != nil {
		return false
	}
	_ = netlink.LinkDel(l)
	return true
}

func TestMacvlanIPv6AndInternalFlag(t *testing.T) {
	l := newLAN(t, 42)
	// Dual stack on the LAN: containers reach each other over IPv6.
	n := ipamNetwork(t, "-o", "type=macvlan", "-o", "parent="+l.parent, "--ipv6",
		"--subnet", l.subnet, "--gateway", l.routerIP, "--subnet", "fd00:42::/64")
	a, b := sleeper(t, "--network", n), sleeper(t, "--network", n)
	b6 := ip6Of(t, b, n)
	if b6 == "" {
		t.Fatal("no IPv6 address on the macvlan network")
	}
	eventually(t, 10*time.Second, "ping6 over macvlan", func() error {
		if out, err := execIn(a, "ping", "-6", "-c", "1", "-W", "2", b6); err != nil {
			return fmt.Errorf("%v %s", err, out)
		}
		return nil
	})
	// Docker's --internal on a macvlan network with a parent: no default route, no gateway bridge.
	l2 := newLAN(t, 43)
	in := ipamNetwork(t, "--internal", "-o", "type=macvlan", "-o", "parent="+l2.parent, "--subnet", l2.subnet)
	c := sleeper(t, "--network", in)
	if r := mustDocker(t, "exec", c, "ip", "route"); strings.Contains(r, "default") {
		t.Fatalf("--internal macvlan network gave a default route: %s", r)
	}
	if n := mustDocker(t, "inspect", "-f", "{{len .NetworkSettings.Networks}}", c); n != "1" {
		t.Fatalf("container on an --internal macvlan network joined %s networks (docker_gwbridge added?)", n)
	}
	if !canPing(c, l2.routerIP) {
		t.Fatal("an --internal macvlan network lost its own LAN segment (--internal only removes the way out: the gateway)")
	}
}
