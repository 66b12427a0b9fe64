package tuning

import (
	"fmt"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/weft-net/weft/internal/nstest"
)

// Two ipvlan endpoints of one container share their parent's MAC. Here
// veths with one MAC and the aliases weft gives its macvlan and ipvlan
// links stand in for them (this machine's kernel may lack ipvlan; the
// kernel lab tests the real thing, kernellab/tuning_test.go).

// twin makes a veth named name with the given MAC, index (0: any) and
// alias in the calling thread's namespace, its peer in junk.
func twin(t *testing.T, junk netns.NsHandle, name string, index int, mac net.HardwareAddr, alias string) Ident {
	t.Helper()
	la := netlink.LinkAttrs{Name: name, Index: index, HardwareAddr: mac}
	if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: la, PeerName: name + "p", PeerNamespace: netlink.NsFd(int(junk))}); err != nil {
		if index != 0 {
			t.Skipf("cannot create %s with index %d here: %v", name, index, err)
		}
		t.Fatal(err)
	}
	l, err := netlink.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkSetAlias(l, alias); err != nil {
		t.Fatal(err)
	}
	return Ident{SrcName: name, MAC: l.Attrs().HardwareAddr.String(), Index: l.Attrs().Index, Alias: alias}
}

// Docker 20.10 (the namespace comes after Join): nothing tells what the
// sandbox had before the move, and the index of an interface can be held
// by its twin, which the sandbox gave a new index on its own move (the
// sandbox held the twin's). The alias tells them apart.
func TestApplyInsideTellsTwinsApart(t *testing.T) {
	nstest.Run(t, func() {
		ns, path := sandbox(t, fmt.Sprintf("wftw%d", os.Getpid()))
		junk, _ := sandbox(t, fmt.Sprintf("wftj%d", os.Getpid()))
		h, err := netlink.NewHandleAt(ns)
		if err != nil {
			t.Fatal(err)
		}
		defer h.Close()
		mac, _ := net.ParseMAC("02:42:0a:3c:00:07")
		a := twin(t, junk, "wftwa", 0, mac, "weft:local:net1:endpointA")
		// The sandbox already has a link at A's index: A is renumbered.
		if err := h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "hold", Index: a.Index}, PeerName: "holdp", PeerNamespace: netlink.NsFd(int(junk))}); err != nil {
			t.Fatal(err)
		}
		moveIn(t, ns, "wftwa", "eth0")
		eth0, err := h.LinkByName("eth0")
		if err != nil {
			t.Fatal(err)
		}
		// B's index on the host is the one A got in the sandbox.
		b := twin(t, junk, "wftwb", eth0.Attrs().Index, mac, "weft:local:net2:endpointB")
		moveIn(t, ns, "wftwb", "eth1")
		eth1, _ := h.LinkByName("eth1")
		if eth1.Attrs().Index == b.Index || eth0.Attrs().Index != b.Index {
			t.Fatalf("set-up: eth0 index %d, eth1 %d, B's host index %d: A should hold B's index", eth0.Attrs().Index, eth1.Attrs().Index, b.Index)
		}
		// Control: by index and MAC alone (the previous change), B's
		// settings go to A.
		links, _ := h.LinkList()
		if l, _, err := whereIs(links, Ident{SrcName: b.SrcName, MAC: b.MAC, Index: b.Index}, nil); err != nil || l.Attrs().Name != "eth0" {
			t.Fatalf("control: without the alias whereIs gives %v %v; the test expects the twin eth0, else it proves nothing", l, err)
		}
		in := Inside{Timeout: 2 * time.Second}
		before := readIn(t, ns, "net/ipv4/conf/eth0/rp_filter")[0]
		got, err := in.ApplyInside(path, b, Settings{TxQueueLen: -1, Sysctls: map[string]string{"net.ipv4.conf.IFNAME.rp_filter": "2"}, Offloads: map[string]bool{"tso": false}}, "")
		if err != nil || !strings.Contains(got, "net.ipv4.conf.eth1.rp_filter=2") {
			t.Fatalf("B: applied %q, %v; want eth1", got, err)
		}
		if v := readIn(t, ns, "net/ipv4/conf/eth0/rp_filter", "net/ipv4/conf/eth1/rp_filter"); v[0] != before || v[1] != "2" {
			t.Fatalf("rp_filter eth0 (A) %s (was %s), eth1 (B) %s", v[0], before, v[1])
		}
		if !featuresIn(t, ns, "eth0")["tx-tcp-segmentation"] || featuresIn(t, ns, "eth1")["tx-tcp-segmentation"] {
			t.Fatal("B's tso=off is not on B alone")
		}
		got, err = in.ApplyInside(path, a, Settings{TxQueueLen: -1, Sysctls: map[string]string{"net.ipv4.conf.IFNAME.rp_filter": "1"}}, "")
		if err != nil || !strings.Contains(got, "net.ipv4.conf.eth0.rp_filter=1") {
			t.Fatalf("A: applied %q, %v; want eth0", got, err)
		}
		if v := readIn(t, ns, "net/ipv4/conf/eth0/rp_filter", "net/ipv4/conf/eth1/rp_filter"); v[0] != "1" || v[1] != "2" {
			t.Fatalf("rp_filter eth0 (A) %s, eth1 (B) %s; want 1 and 2", v[0], v[1])
		}
	})
}

