package kernellab

// WireGuard backends in Debian's kernel. A kernel-WireGuard node lives in
// its own network namespace; a wireguard-go node lives in the lab's own
// (root) namespace; a veth pair is the underlay between them.
//
// Why the userspace node is in the root namespace: wireguard-go opens its
// UDP sockets in whichever thread calls BindUpdate, and besides our own
// calls it does so from its TUN event goroutine when the link goes down and
// up. Those goroutines run on ordinary threads, which are all in the root
// namespace, so only there is the userspace node's socket reliably where
// the node is. The kernel node has no such goroutines: its device, its UDP
// socket and its generic netlink socket belong to the namespace they were
// made in, so it runs on a thread locked into its namespace (inNS).

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/weft-net/weft/driver/overlay"
)

const (
	wgKernDev  = "wglk0" // the kernel node's WireGuard device (in its namespace)
	wgUserDev  = "wglu0" // the userspace node's TUN device (root namespace)
	wgKernPort = 51820
	wgUserPort = 51821
	wgMTU      = 1420
	vxlanPort  = 4800
)

var (
	// Underlay: TEST-NET-1 and the IPv6 documentation prefix.
	underUser  = netip.MustParseAddr("192.0.2.1") // root namespace, wireguard-go
	underKern  = netip.MustParseAddr("192.0.2.2") // namespace, kernel WireGuard
	under6User = "2001:db8:77::1"
	under6Kern = "2001:db8:77::2"
	tunPrefix  = netip.MustParsePrefix("fd77:7765:6677::/96")
)

// wgLab is the two nodes and the underlay between them.
type wgLab struct {
	ns               netns.NsHandle // the kernel node's namespace
	h                *netlink.Handle
	kern, user       overlay.Tunnel
	kernKey, userKey wgtypes.Key
	psk              wgtypes.Key // the kernel node's
	tunKern, tunUser netip.Addr
	kernClosed       bool
}

// inNS runs f on an OS thread in ns. The thread stays locked, so Go ends it
// with the goroutine instead of reusing a thread left in another namespace.
func inNS(ns netns.NsHandle, f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := netns.Set(ns); err != nil {
			errc <- fmt.Errorf("enter namespace: %w", err)
			return
		}
		errc <- f()
	}()
	return <-errc
}

