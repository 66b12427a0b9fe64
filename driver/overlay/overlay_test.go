package overlay

import (
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/weft-net/weft/driver/api"
	"github.com/weft-net/weft/gossip"
	"github.com/weft-net/weft/internal/nstest"
	"github.com/weft-net/weft/store"
)

type fakeRules struct{ ensured, removed int }

func (f *fakeRules) Ensure(int, string, netip.Prefix, bool) error { f.ensured++; return nil }
func (f *fakeRules) Remove() error                                { f.removed++; return nil }

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func newType(t *testing.T) (*Type, *fakeRules) {
	t.Helper()
	st, err := store.Open(filepath.Join(t.TempDir(), "global.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	r := &fakeRules{}
	ty := &Type{Scope: "global:test", Member: "m1", St: st, Rules: r,
		Cfg: Settings{GossipPort: freePort(t), VXLANPort: 4800, WGPort: 51830, KeyFile: filepath.Join(t.TempDir(), "wg.key")}}
	ty.Discovered("127.0.0.1", true)
	t.Cleanup(ty.Shutdown)
	return ty, r
}

func TestAllocate(t *testing.T) {
	ty, _ := newType(t)
	for opt, want := range map[string]string{
		OptVNI: `option weft.vni="x": weft allocates VNIs from 4096`, OptKey: "option weft.gossip_key is set",
		OptEncrypted: "", OptMTU: "",
	} {
		o := map[string]string{opt: "x"}
		_, err := ty.Allocate("n0", o)
		if want == "" {
			want = "option " + opt + "="
		}
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Allocate with %s=x: %v, want %q", opt, err, want)
		}
	}
	a, err := ty.Allocate("net-a", map[string]string{"type": "overlay", OptEncrypted: ""})
	if err != nil {
		t.Fatal(err)
	}
	if a["type"] != "overlay" || a[OptCipher] != "wireguard" || a[OptSeeds] != "127.0.0.1:"+strconv.Itoa(ty.Cfg.GossipPort) {
		t.Errorf("allocated options %v", a)
	}
	again, _ := ty.Allocate("net-a", map[string]string{"type": "overlay"})
	if again[OptVNI] != a[OptVNI] || again[OptKey] != a[OptKey] {
		t.Errorf("a replayed allocation changed: %v then %v", a, again)
	}
	b, _ := ty.Allocate("net-b", map[string]string{})
	if b[OptVNI] == a[OptVNI] || b[OptKey] != a[OptKey] {
		t.Errorf("second network: VNI %s (first %s), key equal: %v", b[OptVNI], a[OptVNI], b[OptKey] == a[OptKey])
	}
	if _, ok := b[OptCipher]; ok {
		t.Errorf("unencrypted network has %s", OptCipher)
	}
	if v, _ := strconv.Atoi(a[OptVNI]); v < minVNI || v > maxVNI {
		t.Errorf("VNI %d out of range", v)
	}
	if err := ty.Free("net-a"); err != nil {
		t.Fatal(err)
	}
	if c, _ := ty.Allocate("net-a", map[string]string{}); c[OptVNI] != a[OptVNI] {
		t.Errorf("VNI after free and re-allocation %s, want the same hash-derived %s", c[OptVNI], a[OptVNI])
	}
}

func TestValidate(t *testing.T) {
	ty, _ := newType(t)
	opts, err := ty.Allocate("net1", map[string]string{"type": "overlay"})
	if err != nil {
		t.Fatal(err)
	}
	pool := []netip.Prefix{netip.MustParsePrefix("10.9.0.0/24")}
	n := &api.Network{ID: "net1abcdefghijk", Options: opts, Pools: pool}
	if err := ty.Validate(n, nil); err != nil {
		t.Fatal(err)
	}
	if n.State[stBridge] != "wfovnet1abcdefg" || n.State[stVXLAN] != "wfvxnet1abcdefg" || n.State[stEncrypted] != "false" {
		t.Errorf("state %v", n.State)
	}
	if m, _ := strconv.Atoi(n.State[stMTU]); m != underlayMTU(netip.MustParseAddr("127.0.0.1"))-vxlanOH {
		t.Errorf("MTU %d, want the underlay's minus %d", m, vxlanOH)
	}
	for name, c := range map[string]struct {
		mod  func(map[string]string)
		want string
	}{
		"no vni":     {func(o map[string]string) { delete(o, OptVNI) }, "created by weft's swarm manager"},
		"bad key":    {func(o map[string]string) { o[OptKey] = "abc" }, "option weft.gossip_key"},
		"bad enc":    {func(o map[string]string) { o[OptEncrypted] = "perhaps" }, `option encrypted="perhaps"`},
		"tiny mtu":   {func(o map[string]string) { o[OptMTU] = "20" }, "option com.docker.network.driver.mtu"},
		"mtu ok":     {func(o map[string]string) { o[OptMTUShort] = "1300" }, ""},
		"encrypted":  {func(o map[string]string) { o[OptEncrypted] = "" }, ""},
		"vni in use": {func(o map[string]string) {}, "already used by weft network"},
	} {
		o := map[string]string{}
		for k, v := range opts {
			o[k] = v
		}
		c.mod(o)
		m := &api.Network{ID: "net2", Options: o, Pools: pool}
		var existing []*api.Network
		if name == "vni in use" {
			existing = []*api.Network{n}
			n.Type = "overlay"
		}
		err := ty.Validate(m, existing)
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%s: %v", name, err)
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
			t.Errorf("%s: %v, want %q", name, err, c.want)
		}
		if name == "mtu ok" && m.State[stMTU] != "1300" {
			t.Errorf("mtu option: state %v", m.State)
		}
		if name == "encrypted" && (m.State[stEncrypted] != "true" || m.State[stMTU] != strconv.Itoa(underlayMTU(netip.MustParseAddr("127.0.0.1"))-cryptOH)) {
			t.Errorf("encrypted: state %v", m.State)
		}
	}
}

