package kernellab

// Tuning lands on the right interface: two ipvlan endpoints of one
// container share their parent's MAC, and each asks for its own
// per-interface sysctls, offloads and rate limits. weft is driven as
// libnetwork drives it; the container is a named network namespace.

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/safchain/ethtool"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/tuning"
)

// twinAsk is what one endpoint asks, and where it must land.
type twinAsk struct {
	ifname  string            // its name in the container
	opts    map[string]string // --driver-opt
	offload string            // the offload option it switches off
	sysctls map[string]string // per-interface sysctl (under net/ipv4/conf/IFNAME) -> value
	off     string            // the offload it switches off: a feature of it, whose twin keeps it on
	egress  uint64            // rate.egress (0: none asked)
	ingress uint64            // rate.ingress (0: none asked)
}

// shapingAvailable reports whether this kernel has what rate limits inside
// a container need: a TBF for egress; for ingress also an IFB, the ingress
// qdisc, u32 and mirred. It tries them on a veth in a scratch namespace.
func shapingAvailable(t *testing.T) (egress, ingress error) {
	t.Helper()
	ns := newNS(t)
	err := inNS(ns, func() error {
		if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "probe0"}, PeerName: "probe1"}); err != nil {
			return err
		}
		// On a host-side veth the directions swap: a container's ingress
		// is the veth's root TBF, its egress goes through an IFB.
		egress = tuning.Apply(tuning.Link{Host: "probe0", Cont: "probe0", IFB: "probeifb"}, tuning.Settings{TxQueueLen: -1, RateIngress: 1e6})
		ingress = tuning.Apply(tuning.Link{Host: "probe0", Cont: "probe0", IFB: "probeifb"}, tuning.Settings{TxQueueLen: -1, RateEgress: 1e6, RateIngress: 1e6})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return egress, ingress
}

// twinAsks: A and B of one container, on two ipvlan networks over one
// parent. Each asks what the other does not.
func twinAsks(t *testing.T) []twinAsk {
	egressErr, ingressErr := shapingAvailable(t)
	// (An ipvlan in Debian 12's kernel lets only GRO and GSO change: its
	// TSO, checksumming and scatter-gather follow the parent's.)
	a := twinAsk{ifname: "eth0", offload: "gro", off: "rx-gro",
		opts:    map[string]string{"offload.gro": "off", "sysctl.net.ipv4.conf.IFNAME.rp_filter": "2", "sysctl.net.ipv4.conf.IFNAME.arp_ignore": "1"},
		sysctls: map[string]string{"rp_filter": "2", "arp_ignore": "1", "arp_announce": "0"}}
	b := twinAsk{ifname: "eth1", offload: "gso", off: "tx-generic-segmentation",
		opts:    map[string]string{"offload.gso": "off", "sysctl.net.ipv4.conf.IFNAME.rp_filter": "1", "sysctl.net.ipv4.conf.IFNAME.arp_announce": "2"},
		sysctls: map[string]string{"rp_filter": "1", "arp_ignore": "0", "arp_announce": "2"}}
	if egressErr == nil {
		a.opts["rate.egress"], a.egress = "10mbit", 10e6
		b.opts["rate.egress"], b.egress = "20mbit", 20e6
	} else {
		t.Logf("no rate limits asked: this kernel cannot shape (%v); scripts/kernel-lab.sh loads no sch_tbf", egressErr)
	}
	if egressErr == nil && ingressErr == nil {
		b.opts["rate.ingress"], b.ingress = "40mbit", 40e6
	} else if egressErr == nil {
		t.Logf("no ingress rate asked: this kernel cannot redirect to an IFB (%v); scripts/kernel-lab.sh loads no ifb, sch_ingress, cls_u32, act_mirred", ingressErr)
	}
	return []twinAsk{a, b}
}

// twinEndpoint is one endpoint created and joined.
type twinEndpoint struct {
	nid, eid, src string
	hostIndex     int
	alias         string
}

func createTwin(t *testing.T, nid string, addr string, a twinAsk) twinEndpoint {
	t.Helper()
	eid := id("e")
	req := map[string]any{"NetworkID": nid, "EndpointID": eid, "Interface": map[string]any{"Address": addr}, "Options": map[string]any{}}
	for k, v := range a.opts {
		req["Options"].(map[string]any)[k] = v
	}
	mustCall(t, "NetworkDriver.CreateEndpoint", req)
	e := twinEndpoint{nid: nid, eid: eid}
	// weft labels the link it made with the endpoint's ID.
	links, err := netlink.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range links {
		if strings.HasSuffix(l.Attrs().Alias, ":"+eid) {
			e.src, e.hostIndex, e.alias = l.Attrs().Name, l.Attrs().Index, l.Attrs().Alias
		}
	}
	if e.src == "" {
		t.Fatalf("no link labelled with endpoint %.12s", eid)
	}
	return e
}

