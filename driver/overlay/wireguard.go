package overlay

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun"
	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// Encrypted networks' VXLAN runs over IPv6 between per-node tunnel
// addresses: the node's IPv4 underlay address inside this /96. The VXLAN
// socket of an encrypted network is then IPv6-only, so cleartext IPv4 VXLAN
// from the underlay can never reach it, and the only route to a peer's
// tunnel address is the WireGuard device.
var tunnelPrefix = netip.MustParsePrefix("fd77:7765:6677::/96")

// TunnelAddr is the WireGuard-side address of a node.
func TunnelAddr(underlay netip.Addr) netip.Addr {
	b := tunnelPrefix.Addr().As16()
	if underlay.Is4() {
		v := underlay.As4()
		copy(b[12:], v[:])
	} else {
		h := sha256.Sum256(underlay.AsSlice())
		copy(b[12:], h[:4])
	}
	return netip.AddrFrom16(b)
}

const wgAlias = "weft:wireguard"

// WGPeer is another node as the tunnel sees it.
type WGPeer struct {
	Key      wgtypes.Key
	Endpoint netip.AddrPort // underlay address and WireGuard port
	Tunnel   netip.Addr     // its tunnel address (allowed IP)
	Allowed  []netip.Prefix // its containers' addresses on encrypted networks
}

// allowedIPs is what the peer may send from and is sent to.
func (p WGPeer) allowedIPs() []netip.Prefix {
	return append([]netip.Prefix{netip.PrefixFrom(p.Tunnel, 128)}, p.Allowed...)
}

// Tunnel is the node's WireGuard device, kernel or userspace.
type Tunnel interface {
	// Backend names the implementation for logs and inspect.
	Backend() string
	// SetPeers replaces the peer list.
	SetPeers([]WGPeer) error
	// Close removes the device.
	Close() error
}

// WGConfig is what opening the tunnel needs.
type WGConfig struct {
	Name  string
	Port  int
	MTU   int
	Key   wgtypes.Key  // private
	PSK   *wgtypes.Key // derived from the cluster key
	Addr  netip.Addr   // this node's tunnel address
	Force string       // "", "kernel" or "userspace" (WG_BACKEND setting)
}

// OpenTunnel creates the WireGuard device: the kernel's when it has
// WireGuard, else wireguard-go on a TUN device. Either way the device gets
// the node's tunnel address and is up before it returns.
func OpenTunnel(cfg WGConfig) (Tunnel, error) {
	if l, err := netlink.LinkByName(cfg.Name); err == nil {
		// Unlabelled is weft's too: a crash between creating and labelling.
		if a := l.Attrs().Alias; a != wgAlias && a != "" {
			return nil, fmt.Errorf("an interface named %s exists and is not weft's; remove or rename it", cfg.Name)
		}
		_ = netlink.LinkDel(l) // weft's leftover from a crash: start clean
	}
	var t Tunnel
	var kerr error
	if cfg.Force != "userspace" {
		t, kerr = openKernel(cfg)
		if kerr != nil && cfg.Force == "kernel" {
			return nil, fmt.Errorf("setting WG_BACKEND=kernel: %w", kerr)
		}
	}
	if t == nil {
		var err error
		if t, err = openUserspace(cfg); err != nil {
			return nil, errors.Join(err, kerr)
		}
		if kerr != nil {
			logrus.WithError(kerr).Info("no kernel WireGuard here: using the embedded wireguard-go")
		}
	}
	if err := addressTunnel(cfg); err != nil {
		_ = t.Close()
		return nil, err
	}
	return t, nil
}

// addressTunnel gives the device its address and makes the tunnel prefix
// fail closed: a blackhole route (lower priority than the device's) keeps
// VXLAN for peers off any other route while the device is missing or down.
func addressTunnel(cfg WGConfig) error {
	l, err := netlink.LinkByName(cfg.Name)
	if err != nil {
		return fmt.Errorf("look up %s: %w", cfg.Name, err)
	}
	if err := netlink.LinkSetAlias(l, wgAlias); err != nil {
		return fmt.Errorf("label %s: %w", cfg.Name, err)
	}
	a := &netlink.Addr{IPNet: &net.IPNet{IP: cfg.Addr.AsSlice(), Mask: net.CIDRMask(tunnelPrefix.Bits(), 128)}, Flags: unix.IFA_F_NODAD}
	if err := netlink.AddrReplace(l, a); err != nil {
		return fmt.Errorf("address %s on %s (is IPv6 disabled on this host?): %w", cfg.Addr, cfg.Name, err)
	}
	if err := netlink.LinkSetUp(l); err != nil {
		return fmt.Errorf("bring up %s: %w", cfg.Name, err)
	}
	if err := netlink.RouteReplace(blackhole()); err != nil {
		return fmt.Errorf("fail-closed route for %s: %w", tunnelPrefix, err)
	}
	return nil
}