// newWGLab builds the underlay, opens the kernel node (Force=kernel) in a
// new namespace and the userspace node (Force=userspace) in the root
// namespace, and gives each the other as its peer. The nodes derive their
// pre-shared keys from the given cluster keys.
func newWGLab(t *testing.T, kernCluster, userCluster string) *wgLab {
	t.Helper()
	l := &wgLab{ns: newNS(t), tunKern: overlay.TunnelAddr(underKern), tunUser: overlay.TunnelAddr(underUser)}
	h, err := netlink.NewHandleAt(l.ns, unix.NETLINK_ROUTE)
	if err != nil {
		t.Fatal(err)
	}
	l.h = h
	t.Cleanup(h.Close)

	// Underlay: wglv0 (root, .1) <-> wglv1 (kernel node, .2), IPv4 for
	// WireGuard and IPv6 with a default route on the kernel node's side: the
	// way out that the fail-closed route has to beat.
	if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "wglv0"}, PeerName: "wglv1"}); err != nil {
		t.Fatal(err)
	}
	v0, err := netlink.LinkByName("wglv0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = netlink.LinkDel(v0) })
	v1, err := netlink.LinkByName("wglv1")
	if err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkSetNsFd(v1, int(l.ns)); err != nil {
		t.Fatal(err)
	}
	if v1, err = h.LinkByName("wglv1"); err != nil {
		t.Fatal(err)
	}
	addr := func(h *netlink.Handle, link netlink.Link, a string) {
		t.Helper()
		na, err := netlink.ParseAddr(a)
		if err != nil {
			t.Fatal(err)
		}
		na.Flags = unix.IFA_F_NODAD
		if h == nil {
			err = netlink.AddrAdd(link, na)
		} else {
			err = h.AddrAdd(link, na)
		}
		if err != nil {
			t.Fatalf("address %s on %s: %v", a, link.Attrs().Name, err)
		}
	}
	addr(nil, v0, underUser.String()+"/24")
	addr(nil, v0, under6User+"/64")
	addr(h, v1, underKern.String()+"/24")
	addr(h, v1, under6Kern+"/64")
	if err := netlink.LinkSetUp(v0); err != nil {
		t.Fatal(err)
	}
	if err := h.LinkSetUp(v1); err != nil {
		t.Fatal(err)
	}
	if lo, err := h.LinkByName("lo"); err == nil {
		_ = h.LinkSetUp(lo)
	}
	if err := h.RouteAdd(&netlink.Route{LinkIndex: v1.Attrs().Index, Gw: net.ParseIP(under6User),
		Dst: &net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}}); err != nil {
		t.Fatalf("IPv6 default route on the kernel node: %v", err)
	}

	// Keys: the kernel node's through LoadOrCreateKey, as the plugin does.
	keyFile := filepath.Join(t.TempDir(), "wg", "private.key")
	if l.kernKey, err = overlay.LoadOrCreateKey(keyFile); err != nil {
		t.Fatal(err)
	}
	if again, err := overlay.LoadOrCreateKey(keyFile); err != nil || again != l.kernKey {
		t.Fatalf("LoadOrCreateKey does not return the stored key: %v", err)
	}
	if l.userKey, err = wgtypes.GeneratePrivateKey(); err != nil {
		t.Fatal(err)
	}
	l.psk = overlay.DerivePSK([]byte(kernCluster))
	userPSK := overlay.DerivePSK([]byte(userCluster))

	if err := inNS(l.ns, func() (err error) {
		l.kern, err = overlay.OpenTunnel(overlay.WGConfig{Name: wgKernDev, Port: wgKernPort, MTU: wgMTU,
			Key: l.kernKey, PSK: &l.psk, Addr: l.tunKern, Force: "kernel"})
		return err
	}); err != nil {
		t.Fatalf("open the kernel node: %v", err)
	}
	t.Cleanup(func() { l.closeKernel(t) })
	if l.user, err = overlay.OpenTunnel(overlay.WGConfig{Name: wgUserDev, Port: wgUserPort, MTU: wgMTU,
		Key: l.userKey, PSK: &userPSK, Addr: l.tunUser, Force: "userspace"}); err != nil {
		t.Fatalf("open the userspace node: %v", err)
	}
	t.Cleanup(func() {
		if err := l.user.Close(); err != nil {
			t.Errorf("close the userspace node: %v", err)
		}
		overlay.RemoveBlackhole()
	})

	if err := inNS(l.ns, func() error {
		return l.kern.SetPeers([]overlay.WGPeer{{Key: l.userKey.PublicKey(),
			Endpoint: netip.AddrPortFrom(underUser, wgUserPort), Tunnel: l.tunUser}})
	}); err != nil {
		t.Fatalf("kernel node peers: %v", err)
	}
	if err := l.user.SetPeers([]overlay.WGPeer{{Key: l.kernKey.PublicKey(),
		Endpoint: netip.AddrPortFrom(underKern, wgKernPort), Tunnel: l.tunKern}}); err != nil {
		t.Fatalf("userspace node peers: %v", err)
	}
	return l
}

func (l *wgLab) closeKernel(t *testing.T) {
	t.Helper()
	if l.kernClosed {
		return
	}
	l.kernClosed = true
	if err := inNS(l.ns, l.kern.Close); err != nil {
		t.Errorf("close the kernel node: %v", err)
	}
}

// kernelDevice reads the kernel node's WireGuard state over generic netlink.
func (l *wgLab) kernelDevice(t *testing.T) *wgtypes.Device {
	t.Helper()
	var d *wgtypes.Device
	if err := inNS(l.ns, func() error {
		c, err := wgctrl.New()
		if err != nil {
			return err
		}
		defer c.Close()
		d, err = c.Device(wgKernDev)
		return err
	}); err != nil {
		t.Fatalf("read %s: %v", wgKernDev, err)
	}
	return d
}