func (e *twinEndpoint) join(t *testing.T, sandboxKey string) {
	t.Helper()
	j := mustCall(t, "NetworkDriver.Join", map[string]any{"NetworkID": e.nid, "EndpointID": e.eid, "SandboxKey": sandboxKey})
	if src := j["InterfaceName"].(map[string]any)["SrcName"].(string); src != e.src {
		t.Fatalf("Join names %s, the endpoint's link is %s", src, e.src)
	}
}

// moveTwin does what Docker does after Join: moves the interface into the
// container and renames it.
func moveTwin(t *testing.T, ns netns.NsHandle, e twinEndpoint, name string) {
	t.Helper()
	l, err := netlink.LinkByName(e.src)
	if err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkSetNsFd(l, int(ns)); err != nil {
		t.Fatal(err)
	}
	h, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	if l, err = h.LinkByName(e.src); err != nil {
		t.Fatal(err)
	}
	if err := h.LinkSetName(l, name); err != nil {
		t.Fatal(err)
	}
	_ = h.LinkSetUp(l)
}

// inside waits for the endpoint's inside tuning to be done and returns
// weft.tuning.inside: "applied: ..." or "error: ...".
func inside(t *testing.T, e twinEndpoint) string {
	t.Helper()
	deadline := time.Now().Add(40 * time.Second)
	for {
		out := mustCall(t, "NetworkDriver.EndpointOperInfo", map[string]any{"NetworkID": e.nid, "EndpointID": e.eid})
		v, _ := out["Value"].(map[string]any)
		in, _ := v["weft.tuning.inside"].(string)
		if strings.HasPrefix(in, "applied: ") || strings.HasPrefix(in, "error: ") {
			return in
		}
		if time.Now().After(deadline) {
			t.Fatalf("endpoint %.12s: inside tuning not applied after 40s (weft.tuning.inside = %q)", e.eid, in)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func readSysctls(t *testing.T, ns netns.NsHandle, ifname string) map[string]string {
	t.Helper()
	got := map[string]string{}
	if err := inNS(ns, func() error {
		for _, k := range []string{"rp_filter", "arp_ignore", "arp_announce"} {
			b, err := os.ReadFile(filepath.Join("/proc/sys/net/ipv4/conf", ifname, k))
			if err != nil {
				return err
			}
			got[k] = strings.TrimSpace(string(b))
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return got
}

func featuresOf(t *testing.T, ns netns.NsHandle, ifname string) map[string]bool {
	t.Helper()
	var f map[string]bool
	get := func() error {
		e, err := ethtool.NewEthtool()
		if err != nil {
			return err
		}
		defer e.Close()
		f, err = e.Features(ifname)
		return err
	}
	var err error
	if ns == netns.None() {
		err = get()
	} else {
		err = inNS(ns, get)
	}
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// shapingOf reads the rate of the root TBF of ifname in ns and of the TBF
// of the IFB its ingress is redirected to (0: none).
func shapingOf(t *testing.T, ns netns.NsHandle, ifname string) (egress, ingress uint64) {
	t.Helper()
	h, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	rootTBF := func(l netlink.Link) uint64 {
		qs, _ := h.QdiscList(l)
		for _, q := range qs {
			if tb, ok := q.(*netlink.Tbf); ok && tb.Parent == netlink.HANDLE_ROOT {
				return tb.Rate * 8
			}
		}
		return 0
	}
	l, err := h.LinkByName(ifname)
	if err != nil {
		t.Fatal(err)
	}
	egress = rootTBF(l)
	fs, _ := h.FilterList(l, netlink.MakeHandle(0xffff, 0))
	for _, f := range fs {
		u, ok := f.(*netlink.U32)
		if !ok {
			continue
		}
		for _, a := range u.Actions {
			if m, ok := a.(*netlink.MirredAction); ok {
				if ifb, err := h.LinkByIndex(m.Ifindex); err == nil {
					ingress = rootTBF(ifb)
				}
			}
		}
	}
	return egress, ingress
}

// checkTwins asserts that each endpoint's settings landed on its own
// interface and not on its twin's.
func checkTwins(t *testing.T, ns netns.NsHandle, asks []twinAsk, eps []twinEndpoint) {
	t.Helper()
	h, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	l0, err0 := h.LinkByName(asks[0].ifname)
	l1, err1 := h.LinkByName(asks[1].ifname)
	if err0 != nil || err1 != nil {
		t.Fatalf("container interfaces: %v %v", err0, err1)
	}
	if l0.Attrs().HardwareAddr.String() != l1.Attrs().HardwareAddr.String() || l0.Type() != "ipvlan" {
		t.Fatalf("%s (%s %s) and %s (%s) are not ipvlan twins with one MAC: the test would prove nothing",
			asks[0].ifname, l0.Type(), l0.Attrs().HardwareAddr, asks[1].ifname, l1.Attrs().HardwareAddr)
	}
	for i, a := range asks {
		other := asks[1-i]
		in := inside(t, eps[i])
		if got := readSysctls(t, ns, a.ifname); fmt.Sprint(got) != fmt.Sprint(a.sysctls) {
			t.Errorf("%s: sysctls %v, want %v (its twin %s asked %v); weft.tuning.inside = %q", a.ifname, got, a.sysctls, other.ifname, other.sysctls, in)
		}
		f := featuresOf(t, ns, a.ifname)
		if msg, failed := strings.CutPrefix(in, "error: "); failed {
			// The kernel may not let an ipvlan's offloads differ from its
			// parent's (Debian 12's does not: its fix_features takes
			// GRO and GSO from the parent). Then the error must name
			// the option and this interface, never the twin; nothing
			// else may fail.
			t.Logf("%s: %s", a.ifname, msg)
			if !strings.Contains(msg, "offload."+a.offload+"=off on "+a.ifname+" cannot be met") || strings.Contains(msg, other.ifname) {
				t.Errorf("%s: weft.tuning.inside = %q, want an error naming offload.%s and %s only", a.ifname, in, a.offload, a.ifname)
			}
			for _, l := range strings.Split(msg, "\n") {
				if !strings.HasPrefix(l, "offload.") {
					t.Errorf("%s: an error besides the offload: %q", a.ifname, l)
				}
			}
		} else {
			if f[a.off] {
				t.Errorf("%s: %s on, but it asked it off; weft.tuning.inside = %q", a.ifname, a.off, in)
			}
			if !strings.Contains(in, a.off+"=false") || strings.Contains(in, other.off+"=false") {
				t.Errorf("%s: weft.tuning.inside = %q, want %s=false and not %s=false", a.ifname, in, a.off, other.off)
			}
			if !strings.Contains(in, "net.ipv4.conf."+a.ifname+".rp_filter="+a.sysctls["rp_filter"]) {
				t.Errorf("%s: weft.tuning.inside = %q", a.ifname, in)
			}
		}
		if !f[other.off] {
			t.Errorf("%s: %s off, but only its twin %s asked that; weft.tuning.inside = %q", a.ifname, other.off, other.ifname, in)
		}
	}
	t.Run("rate", func(t *testing.T) {
		if asks[0].egress == 0 {
			t.Skip("no rate asked: this kernel cannot shape (scripts/kernel-lab.sh would need sch_tbf, and for ingress ifb, sch_ingress, cls_u32, act_mirred)")
		}
		for _, a := range asks {
			eg, ing := shapingOf(t, ns, a.ifname)
			if eg != a.egress || ing != a.ingress {
				t.Errorf("%s: egress %d ingress %d bit/s, want %d and %d", a.ifname, eg, ing, a.egress, a.ingress)
			}
		}
	})
}

// twinNetworks makes two ipvlan networks on one dummy parent and an
// endpoint of each with its asks, and checks the controls: both
// interfaces have the offloads on that the other switches off.
func twinNetworks(t *testing.T, parent string, asks []twinAsk, octet int) []twinEndpoint {
	t.Helper()
	dummy(t, parent)
	var eps []twinEndpoint
	for i, a := range asks {
		nid := createNetwork(t, map[string]string{"type": "ipvlan", "parent": parent}, fmt.Sprintf("10.%d.%d.0/24", octet, i), fmt.Sprintf("10.%d.%d.1/24", octet, i))
		t.Cleanup(func() { _, _ = call("NetworkDriver.DeleteNetwork", map[string]any{"NetworkID": nid}) })
		eps = append(eps, createTwin(t, nid, fmt.Sprintf("10.%d.%d.2/24", octet, i), a))
	}
	// Control: before Join both have on what either switches off.
	for _, e := range eps {
		f := featuresOf(t, netns.None(), e.src)
		for _, a := range asks {
			if !f[a.off] {
				t.Fatalf("control: %s has %s off before weft set anything: the test would prove nothing", e.src, a.off)
			}
		}
	}
	return eps
}

// Docker 28+: the container's namespace exists at Join; each endpoint is
// moved in before the next one joins (Prepare, then Finish).
func TestIPvlanTwinsTunedAtJoin(t *testing.T) {
	asks := twinAsks(t)
	eps := twinNetworks(t, "labtw0", asks, 62)
	name := fmt.Sprintf("labtw%d", os.Getpid())
	ns := namedNS(t, name)
	for i := range eps {
		eps[i].join(t, "/run/netns/"+name)
		moveTwin(t, ns, eps[i], asks[i].ifname)
		// What the container's first command would read: the borrowed
		// defaults were in place when the interface arrived.
		if got := readSysctls(t, ns, asks[i].ifname); got["rp_filter"] != asks[i].sysctls["rp_filter"] {
			t.Errorf("%s right after the move: rp_filter %s, want %s", asks[i].ifname, got["rp_filter"], asks[i].sysctls["rp_filter"])
		}
	}
	checkTwins(t, ns, asks, eps)
	aliasKept(t, ns, asks, eps)
}

// Docker 20.10: the namespace does not exist at Join; both endpoints join,
// then the namespace is made and both interfaces are moved in (ApplyInside).
// Here the container also already has a link at A's index, so A gets a new
// one on its move, and that one is B's index on the host: by index and MAC
// B's settings would go to A. The alias weft put on each tells them apart.
func TestIPvlanTwinsTunedAfterStart(t *testing.T) {
	asks := twinAsks(t)
	eps := twinNetworks(t, "labtw1", asks, 63)
	dir := t.TempDir()
	key := filepath.Join(dir, "sandbox")
	if err := os.WriteFile(key, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	for i := range eps {
		eps[i].join(t, key)
	}
	if eps[0].hostIndex >= eps[1].hostIndex || eps[0].alias == "" || eps[0].alias == eps[1].alias {
		t.Fatalf("host indexes %d, %d, aliases %q, %q", eps[0].hostIndex, eps[1].hostIndex, eps[0].alias, eps[1].alias)
	}
	ns := newNS(t)
	// Fill the container so that A's index is held and the next free one
	// is B's: numbers are handed out in order, skipping used ones.
	h, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	if err := h.LinkAdd(&netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Name: "hold", Index: eps[0].hostIndex}}); err != nil {
		t.Fatal(err)
	}
	for i := 0; ; i++ {
		links, _ := h.LinkList()
		next := 0 // the index the next link without one of its own gets
		for _, l := range links {
			if l.Attrs().Index != eps[0].hostIndex {
				next = max(next, l.Attrs().Index+1)
			}
		}
		if next == eps[0].hostIndex {
			next++
		}
		if next == eps[1].hostIndex {
			break
		}
		if next > eps[1].hostIndex || i > 500 {
			t.Fatalf("set-up: cannot make %d the container's next index (next %d)", eps[1].hostIndex, next)
		}
		if err := h.LinkAdd(&netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Name: fmt.Sprintf("fill%d", i)}}); err != nil {
			t.Fatal(err)
		}
	}
	// The sandbox becomes a namespace, as runc's hook makes it.
	if err := unix.Mount(fmt.Sprintf("/proc/%d/fd/%d", os.Getpid(), int(ns)), key, "", unix.MS_BIND, ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = unix.Unmount(key, unix.MNT_DETACH) })
	for i := range eps {
		moveTwin(t, ns, eps[i], asks[i].ifname)
	}
	if a, _ := h.LinkByName(asks[0].ifname); a == nil || a.Attrs().Index != eps[1].hostIndex {
		t.Fatalf("set-up: %s has index %v in the container, want B's host index %d", asks[0].ifname, a, eps[1].hostIndex)
	}
	checkTwins(t, ns, asks, eps)
	aliasKept(t, ns, asks, eps)
}

// aliasKept: the kernel fact whereIs rests on, in this kernel: a move into
// another namespace and a rename keep a link's alias.
func aliasKept(t *testing.T, ns netns.NsHandle, asks []twinAsk, eps []twinEndpoint) {
	t.Helper()
	h, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	for i, a := range asks {
		l, err := h.LinkByName(a.ifname)
		if err != nil || l.Attrs().Alias != eps[i].alias {
			t.Errorf("%s: alias %q after the move, was %q on the host (%v)", a.ifname, l.Attrs().Alias, eps[i].alias, err)
		}
	}
}

// namedNS makes a network namespace at /run/netns/NAME, as Docker 28+ has
// the sandbox at Join.
func namedNS(t *testing.T, name string) netns.NsHandle {
	t.Helper()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()
	ns, err := netns.NewNamed(name)
	if err != nil {
		t.Fatal(err)
	}
	if err := netns.Set(orig); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Close(); _ = netns.DeleteNamed(name) })
	return ns
}
