package tuning

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/safchain/ethtool"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/weft-net/weft/internal/nstest"
)

// sandbox makes a named namespace playing a container's (Docker 28+: it
// exists at Join) while the test thread stays in nstest's namespace, which
// plays the host. It returns the namespace and its path.
func sandbox(t *testing.T, name string) (netns.NsHandle, string) {
	t.Helper()
	host, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer host.Close()
	ns, err := netns.NewNamed(name)
	if err != nil {
		_ = netns.Set(host)
		t.Skipf("cannot create a named namespace: %v", err)
	}
	if err := netns.Set(host); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Close(); _ = netns.DeleteNamed(name) })
	return ns, filepath.Join("/var/run/netns", name)
}

// moveIn does what Docker does after Join: moves the link into the
// sandbox and renames it.
func moveIn(t *testing.T, ns netns.NsHandle, dev, to string) {
	t.Helper()
	l, err := netlink.LinkByName(dev)
	if err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkSetNsFd(l, int(ns)); err != nil {
		t.Fatal(err)
	}
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	if l, err = h.LinkByName(dev); err != nil {
		t.Fatal(err)
	}
	if err := h.LinkSetName(l, to); err != nil {
		t.Fatal(err)
	}
}

// readIn reads sysctls (keys as paths under /proc/sys) inside ns.
func readIn(t *testing.T, ns netns.NsHandle, keys ...string) []string {
	t.Helper()
	out := make([]string, len(keys))
	if err := inNetNS(ns, func() error {
		for i, k := range keys {
			b, err := os.ReadFile("/proc/sys/" + k)
			if err != nil {
				return err
			}
			out[i] = strings.TrimSpace(string(b))
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return out
}

func featuresIn(t *testing.T, ns netns.NsHandle, dev string) map[string]bool {
	t.Helper()
	var f map[string]bool
	if err := inNetNS(ns, func() error {
		e, err := ethtool.NewEthtool()
		if err != nil {
			return err
		}
		defer e.Close()
		f, err = e.Features(dev)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return f
}

func veth(t *testing.T, name, peer string) {
	t.Helper()
	if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: peer}); err != nil {
		t.Fatal(err)
	}
}

// The kernel facts the join-time design rests on: a device moved into a
// namespace gets that namespace's default IPv4/IPv6 settings (what it had
// before is lost) and keeps its ethtool features, for veth and macvlan.
func TestMoveKeepsFeaturesAndTakesDefaults(t *testing.T) {
	nstest.Run(t, func() {
		ns, _ := sandbox(t, fmt.Sprintf("wftj%d", os.Getpid()))
		veth(t, "wftjh0", "wftjc0")
		parent, _ := netlink.LinkByName("wftjh0")
		if err := netlink.LinkAdd(&netlink.Macvlan{LinkAttrs: netlink.LinkAttrs{Name: "wftjm0", ParentIndex: parent.Attrs().Index}, Mode: netlink.MACVLAN_MODE_BRIDGE}); err != nil {
			t.Fatal(err)
		}
		// TSO of a macvlan follows its lower device; GRO is its own.
		for dev, o := range map[string]struct{ opt, feat string }{"wftjc0": {"tso", "tx-tcp-segmentation"}, "wftjm0": {"gro", "rx-gro"}} {
			feat := o.feat
			if _, err := setOffloads(dev, map[string]bool{o.opt: false}); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile("/proc/sys/net/ipv4/conf/"+dev+"/arp_announce", []byte("2"), 0o644); err != nil {
				t.Fatal(err)
			}
			moveIn(t, ns, dev, "in"+dev)
			f := featuresIn(t, ns, "in"+dev)
			if f[feat] {
				t.Errorf("%s: %s switched off before the move is on after it", dev, feat)
			}
			got := readIn(t, ns, "net/ipv4/conf/in"+dev+"/arp_announce", "net/ipv4/conf/default/arp_announce")
			if got[0] != got[1] || got[0] == "2" {
				t.Errorf("%s: arp_announce %s after the move, the sandbox's default is %s (the host-side 2 should be gone)", dev, got[0], got[1])
			}
		}
	})
}

// Prepare at Join (namespace exists) puts everything in place before the
// interface arrives: the values are there the moment Docker has moved and
// renamed it, before Finish ran; Finish then gives the defaults back.
func TestPrepareInTimeForTheFirstCommand(t *testing.T) {
	nstest.Run(t, func() {
		ns, path := sandbox(t, fmt.Sprintf("wftp%d", os.Getpid()))
		veth(t, "wftph0", "wftpc0")
		defaults := readIn(t, ns, "net/ipv4/conf/default/rp_filter", "net/ipv4/conf/lo/rp_filter", "net/ipv4/conf/default/arp_ignore", "net/ipv4/tcp_keepalive_time")
		ipv6 := true
		if _, err := os.Stat("/proc/sys/net/ipv6/conf/default/dad_transmits"); err != nil {
			ipv6 = false
		}
		s := Settings{TxQueueLen: -1, Sysctls: map[string]string{
			"net.ipv4.conf.IFNAME.rp_filter":      "2",
			"net.ipv4.conf.IFNAME.arp_ignore":     "1",
			"net.ipv4.tcp_keepalive_time":         "601",
			"net.ipv4.neigh.IFNAME.mcast_solicit": "7",
		}, Offloads: map[string]bool{"tso": false}}
		if ipv6 {
			s.Sysctls["net.ipv6.conf.IFNAME.dad_transmits"] = "4"
		}
		if defaults[0] == "2" || defaults[2] == "1" || defaults[3] == "601" {
			t.Fatalf("the sandbox's defaults (rp_filter %s, arp_ignore %s, tcp_keepalive_time %s) already are the values asked: the test would prove nothing", defaults[0], defaults[2], defaults[3])
		}
		l, _ := netlink.LinkByName("wftpc0")
		p := (Inside{Timeout: 5 * time.Second}).Prepare(path, "wftpc0", l.Attrs().HardwareAddr.String(), s, "")
		if !p.AtJoin() {
			t.Fatal("Prepare did not see the namespace")
		}
		// Borrowing does not show on interfaces already there (lo is pinned).
		if lo := readIn(t, ns, "net/ipv4/conf/lo/rp_filter")[0]; lo != defaults[1] {
			t.Fatalf("lo's rp_filter changed from %s to %s while the default was borrowed", defaults[1], lo)
		}
		moveIn(t, ns, "wftpc0", "wan0")
		// What the container's first command would read.
		keys := []string{"net/ipv4/conf/wan0/rp_filter", "net/ipv4/conf/wan0/arp_ignore", "net/ipv4/tcp_keepalive_time"}
		want := []string{"2", "1", "601"}
		if ipv6 {
			keys, want = append(keys, "net/ipv6/conf/wan0/dad_transmits"), append(want, "4")
		}
		if got := readIn(t, ns, keys...); strings.Join(got, " ") != strings.Join(want, " ") {
			t.Fatalf("right after the move %v = %v, want %v", keys, got, want)
		}
		if featuresIn(t, ns, "wan0")["tx-tcp-segmentation"] {
			t.Fatal("TSO on right after the move")
		}
		got, err := p.Finish()
		if err != nil {
			t.Fatal(err)
		}
		for _, w := range []string{"net.ipv4.conf.wan0.rp_filter=2", "net.ipv4.neigh.wan0.mcast_solicit=7", "tx-tcp-segmentation=false", "net.ipv4.tcp_keepalive_time=601"} {
			if !strings.Contains(got, w) {
				t.Errorf("Finish applied %q, missing %s", got, w)
			}
		}
		if v := readIn(t, ns, "net/ipv4/neigh/wan0/mcast_solicit")[0]; v != "7" {
			t.Errorf("neigh mcast_solicit %s after Finish", v)
		}
		// The defaults are back, for interfaces that come later; wan0 keeps its values.
		after := readIn(t, ns, "net/ipv4/conf/default/rp_filter", "net/ipv4/conf/lo/rp_filter", "net/ipv4/conf/default/arp_ignore", "net/ipv4/conf/wan0/rp_filter")
		if after[0] != defaults[0] || after[1] != defaults[1] || after[2] != defaults[2] || after[3] != "2" {
			t.Fatalf("after Finish: default rp_filter %s (was %s), lo %s (was %s), default arp_ignore %s (was %s), wan0 %s",
				after[0], defaults[0], after[1], defaults[1], after[2], defaults[2], after[3])
		}
		// Control: an interface moved in now gets the defaults, not the values asked for wan0.
		veth(t, "wftph1", "wftpc1")
		moveIn(t, ns, "wftpc1", "eth1")
		if c := readIn(t, ns, "net/ipv4/conf/eth1/rp_filter")[0]; c != defaults[0] || c == "2" {
			t.Fatalf("control: a later interface has rp_filter %s (default %s)", c, defaults[0])
		}
	})
}

// A device whose ifindex the sandbox already uses gets a new one on the
// move; Finish still follows it (it sees it arrive under its own name).
func TestFinishFollowsAnIndexClash(t *testing.T) {
	nstest.Run(t, func() {
		ns, path := sandbox(t, fmt.Sprintf("wftc%d", os.Getpid()))
		veth(t, "wftch0", "wftcc0")
		l, _ := netlink.LinkByName("wftcc0")
		// Take the index in the sandbox: a fresh namespace numbers its links
		// from 1, as nstest's namespace did, so a few veths made there reach it.
		h, err := netlink.NewHandleAt(ns)
		if err != nil {
			t.Fatal(err)
		}
		defer h.Close()
		mac := l.Attrs().HardwareAddr
		for i := 0; ; i++ {
			if _, err := h.LinkByIndex(l.Attrs().Index); err == nil {
				break
			}
			if i == 10 {
				t.Fatalf("the sandbox never used index %d", l.Attrs().Index)
			}
			if err := h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: fmt.Sprintf("other%d", i)}, PeerName: fmt.Sprintf("otherp%d", i)}); err != nil {
				t.Fatal(err)
			}
		}
		s := Settings{TxQueueLen: -1, Sysctls: map[string]string{"net.ipv4.conf.IFNAME.rp_filter": "2"}}
		p := (Inside{Timeout: 5 * time.Second}).Prepare(path, "wftcc0", mac.String(), s, "")
		moveIn(t, ns, "wftcc0", "eth0")
		got, err := p.Finish()
		if err != nil || !strings.Contains(got, "net.ipv4.conf.eth0.rp_filter=2") {
			t.Fatalf("Finish: %q %v", got, err)
		}
		if moved, _ := h.LinkByName("eth0"); moved.Attrs().Index == l.Attrs().Index {
			t.Fatal("the move kept a clashing index: the test proves nothing")
		}
	})
}