func blackhole() *netlink.Route {
	return &netlink.Route{Dst: &net.IPNet{IP: tunnelPrefix.Addr().AsSlice(), Mask: net.CIDRMask(tunnelPrefix.Bits(), 128)},
		Type: unix.RTN_BLACKHOLE, Priority: 0xffffff, Family: unix.AF_INET6}
}

// RemoveBlackhole drops the fail-closed route once no encrypted network is left.
func RemoveBlackhole() { _ = netlink.RouteDel(blackhole()) }

// kernelTunnel is the kernel's WireGuard, configured over generic netlink.
type kernelTunnel struct {
	cfg WGConfig
	wg  *wgctrl.Client
	peerDiff
}

// peerDiff remembers the peers a tunnel was given, so that a change touches
// only the peers that changed: replacing them all would drop every
// session (and packets in flight) at each container start in the swarm.
type peerDiff struct {
	applied map[wgtypes.Key]string // key -> endpoint and allowed IPs
}

func (p WGPeer) signature() string { return fmt.Sprint(p.Endpoint, p.allowedIPs()) }

// diff returns the peers to add or update and the keys to remove, and
// records peers as applied (call commit on success).
func (d *peerDiff) diff(peers []WGPeer) (upsert []WGPeer, remove []wgtypes.Key, next map[wgtypes.Key]string) {
	next = map[wgtypes.Key]string{}
	for _, p := range peers {
		next[p.Key] = p.signature()
		if d.applied[p.Key] != next[p.Key] {
			upsert = append(upsert, p)
		}
	}
	for k := range d.applied {
		if _, ok := next[k]; !ok {
			remove = append(remove, k)
		}
	}
	return upsert, remove, next
}

func openKernel(cfg WGConfig) (Tunnel, error) {
	if err := netlink.LinkAdd(&netlink.Wireguard{LinkAttrs: netlink.LinkAttrs{Name: cfg.Name, MTU: cfg.MTU}}); err != nil {
		return nil, fmt.Errorf("kernel WireGuard unavailable (CONFIG_WIREGUARD): %w", err)
	}
	c, err := wgctrl.New()
	if err != nil {
		_ = deleteLink(cfg.Name)
		return nil, fmt.Errorf("WireGuard netlink: %w", err)
	}
	t := &kernelTunnel{cfg: cfg, wg: c}
	port := cfg.Port
	if err := c.ConfigureDevice(cfg.Name, wgtypes.Config{PrivateKey: &cfg.Key, ListenPort: &port, ReplacePeers: true}); err != nil {
		_ = t.Close()
		return nil, fmt.Errorf("configure WireGuard on %s: %w", cfg.Name, err)
	}
	return t, nil
}

func (t *kernelTunnel) Backend() string { return "kernel WireGuard" }

func (t *kernelTunnel) SetPeers(peers []WGPeer) error {
	upsert, remove, next := t.diff(peers)
	if len(upsert) == 0 && len(remove) == 0 {
		return nil
	}
	var c wgtypes.Config
	for _, k := range remove {
		c.Peers = append(c.Peers, wgtypes.PeerConfig{PublicKey: k, Remove: true})
	}
	for _, p := range upsert {
		ep := net.UDPAddrFromAddrPort(p.Endpoint)
		pc := wgtypes.PeerConfig{PublicKey: p.Key, PresharedKey: t.cfg.PSK, Endpoint: ep, ReplaceAllowedIPs: true}
		for _, a := range p.allowedIPs() {
			pc.AllowedIPs = append(pc.AllowedIPs, net.IPNet{IP: a.Addr().AsSlice(), Mask: net.CIDRMask(a.Bits(), a.Addr().BitLen())})
		}
		c.Peers = append(c.Peers, pc)
	}
	if err := t.wg.ConfigureDevice(t.cfg.Name, c); err != nil {
		return fmt.Errorf("configure WireGuard on %s: %w", t.cfg.Name, err)
	}
	t.applied = next
	return nil
}

func (t *kernelTunnel) Close() error {
	_ = t.wg.Close()
	return deleteLink(t.cfg.Name)
}