func (l *wgLab) kernelPeer(t *testing.T) wgtypes.Peer {
	t.Helper()
	d := l.kernelDevice(t)
	if len(d.Peers) != 1 {
		t.Fatalf("kernel node has %d peers, want 1: %+v", len(d.Peers), d.Peers)
	}
	return d.Peers[0]
}

// ping runs one busybox ping in ns, or in the root namespace for
// netns.None(). nsenter opens the namespace through our /proc fd entry, so
// no *os.File (with its closing finalizer) wraps the handle's descriptor.
func ping(ns netns.NsHandle, args ...string) (string, error) {
	args = append([]string{"ping", "-c", "1", "-W", "3"}, args...)
	if ns != netns.None() {
		args = append([]string{"nsenter", fmt.Sprintf("--net=/proc/%d/fd/%d", os.Getpid(), int(ns))}, args...)
	}
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

// mustPing wants a reply within a few tries (the first ones may wait for
// the handshake; TCG is slow).
func mustPing(t *testing.T, ns netns.NsHandle, what string, args ...string) {
	t.Helper()
	var out string
	var err error
	for i := 0; i < 5; i++ {
		if out, err = ping(ns, args...); err == nil {
			return
		}
	}
	t.Fatalf("%s: no reply to ping %v: %v\n%s", what, args, err, out)
}

// neverPing wants every try to go unanswered.
func neverPing(t *testing.T, ns netns.NsHandle, what string, args ...string) {
	t.Helper()
	var out string
	for i := 0; i < 3; i++ {
		var err error
		if out, err = ping(ns, args...); err == nil {
			t.Fatalf("%s: ping %v was answered:\n%s", what, args, out)
		}
	}
	t.Logf("%s: unanswered as it should be: %s", what, lastLine(out))
}

func lastLine(s string) string {
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		return s[i+1:]
	}
	return s
}

