package tuning

import (
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/weft-net/weft/internal/nstest"
)

func TestApplyAndRemoveOnVeth(t *testing.T) {
	nstest.Run(t, func() {
		if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "wfhtest", MTU: 1500}, PeerName: "wfctest"}); err != nil {
			t.Fatal(err)
		}
		l := Link{Host: "wfhtest", Cont: "wfctest", IFB: "wfitest", Alias: "weft:test"}
		s := Settings{MTU: 1400, TxQueueLen: 123, RateEgress: 10e6, RateIngress: 50e6}
		if err := Apply(l, s); err != nil {
			t.Fatal(err)
		}
		cont, _ := netlink.LinkByName("wfctest")
		if cont.Attrs().MTU != 1400 || cont.Attrs().TxQLen != 123 {
			t.Fatalf("mtu %d txqueuelen %d", cont.Attrs().MTU, cont.Attrs().TxQLen)
		}
		in, out := Shaping(l)
		if in != 50e6 || out != 10e6 {
			t.Fatalf("installed rates ingress %d egress %d", in, out)
		}
		host, _ := netlink.LinkByName("wfhtest")
		filters, _ := netlink.FilterList(host, netlink.MakeHandle(0xffff, 0))
		if len(filters) != 1 {
			t.Fatalf("%d redirect filters on the host veth", len(filters))
		}
		// Applying again (reconcile) changes nothing and does not fail.
		if err := Apply(l, s); err != nil {
			t.Fatal(err)
		}
		if err := Remove(l); err != nil {
			t.Fatal(err)
		}
		if _, err := netlink.LinkByName("wfitest"); err == nil {
			t.Fatal("IFB left after Remove")
		}
		if in, out := Shaping(l); in != 0 || out != 0 {
			t.Fatalf("shaping left: %d %d", in, out)
		}
		// An endpoint MTU above the network's is refused.
		if err := Apply(l, Settings{MTU: 1600, TxQueueLen: -1}); err == nil {
			t.Fatal("MTU above the network's accepted")
		}
		// Types without a host side: nothing is shaped on the host (it happens inside).
		if err := Apply(Link{Cont: "wfctest", IFB: "wfitest"}, Settings{TxQueueLen: -1, RateEgress: 1e6}); err != nil {
			t.Fatal(err)
		}
		if _, err := netlink.LinkByName("wfitest"); err == nil {
			t.Fatal("IFB created on the host for a type without a host side")
		}
	})
}