// Leave before the interface arrives: Finish gives the defaults back and
// says why it stopped; the next endpoint of the sandbox can borrow.
func TestCancelGivesDefaultsBack(t *testing.T) {
	nstest.Run(t, func() {
		ns, path := sandbox(t, fmt.Sprintf("wftx%d", os.Getpid()))
		veth(t, "wftxh0", "wftxc0")
		orig := readIn(t, ns, "net/ipv4/conf/default/rp_filter")[0]
		p := (Inside{Timeout: 5 * time.Second}).Prepare(path, "wftxc0", "02:00:00:00:00:01", Settings{TxQueueLen: -1, Sysctls: map[string]string{"net.ipv4.conf.IFNAME.rp_filter": "2"}}, "")
		if v := readIn(t, ns, "net/ipv4/conf/default/rp_filter")[0]; v != "2" {
			t.Fatalf("default rp_filter %s while borrowed", v)
		}
		if _, ok := claimSandbox(path, 50*time.Millisecond); ok {
			t.Fatal("a second endpoint borrowed the sandbox's defaults at the same time")
		}
		p.Cancel()
		if _, err := p.Finish(); err == nil || !strings.Contains(err.Error(), "left before") {
			t.Fatalf("Finish after Cancel: %v", err)
		}
		if v := readIn(t, ns, "net/ipv4/conf/default/rp_filter")[0]; v != orig {
			t.Fatalf("default rp_filter %s after Cancel, was %s", v, orig)
		}
		release, ok := claimSandbox(path, 50*time.Millisecond)
		if !ok {
			t.Fatal("the sandbox stayed claimed after Cancel")
		}
		release()
	})
}