func TestTunnelAddrAndKeys(t *testing.T) {
	if a := TunnelAddr(netip.MustParseAddr("198.19.7.2")); a.String() != "fd77:7765:6677::c613:702" {
		t.Errorf("tunnel address %s", a)
	}
	if !tunnelPrefix.Contains(TunnelAddr(netip.MustParseAddr("2001:db8::1"))) {
		t.Error("IPv6 underlay's tunnel address outside the prefix")
	}
	if DerivePSK([]byte("k1")) == DerivePSK([]byte("k2")) || DerivePSK([]byte("k1")) != DerivePSK([]byte("k1")) {
		t.Error("PSK derivation is not a function of the cluster key")
	}
	p := filepath.Join(t.TempDir(), "sub", "wg.key")
	k1, err := LoadOrCreateKey(p)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(p)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode %v, %v; want 0600", fi.Mode(), err)
	}
	if k2, _ := LoadOrCreateKey(p); k2 != k1 {
		t.Error("the key changed on reload")
	}
}

// TestDataPlane builds a network in a private namespace and checks that
// the control plane's view becomes exactly the FDB and neighbour entries.
func TestDataPlane(t *testing.T) {
	nstest.Run(t, func() {
		lo, _ := netlink.LinkByName("lo")
		_ = netlink.LinkSetUp(lo)
		ty, rules := newType(t)
		opts, err := ty.Allocate("netdp", map[string]string{"type": "overlay"})
		if err != nil {
			t.Fatal(err)
		}
		n := &api.Network{ID: "netdp0123456789", Type: "overlay", Options: opts, Pools: []netip.Prefix{netip.MustParsePrefix("10.9.0.0/24")}}
		if err := ty.Validate(n, nil); err != nil {
			t.Fatal(err)
		}
		if err := ty.CreateNetwork(n, nil); err != nil {
			t.Fatal(err)
		}
		vx, err := netlink.LinkByName(n.State[stVXLAN])
		if err != nil {
			t.Fatal(err)
		}
		v := vx.(*netlink.Vxlan)
		if v.Learning || !v.Proxy || v.Port != 4800 || strconv.Itoa(v.VxlanId) != n.State[stVNI] || !strings.HasPrefix(v.Alias, "weft:global:test:") {
			t.Errorf("VXLAN device: learning %v proxy %v port %d vni %d alias %q", v.Learning, v.Proxy, v.Port, v.VxlanId, v.Alias)
		}
		ep := &api.Endpoint{ID: "ep0123456789abcdef", NetworkID: n.ID, Addr4: netip.MustParsePrefix("10.9.0.2/24"), MAC: "02:42:0a:09:00:02"}
		if err := ty.CreateEndpoint(n, ep); err != nil {
			t.Fatal(err)
		}
		if hl, err := netlink.LinkByName(ep.HostIf); err != nil || hl.Attrs().MasterIndex != vx.Attrs().MasterIndex {
			t.Fatalf("host veth %s: %v", ep.HostIf, err)
		}
		peers := []gossip.Peer{{Node: gossip.Node{Name: "p", Addr: netip.MustParseAddr("192.0.2.7")},
			Entries: []gossip.Entry{{Network: n.ID, IP: "10.9.0.7", MAC: "02:42:0a:09:00:07"}, {Network: "other", IP: "10.8.0.7", MAC: "02:42:0a:08:00:07"}}}}
		if err := ty.program(n, peers); err != nil {
			t.Fatal(err)
		}
		fdb, _ := netlink.NeighList(vx.Attrs().Index, unix.AF_BRIDGE)
		var got []string
		for _, f := range fdb {
			if f.IP != nil {
				got = append(got, f.HardwareAddr.String()+">"+f.IP.String())
			}
		}
		if strings.Join(got, ",") != "02:42:0a:09:00:07>192.0.2.7" {
			t.Errorf("FDB %v", got)
		}
		ns, _ := netlink.NeighList(vx.Attrs().Index, unix.AF_INET)
		if len(ns) != 1 || ns[0].IP.String() != "10.9.0.7" || ns[0].State != netlink.NUD_PERMANENT {
			t.Errorf("neighbours %v", ns)
		}
		// The peer goes: its entries go.
		if err := ty.program(n, nil); err != nil {
			t.Fatal(err)
		}
		fdb, _ = netlink.NeighList(vx.Attrs().Index, unix.AF_BRIDGE)
		for _, f := range fdb {
			if f.IP != nil {
				t.Errorf("FDB entry left: %v", f)
			}
		}
		if ns, _ := netlink.NeighList(vx.Attrs().Index, unix.AF_INET); len(ns) != 0 {
			t.Errorf("neighbours left: %v", ns)
		}
		if err := ty.DeleteEndpoint(n, ep); err != nil {
			t.Fatal(err)
		}
		if err := ty.DeleteNetwork(n, nil); err != nil {
			t.Fatal(err)
		}
		for _, name := range []string{n.State[stVXLAN], n.State[stBridge], ep.HostIf} {
			if _, err := netlink.LinkByName(name); err == nil {
				t.Errorf("%s left behind", name)
			}
		}
		if rules.ensured == 0 || rules.removed == 0 {
			t.Errorf("rules ensured %d, removed %d times", rules.ensured, rules.removed)
		}
	})
}