// TestWireGuardKernelTalksToUserspace: a kernel-WireGuard node and a
// wireguard-go node with the same cluster key handshake over the underlay
// and carry IPv6 between their tunnel addresses both ways.
func TestWireGuardKernelTalksToUserspace(t *testing.T) {
	l := newWGLab(t, "cluster key", "cluster key")
	if got := l.kern.Backend(); got != "kernel WireGuard" {
		t.Fatalf("Force=kernel backend %q", got)
	}
	if got := l.user.Backend(); got != "wireguard-go (userspace)" {
		t.Fatalf("Force=userspace backend %q", got)
	}
	// The devices are what they claim, labelled and addressed.
	kl, err := l.h.LinkByName(wgKernDev)
	if err != nil {
		t.Fatal(err)
	}
	if kl.Type() != "wireguard" || kl.Attrs().Alias != "weft:wireguard" || kl.Attrs().MTU != wgMTU || kl.Attrs().Flags&net.FlagUp == 0 {
		t.Fatalf("kernel node device: type %s alias %q mtu %d flags %v", kl.Type(), kl.Attrs().Alias, kl.Attrs().MTU, kl.Attrs().Flags)
	}
	ul, err := netlink.LinkByName(wgUserDev)
	if err != nil {
		t.Fatal(err)
	}
	if ul.Type() != "tuntap" || ul.Attrs().Alias != "weft:wireguard" || ul.Attrs().MTU != wgMTU || ul.Attrs().Flags&net.FlagUp == 0 {
		t.Fatalf("userspace node device: type %s alias %q mtu %d flags %v", ul.Type(), ul.Attrs().Alias, ul.Attrs().MTU, ul.Attrs().Flags)
	}
	hasAddr := func(h *netlink.Handle, link netlink.Link, want netip.Addr) {
		t.Helper()
		var addrs []netlink.Addr
		if h == nil {
			addrs, err = netlink.AddrList(link, netlink.FAMILY_V6)
		} else {
			addrs, err = h.AddrList(link, netlink.FAMILY_V6)
		}
		if err != nil {
			t.Fatal(err)
		}
		for _, a := range addrs {
			if ones, _ := a.Mask.Size(); a.IP.Equal(want.AsSlice()) && ones == 96 {
				return
			}
		}
		t.Fatalf("%s lacks %s/96: %v", link.Attrs().Name, want, addrs)
	}
	hasAddr(l.h, kl, l.tunKern)
	hasAddr(nil, ul, l.tunUser)

	mustPing(t, l.ns, "kernel node -> userspace node", l.tunUser.String())
	mustPing(t, netns.None(), "userspace node -> kernel node", l.tunKern.String())

	// The kernel's view: a completed handshake with the userspace node's
	// key and the shared PSK, traffic both ways, and the peer's endpoint is
	// its underlay address and port.
	d := l.kernelDevice(t)
	if d.Type != wgtypes.LinuxKernel || d.ListenPort != wgKernPort || d.PrivateKey != l.kernKey {
		t.Fatalf("kernel device: type %v port %d key matches %v", d.Type, d.ListenPort, d.PrivateKey == l.kernKey)
	}
	p := l.kernelPeer(t)
	if p.PublicKey != l.userKey.PublicKey() || p.PresharedKey != l.psk {
		t.Fatal("kernel node's peer has the wrong public key or PSK")
	}
	if p.LastHandshakeTime.IsZero() || p.ReceiveBytes == 0 || p.TransmitBytes == 0 {
		t.Fatalf("no handshake or traffic with the userspace node: %+v", p)
	}
	if p.Endpoint == nil || p.Endpoint.AddrPort() != netip.AddrPortFrom(underUser, wgUserPort) {
		t.Fatalf("peer endpoint %v, want %s:%d", p.Endpoint, underUser, wgUserPort)
	}
	if len(p.AllowedIPs) != 1 || p.AllowedIPs[0].String() != l.tunUser.String()+"/128" {
		t.Fatalf("allowed IPs %v, want %s/128", p.AllowedIPs, l.tunUser)
	}
}

// TestWireGuardVXLANOverTunnel: an IPv6 VXLAN between the nodes' tunnel
// addresses (UDP 4800), as encrypted networks use, carries IPv4 between
// the two ends, near the VXLAN MTU too, and the bytes go through WireGuard.
func TestWireGuardVXLANOverTunnel(t *testing.T) {
	l := newWGLab(t, "cluster key", "cluster key")
	mustPing(t, l.ns, "tunnel before VXLAN", l.tunUser.String())
	mk := func(h *netlink.Handle, name string, local, remote netip.Addr, addr string) {
		t.Helper()
		vx := &netlink.Vxlan{LinkAttrs: netlink.LinkAttrs{Name: name, MTU: wgMTU - 70}, VxlanId: 4242,
			SrcAddr: local.AsSlice(), Group: remote.AsSlice(), Port: vxlanPort}
		var err error
		if h == nil {
			err = netlink.LinkAdd(vx)
		} else {
			err = h.LinkAdd(vx)
		}
		if err != nil {
			t.Fatalf("vxlan %s: %v", name, err)
		}
		get := netlink.LinkByName
		addAddr, up, del := netlink.AddrAdd, netlink.LinkSetUp, netlink.LinkDel
		if h != nil {
			get, addAddr, up, del = h.LinkByName, h.AddrAdd, h.LinkSetUp, h.LinkDel
		}
		link, err := get(name)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = del(link) })
		a, _ := netlink.ParseAddr(addr)
		if err := addAddr(link, a); err != nil {
			t.Fatal(err)
		}
		if err := up(link); err != nil {
			t.Fatal(err)
		}
	}
	mk(nil, "wglx0", l.tunUser, l.tunKern, "10.98.0.1/24")
	mk(l.h, "wglx1", l.tunKern, l.tunUser, "10.98.0.2/24")
	mustPing(t, l.ns, "VXLAN kernel node -> userspace node", "10.98.0.1")
	mustPing(t, netns.None(), "VXLAN userspace node -> kernel node", "10.98.0.2")

	before := l.kernelPeer(t)
	const size = wgMTU - 70 - 28 - 22 // a 1300-byte payload in a 1350-byte VXLAN MTU
	mustPing(t, l.ns, "large VXLAN ping", "-s", fmt.Sprint(size), "10.98.0.1")
	after := l.kernelPeer(t)
	if after.TransmitBytes-before.TransmitBytes < size || after.ReceiveBytes-before.ReceiveBytes < size {
		t.Fatalf("WireGuard counters grew by tx %d rx %d for a %d-byte VXLAN ping: it did not go through the tunnel",
			after.TransmitBytes-before.TransmitBytes, after.ReceiveBytes-before.ReceiveBytes, size)
	}
}