// Docker 20.10: the sandbox is not a namespace at Join. Prepare sets the
// offloads on the host side and leaves the rest to Finish.
func TestPrepareWithoutNamespace(t *testing.T) {
	nstest.Run(t, func() {
		veth(t, "wftnh0", "wftnc0")
		placeholder := filepath.Join(t.TempDir(), "sandbox")
		if err := os.WriteFile(placeholder, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		p := (Inside{Timeout: 200 * time.Millisecond}).Prepare(placeholder, "wftnc0", "02:00:00:00:00:01",
			Settings{TxQueueLen: -1, Sysctls: map[string]string{"net.ipv4.conf.IFNAME.rp_filter": "2"}, Offloads: map[string]bool{"tso": false}}, "")
		if p.AtJoin() {
			t.Fatal("a placeholder file taken for a namespace")
		}
		e, _ := ethtool.NewEthtool()
		f, _ := e.Features("wftnc0")
		e.Close()
		if f["tx-tcp-segmentation"] {
			t.Fatal("offload not set on the host side at Join")
		}
		if _, err := p.Finish(); err == nil || !strings.Contains(err.Error(), "not a network namespace") {
			t.Fatalf("Finish on a sandbox that never becomes a namespace: %v", err)
		}
	})
}

func fakeLink(name string, index int, mac string) netlink.Link {
	hw, _ := net.ParseMAC(mac)
	return &netlink.Device{LinkAttrs: netlink.LinkAttrs{Name: name, Index: index, HardwareAddr: hw}}
}

func aliased(name string, index int, mac, alias string) netlink.Link {
	l := fakeLink(name, index, mac)
	l.Attrs().Alias = alias
	return l
}

func TestWhereIs(t *testing.T) {
	const mac, other = "02:00:00:00:00:01", "02:00:00:00:00:02"
	lo := fakeLink("lo", 1, "00:00:00:00:00:00")
	for _, c := range []struct {
		name    string
		links   []netlink.Link
		index   int
		before  map[int]bool
		want    string
		renamed bool
		err     string
		alias   string // the endpoint's alias at Join
	}{
		{"moved, not renamed", []netlink.Link{lo, fakeLink("wfcx", 40, mac)}, 40, nil, "wfcx", false, "", ""},
		{"renamed, kept its index", []netlink.Link{lo, fakeLink("eth0", 40, mac)}, 40, nil, "eth0", true, "", ""},
		{"ipvlan twins: the index decides", []netlink.Link{lo, fakeLink("eth0", 41, mac), fakeLink("eth1", 40, mac)}, 40, nil, "eth1", true, "", ""},
		{"twin there, ours not yet", []netlink.Link{lo, fakeLink("eth0", 41, mac)}, 40, nil, "", false, "index 40", ""},
		{"index taken in the sandbox: the MAC", []netlink.Link{lo, fakeLink("eth0", 40, other), fakeLink("eth1", 3, mac)}, 40, map[int]bool{1: true, 40: true}, "eth1", true, "", ""},
		{"index taken, twins: cannot tell", []netlink.Link{lo, fakeLink("eth0", 40, other), fakeLink("eth1", 3, mac), fakeLink("eth2", 4, mac)}, 40, map[int]bool{1: true, 40: true}, "", false, "cannot tell", ""},
		{"index unknown: the MAC", []netlink.Link{lo, fakeLink("eth0", 7, mac)}, 0, nil, "eth0", true, "", ""},
		{"wrong MAC at the index: not ours", []netlink.Link{lo, fakeLink("eth0", 40, other)}, 40, nil, "", false, "no interface with MAC", ""},
		// weft's macvlan and ipvlan links carry their endpoint's alias.
		{"alias: the twin holds our index", []netlink.Link{lo, aliased("eth0", 40, mac, "weft:a"), aliased("eth1", 41, mac, "weft:b")}, 40, nil, "eth1", true, "", "weft:b"},
		{"alias: ours not there yet, the twin holds our index", []netlink.Link{lo, aliased("eth0", 40, mac, "weft:a")}, 40, nil, "", false, "alias", "weft:b"},
		{"alias: moved, not renamed", []netlink.Link{lo, aliased("wfcx", 40, mac, "weft:b")}, 40, nil, "wfcx", false, "", "weft:b"},
		{"alias: renumbered on the move", []netlink.Link{lo, aliased("eth0", 40, other, ""), aliased("eth1", 3, mac, "weft:a"), aliased("eth2", 4, mac, "weft:b")}, 40, map[int]bool{1: true, 40: true}, "eth2", true, "", "weft:b"},
		{"alias on several links: index and MAC among them", []netlink.Link{lo, aliased("eth0", 40, mac, "x"), aliased("eth1", 41, mac, "x")}, 41, nil, "eth1", true, "", "x"},
	} {
		l, renamed, err := whereIs(c.links, Ident{SrcName: "wfcx", MAC: mac, Index: c.index, Alias: c.alias}, c.before)
		got := ""
		if l != nil {
			got = l.Attrs().Name
		}
		if got != c.want || renamed != c.renamed || (c.err == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), c.err)) {
			t.Errorf("%s: got %q renamed=%v err=%v; want %q renamed=%v err~%q", c.name, got, renamed, err, c.want, c.renamed, c.err)
		}
	}
}