func TestConfiguredKeyStaysOutOfOptions(t *testing.T) {
	ty, _ := newType(t)
	ty.Cfg.ClusterKey = []byte("0123456789abcdef")
	opts, err := ty.Allocate("netk", map[string]string{"type": "overlay"})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := opts[OptKey]; ok {
		t.Fatalf("GOSSIP_KEY was handed out in the options: %v", opts)
	}
	n := &api.Network{ID: "netk", Options: opts, Pools: []netip.Prefix{netip.MustParsePrefix("10.9.0.0/24")}}
	if err := ty.Validate(n, nil); err != nil {
		t.Fatalf("a node with GOSSIP_KEY: %v", err)
	}
	other, _ := newType(t) // a node without GOSSIP_KEY
	if err := other.Validate(n, nil); err == nil || !strings.Contains(err.Error(), "set the same GOSSIP_KEY") {
		t.Fatalf("a node without the key: %v", err)
	}
}

func TestDiscoveredNodesBecomeSeeds(t *testing.T) {
	ty, _ := newType(t)
	ty.Discovered("192.0.2.9", false)
	ty.Discovered("not an address", false)
	if strings.Join(ty.seeds, ",") != "192.0.2.9:"+strconv.Itoa(ty.Cfg.GossipPort) {
		t.Fatalf("seeds %v", ty.seeds)
	}
	if ty.self.String() != "127.0.0.1" {
		t.Fatalf("a non-self discovery changed this node's address to %s", ty.self)
	}
}

// A manager's allocator replays AllocateNetwork with what weft returned;
// a new leader (another store) keeps the VNI and adopts the swarm's key.
func TestAllocateReplay(t *testing.T) {
	ty, _ := newType(t)
	first, err := ty.Allocate("net-r", map[string]string{"type": "overlay", OptEncrypted: ""})
	if err != nil {
		t.Fatal(err)
	}
	again, err := ty.Allocate("net-r", first)
	if err != nil {
		t.Fatalf("replay refused: %v", err)
	}
	if again[OptVNI] != first[OptVNI] || again[OptKey] != first[OptKey] || again[OptCipher] != "wireguard" {
		t.Errorf("replay changed the allocation: %v -> %v", first, again)
	}
	leader, _ := newType(t)
	re, err := leader.Allocate("net-r", first)
	if err != nil {
		t.Fatalf("new leader's replay: %v", err)
	}
	fresh, err := leader.Allocate("net-s", map[string]string{"type": "overlay"})
	if err != nil {
		t.Fatal(err)
	}
	if re[OptVNI] != first[OptVNI] || fresh[OptKey] != first[OptKey] || fresh[OptVNI] == first[OptVNI] {
		t.Errorf("new leader: replay %v, new network %v; first %v", re, fresh, first)
	}
	clash := map[string]string{"type": "overlay", OptVNI: first[OptVNI]}
	if _, err := leader.Allocate("net-t", clash); err == nil || !strings.Contains(err.Error(), "already used by network net-r") {
		t.Errorf("a second network with the same VNI: %v", err)
	}
}