// TestWireGuardFailsClosed: once the kernel node's device is gone, traffic
// for the tunnel prefix is dropped by the blackhole route, although an
// IPv6 default route over the underlay would deliver it in clear to the
// peer (which the control at the end shows).
func TestWireGuardFailsClosed(t *testing.T) {
	l := newWGLab(t, "cluster key", "cluster key")
	mustPing(t, l.ns, "tunnel before closing", l.tunUser.String())
	l.closeKernel(t)
	if _, err := l.h.LinkByName(wgKernDev); err == nil {
		t.Fatal("the kernel node's device is still there after Close")
	}
	routes, err := l.h.RouteListFiltered(netlink.FAMILY_V6, &netlink.Route{Dst: &net.IPNet{IP: tunPrefix.Addr().AsSlice(),
		Mask: net.CIDRMask(tunPrefix.Bits(), 128)}}, netlink.RT_FILTER_DST)
	if err != nil {
		t.Fatal(err)
	}
	var bh *netlink.Route
	for i := range routes {
		if routes[i].Type == unix.RTN_BLACKHOLE {
			bh = &routes[i]
		}
	}
	if bh == nil {
		t.Fatalf("no blackhole route for %s after Close: %v", tunPrefix, routes)
	}
	neverPing(t, l.ns, "closed tunnel", l.tunUser.String())

	// Control: without the blackhole the same ping leaves over the
	// underlay in clear and is answered, so the failures above were the
	// blackhole's doing.
	if err := l.h.RouteDel(bh); err != nil {
		t.Fatal(err)
	}
	mustPing(t, l.ns, "control without the blackhole (cleartext over the underlay)", l.tunUser.String())
}

// TestWireGuardPSKMismatch: nodes whose cluster keys differ derive
// different pre-shared keys and get no tunnel, though their WireGuard keys
// are right.
func TestWireGuardPSKMismatch(t *testing.T) {
	l := newWGLab(t, "cluster key", "another cluster key")
	neverPing(t, l.ns, "kernel node -> userspace node with another PSK", l.tunUser.String())
	neverPing(t, netns.None(), "userspace node -> kernel node with another PSK", l.tunKern.String())
	if p := l.kernelPeer(t); !p.LastHandshakeTime.IsZero() {
		t.Fatalf("handshake completed with a mismatched PSK: %+v", p)
	}
}

// TestWireGuardDefaultBackendIsKernel: with no WG_BACKEND setting, a kernel
// with WireGuard gets the kernel backend.
func TestWireGuardDefaultBackendIsKernel(t *testing.T) {
	ns := newNS(t)
	key, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	var tun overlay.Tunnel
	if err := inNS(ns, func() (err error) {
		tun, err = overlay.OpenTunnel(overlay.WGConfig{Name: "wgld0", Port: wgKernPort, MTU: wgMTU, Key: key,
			Addr: overlay.TunnelAddr(netip.MustParseAddr("192.0.2.9"))})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := inNS(ns, tun.Close); err != nil {
			t.Error(err)
		}
	}()
	if got := tun.Backend(); got != "kernel WireGuard" {
		t.Fatalf("default backend %q in a kernel with WireGuard", got)
	}
}