// userTunnel is wireguard-go in this process, on a TUN device.
type userTunnel struct {
	cfg WGConfig
	dev *device.Device
	peerDiff
}

func openUserspace(cfg WGConfig) (Tunnel, error) {
	td, err := tun.CreateTUN(cfg.Name, cfg.MTU)
	if err != nil {
		return nil, fmt.Errorf("userspace WireGuard needs /dev/net/tun: %w", err)
	}
	logger := &device.Logger{Verbosef: device.DiscardLogf, Errorf: func(f string, a ...any) {
		logrus.WithField("from", "wireguard-go").Warnf(f, a...)
	}}
	dev := device.NewDevice(td, conn.NewDefaultBind(), logger)
	t := &userTunnel{cfg: cfg, dev: dev}
	// Key and port once: setting listen_port again would make wireguard-go
	// reopen its sockets at every peer change.
	if err := dev.IpcSet(fmt.Sprintf("private_key=%s\nlisten_port=%d\n", hex.EncodeToString(cfg.Key[:]), cfg.Port)); err != nil {
		dev.Close()
		return nil, fmt.Errorf("configure wireguard-go on %s: %w", cfg.Name, err)
	}
	if err := dev.Up(); err != nil {
		dev.Close()
		return nil, fmt.Errorf("start wireguard-go: %w", err)
	}
	return t, nil
}

func (t *userTunnel) Backend() string { return "wireguard-go (userspace)" }

// SetPeers speaks wireguard-go's UAPI text: hex keys, one key=value a line.
func (t *userTunnel) SetPeers(peers []WGPeer) error {
	upsert, remove, next := t.diff(peers)
	if len(upsert) == 0 && len(remove) == 0 {
		return nil
	}
	var b strings.Builder
	for _, k := range remove {
		fmt.Fprintf(&b, "public_key=%s\nremove=true\n", hex.EncodeToString(k[:]))
	}
	for _, p := range upsert {
		fmt.Fprintf(&b, "public_key=%s\n", hex.EncodeToString(p.Key[:]))
		if t.cfg.PSK != nil {
			fmt.Fprintf(&b, "preshared_key=%s\n", hex.EncodeToString(t.cfg.PSK[:]))
		}
		fmt.Fprintf(&b, "endpoint=%s\nreplace_allowed_ips=true\n", p.Endpoint)
		for _, a := range p.allowedIPs() {
			fmt.Fprintf(&b, "allowed_ip=%s\n", a)
		}
	}
	if err := t.dev.IpcSet(b.String()); err != nil {
		return fmt.Errorf("configure wireguard-go on %s: %w", t.cfg.Name, err)
	}
	t.applied = next
	return nil
}

func (t *userTunnel) Close() error {
	t.dev.Close() // closes the TUN device, which removes the link
	for i := 0; i < 50; i++ {
		if _, err := netlink.LinkByName(t.cfg.Name); err != nil {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return deleteLink(t.cfg.Name)
}

// LoadOrCreateKey reads the node's private key, or makes one. The file is
// 0600 and never leaves the node: only the public key is gossiped.
func LoadOrCreateKey(path string) (wgtypes.Key, error) {
	if raw, err := os.ReadFile(path); err == nil {
		k, err := wgtypes.ParseKey(strings.TrimSpace(string(raw)))
		if err != nil {
			return wgtypes.Key{}, fmt.Errorf("WireGuard key %s: %w", path, err)
		}
		return k, nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return wgtypes.Key{}, fmt.Errorf("read WireGuard key: %w", err)
	}
	k, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		return wgtypes.Key{}, fmt.Errorf("generate WireGuard key: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return wgtypes.Key{}, err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(k.String()+"\n"), 0o600); err != nil {
		return wgtypes.Key{}, fmt.Errorf("write WireGuard key: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return wgtypes.Key{}, fmt.Errorf("write WireGuard key: %w", err)
	}
	return k, nil
}

// DerivePSK makes the WireGuard pre-shared key from the cluster key, so
// that a node also needs the cluster key to talk to the others (and the
// tunnels gain a symmetric layer against a future break of Curve25519).
func DerivePSK(clusterKey []byte) wgtypes.Key {
	h := sha256.New()
	h.Write([]byte("weft wireguard psk v1\x00"))
	h.Write(clusterKey)
	var k wgtypes.Key
	copy(k[:], h.Sum(nil))
	return k
}

func deleteLink(name string) error {
	l, err := netlink.LinkByName(name)
	if err != nil {
		return nil
	}
	return netlink.LinkDel(l)
}