func TestPeerDiff(t *testing.T) {
	var d peerDiff
	k1, k2 := wgtypes.Key{1}, wgtypes.Key{2}
	p1 := WGPeer{Key: k1, Endpoint: netip.MustParseAddrPort("192.0.2.1:51830"), Tunnel: TunnelAddr(netip.MustParseAddr("192.0.2.1"))}
	p2 := WGPeer{Key: k2, Endpoint: netip.MustParseAddrPort("192.0.2.2:51830"), Tunnel: TunnelAddr(netip.MustParseAddr("192.0.2.2"))}
	up, rm, next := d.diff([]WGPeer{p1, p2})
	if len(up) != 2 || len(rm) != 0 {
		t.Fatalf("first: upsert %d remove %d", len(up), len(rm))
	}
	d.applied = next
	if up, rm, _ := d.diff([]WGPeer{p1, p2}); len(up)+len(rm) != 0 {
		t.Fatalf("unchanged peers touched: %v %v", up, rm)
	}
	p2.Allowed = []netip.Prefix{netip.MustParsePrefix("10.9.0.7/32")}
	up, rm, next = d.diff([]WGPeer{p2})
	if len(up) != 1 || up[0].Key != k2 || len(rm) != 1 || rm[0] != k1 {
		t.Fatalf("change: upsert %v remove %v", up, rm)
	}
	d.applied = next
}

func TestRecheckRules(t *testing.T) {
	ty, rules := newType(t)
	ty.recheckRules()
	if rules.ensured != 0 {
		t.Fatalf("rules ensured without any overlay network")
	}
	ty.init()
	ty.nets["n"] = &api.Network{ID: "n"}
	ty.recheckRules()
	if rules.ensured != 1 {
		t.Fatalf("rules ensured %d times, want 1", rules.ensured)
	}
}

func TestOverhead(t *testing.T) {
	v4, v6 := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("2001:db8::1")
	for _, c := range []struct {
		a    netip.Addr
		enc  bool
		want int
	}{{v4, false, 50}, {v4, true, 60}, {v6, false, 70}, {v6, true, 80}} {
		if got := overhead(c.a, c.enc); got != c.want {
			t.Errorf("overhead(%s, encrypted %v) = %d, want %d", c.a, c.enc, got, c.want)
		}
	}
}

func TestResumeOnManager(t *testing.T) {
	ty, _ := newType(t)
	ty.Resume()
	if ty.cluster != nil {
		t.Fatal("a node that allocated nothing started the control plane")
	}
	if _, err := ty.Allocate("net-m", map[string]string{"type": "overlay"}); err != nil {
		t.Fatal(err)
	}
	ty.Shutdown()
	if ty.cluster != nil {
		t.Fatal("still running after Shutdown")
	}
	restarted := &Type{Scope: ty.Scope, Member: "m1", St: ty.St, Rules: &fakeRules{}, Cfg: ty.Cfg}
	defer restarted.Shutdown()
	restarted.Resume()
	if restarted.cluster == nil {
		t.Fatal("the restarted manager did not start the control plane")
	}
}

// A refused allocation leaves no VNI record behind.
func TestRefusedAllocationRecordsNothing(t *testing.T) {
	ty, _ := newType(t)
	for _, o := range []map[string]string{{OptEncrypted: "perhaps"}, {OptMTU: "1"}, {OptVNI: "12"}} {
		if _, err := ty.Allocate("net-bad", o); err == nil {
			t.Fatalf("Allocate(%v) succeeded", o)
		}
	}
	n := -1
	_ = ty.St.View(func(tx *store.Tx) error { n = tx.Count(bucket, "vni/"); return nil })
	if n != 0 {
		t.Fatalf("%d VNI records after refusals", n)
	}
}