// Docker 28+ (the namespace exists at Join): the endpoints of a container
// join one after the other, each moved in before the next joins. Each
// twin's sysctls, borrowed defaults and offloads land on its own interface,
// with Finish running concurrently as in the driver.
func TestPrepareTwinsOneAfterTheOther(t *testing.T) {
	nstest.Run(t, func() {
		ns, path := sandbox(t, fmt.Sprintf("wftq%d", os.Getpid()))
		junk, _ := sandbox(t, fmt.Sprintf("wftk%d", os.Getpid()))
		mac, _ := net.ParseMAC("02:42:0a:3d:00:07")
		in := Inside{Timeout: 5 * time.Second}
		type result struct {
			got string
			err error
		}
		asks := []struct {
			dev, name string
			s         Settings
		}{
			{"wftqa", "eth0", Settings{TxQueueLen: -1, Sysctls: map[string]string{"net.ipv4.conf.IFNAME.rp_filter": "2", "net.ipv4.conf.IFNAME.arp_ignore": "1"}, Offloads: map[string]bool{"tso": false}}},
			{"wftqb", "eth1", Settings{TxQueueLen: -1, Sysctls: map[string]string{"net.ipv4.conf.IFNAME.rp_filter": "1", "net.ipv4.conf.IFNAME.arp_announce": "2"}, Offloads: map[string]bool{"gso": false}}},
		}
		var done []chan result
		for i, a := range asks {
			id := twin(t, junk, a.dev, 0, mac, fmt.Sprintf("weft:local:net%d:endpoint%d", i, i))
			p := in.Prepare(path, id.SrcName, id.MAC, a.s, "")
			if !p.AtJoin() {
				t.Fatal("Prepare did not see the namespace")
			}
			ch := make(chan result, 1)
			go func() { got, err := p.Finish(); ch <- result{got, err} }()
			done = append(done, ch)
			moveIn(t, ns, a.dev, a.name)
		}
		for i, ch := range done {
			r := <-ch
			if r.err != nil || !strings.Contains(r.got, "net.ipv4.conf."+asks[i].name+".rp_filter=") {
				t.Fatalf("%s: applied %q, %v", asks[i].name, r.got, r.err)
			}
		}
		v := readIn(t, ns, "net/ipv4/conf/eth0/rp_filter", "net/ipv4/conf/eth0/arp_ignore", "net/ipv4/conf/eth0/arp_announce",
			"net/ipv4/conf/eth1/rp_filter", "net/ipv4/conf/eth1/arp_ignore", "net/ipv4/conf/eth1/arp_announce")
		if strings.Join(v, " ") != "2 1 0 1 0 2" {
			t.Fatalf("eth0 rp_filter/arp_ignore/arp_announce %v, eth1 %v; want 2 1 0 and 1 0 2", v[:3], v[3:])
		}
		f0, f1 := featuresIn(t, ns, "eth0"), featuresIn(t, ns, "eth1")
		if f0["tx-tcp-segmentation"] || !f0["tx-generic-segmentation"] || !f1["tx-tcp-segmentation"] || f1["tx-generic-segmentation"] {
			t.Fatalf("eth0 tso %v gso %v, eth1 tso %v gso %v; want eth0 tso off only, eth1 gso off only",
				f0["tx-tcp-segmentation"], f0["tx-generic-segmentation"], f1["tx-tcp-segmentation"], f1["tx-generic-segmentation"])
		}
	})
}