func TestSysctlFile(t *testing.T) {
	real, p := sysctlFile("/proc/sys", "net.ipv4.conf.IFNAME.rp_filter", "wan.0")
	if real != "net.ipv4.conf.wan.0.rp_filter" || p != "/proc/sys/net/ipv4/conf/wan.0/rp_filter" {
		t.Fatalf("%s %s", real, p)
	}
}

// The docker CLI lowercases `--network name=N,driver-opt=K=V` keys: ifname
// there is IFNAME, and an endpoint's key still overrides the network's.
func TestLowercaseIfnameFromDockerRun(t *testing.T) {
	s, err := Parse(map[string]string{"sysctl.net.ipv4.conf.IFNAME.rp_filter": "2", "sysctl.net.ipv4.neigh.IFNAME.mcast_solicit": "5"},
		map[string]string{"sysctl.net.ipv4.conf.ifname.rp_filter": "1", "sysctl.net.ipv6.conf.ifname.accept_ra": "0", "sysctl.net.core.ifname.x": "1"})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"net.ipv4.conf.IFNAME.rp_filter": "1", "net.ipv4.neigh.IFNAME.mcast_solicit": "5", "net.ipv6.conf.IFNAME.accept_ra": "0", "net.core.ifname.x": "1"}
	if fmt.Sprint(s.Sysctls) != fmt.Sprint(want) {
		t.Fatalf("parsed %v, want %v", s.Sysctls, want)
	}
}
