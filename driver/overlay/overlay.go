// Package overlay is weft's multi-host network type for the swarm instance:
// per network and node a bridge and a VXLAN device, whose forwarding
// entries (FDB and ARP/ND proxy neighbours) come from the gossip control
// plane rather than multicast or flood-and-learn. With -o encrypted the
// VXLAN runs only inside WireGuard tunnels between nodes.
package overlay

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"hash/fnv"
	"net"
	"net/netip"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/weft-net/weft/driver/api"
	"github.com/weft-net/weft/firewall"
	"github.com/weft-net/weft/gossip"
	"github.com/weft-net/weft/netutil"
	"github.com/weft-net/weft/store"
)

// Options. encrypted and the MTU keys are Docker's overlay names; the
// weft.* keys are set by the manager's AllocateNetwork, never by users.
const (
	OptEncrypted = "encrypted"
	OptMTU       = "com.docker.network.driver.mtu"
	OptMTUShort  = "mtu"
	OptVNI       = "weft.vni"
	OptKey       = "weft.gossip_key"
	OptSeeds     = "weft.seeds"
	OptCipher    = "weft.encryption"
)

// Per-network state.
const (
	stVNI       = "vni"
	stMTU       = "mtu"
	stBridge    = "bridge"
	stVXLAN     = "vxlan"
	stEncrypted = "encrypted"
)

const (
	bucket   = "overlay"
	wgName   = "wfwg0"
	minVNI   = 4096 // as Docker's overlay: below is for hand-made VXLANs
	maxVNI   = 1<<24 - 1
	vxlanOH  = 50 // IPv4 + UDP + VXLAN + inner Ethernet (20 more over IPv6)
	cryptOH  = 60 // WireGuard over IPv4: IP 20 + UDP 8 + WireGuard 32 (20 more over IPv6); encrypted networks are routed, no VXLAN
	joinWait = 2 * time.Second
)

// Settings are the swarm instance's plugin settings for overlays.
type Settings struct {
	GossipPort int    // GOSSIP_PORT
	VXLANPort  int    // VXLAN_PORT
	WGPort     int    // WG_PORT
	WGBackend  string // WG_BACKEND: auto, kernel or userspace
	ClusterKey []byte // GOSSIP_KEY, or nil: the manager mints one
	KeyFile    string // the node's WireGuard private key (0600)
}

// Rules is the overlay's small firewall: accept bridged overlay traffic
// despite Docker's FORWARD policy, and drop cleartext VXLAN aimed at the
// tunnel addresses unless it came out of the WireGuard device.
type Rules interface {
	Ensure(vxlanPort int, wgIf string, tunnel netip.Prefix, guard bool) error
	Remove() error
}

// Type implements api.NetworkType for overlays.
type Type struct {
	Scope  string // the instance label for link aliases
	Member string // gossip member name (hostname and the store's instance ID)
	Cfg    Settings
	St     *store.Store
	Rules  Rules

	mu         sync.Mutex
	self       netip.Addr
	cluster    *gossip.Cluster
	key        []byte
	seeds      []string
	joined     bool                    // gossip has shown peers since the start
	savedPeers string                  // the member list last written to the store
	nets       map[string]*api.Network // overlay networks present on this node
	local      map[string]gossip.Entry // this node's endpoints, by endpoint ID
	tun        Tunnel
	wgKey      wgtypes.Key
	stop       chan struct{}
}

func (t *Type) init() {
	if t.nets == nil {
		t.nets = map[string]*api.Network{}
		t.local = map[string]gossip.Entry{}
	}
}

// Name implements api.NetworkType.
func (t *Type) Name() string { return "overlay" }

// Options implements api.NetworkType.
func (t *Type) Options() []string {
	return []string{OptEncrypted, OptMTU, OptMTUShort, OptVNI, OptKey, OptSeeds, OptCipher}
}

// HostSideShaping implements api.HostShaper: rate limits go on the host veth.
func (t *Type) HostSideShaping() bool { return true }

func encrypted(o map[string]string) (bool, error) {
	v, ok := o[OptEncrypted]
	if !ok {
		return false, nil
	}
	switch strings.ToLower(v) {
	case "", "true", "1", "yes", "on":
		return true, nil
	case "false", "0", "no", "off":
		return false, nil
	}
	return false, fmt.Errorf("option %s=%q: give -o encrypted (or encrypted=true / encrypted=false)", OptEncrypted, v)
}

// Discovered records this node's underlay address from Docker's
// NodeDiscovery (Self): gossip, VXLAN and WireGuard use it.
func (t *Type) Discovered(addr string, self bool) {
	a, err := netip.ParseAddr(addr)
	if err != nil {
		logrus.WithField("address", addr).Warn("overlay: node discovery gave an address weft cannot parse")
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if !self {
		// Another node of the swarm: a gossip seed (its plugin listens on
		// the same port if it runs weft's swarm instance).
		t.seeds = dedup(append(t.seeds, net.JoinHostPort(a.String(), strconv.Itoa(t.Cfg.GossipPort))))
		return
	}
	t.self = a
	if err := t.St.Update(func(tx *store.Tx) error { return tx.Put(bucket, "self", a.String()) }); err != nil {
		logrus.WithError(err).Warn("overlay: cannot save this node's address")
	}
	logrus.WithField("address", a).Info("overlay: this node's underlay address")
}

// selfAddr is the node's underlay address: from discovery, the store, or
// the route towards a seed.
func (t *Type) selfAddr(seeds []string) (netip.Addr, error) {
	if t.self.IsValid() {
		return t.self, nil
	}
	var s string
	if ok, _ := get(t.St, "self", &s); ok {
		if a, err := netip.ParseAddr(s); err == nil {
			t.self = a
			return a, nil
		}
	}
	for _, seed := range seeds {
		ap, err := netip.ParseAddrPort(seed)
		if err != nil {
			continue
		}
		rs, err := netlink.RouteGet(ap.Addr().AsSlice())
		if err == nil && len(rs) > 0 && rs[0].Src != nil {
			if a, ok := netip.AddrFromSlice(rs[0].Src); ok {
				t.self = a.Unmap()
				return t.self, nil
			}
		}
	}
	return netip.Addr{}, errors.New("this node's swarm address is not known yet (Docker has not sent node discovery); retry in a moment")
}

func get(st *store.Store, key string, v any) (bool, error) {
	var ok bool
	err := st.View(func(tx *store.Tx) error {
		var err error
		ok, err = tx.Get(bucket, key, v)
		return err
	})
	return ok, err
}

// Allocate runs on the swarm manager (AllocateNetwork): it picks a
// cluster-unique VNI and adds what every node needs to join the control
// plane: the cluster key and the manager's gossip address as a seed.
func (t *Type) Allocate(netID string, opts map[string]string) (map[string]string, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.init()
	// A manager's allocator re-allocates every network when it starts (a
	// restart, a new leader) and passes back what weft returned before:
	// then the VNI and key are kept, not refused.
	prevVNI, replay := opts[OptVNI]
	if !replay {
		for _, k := range []string{OptKey, OptSeeds, OptCipher} {
			if _, ok := opts[k]; ok {
				return nil, fmt.Errorf("option %s is set by weft's swarm manager; remove it from docker network create", k)
			}
		}
	}
	enc, err := encrypted(opts)
	if err != nil {
		return nil, err
	}
	if _, err := api.MTU(opts, OptMTU, OptMTUShort); err != nil {
		return nil, err
	}
	self, err := t.selfAddr(nil)
	if err != nil {
		return nil, err
	}
	if replay {
		if v, err := strconv.Atoi(prevVNI); err != nil || v < minVNI || v > maxVNI {
			return nil, fmt.Errorf("option %s=%q: weft allocates VNIs from %d to %d; remove the option", OptVNI, prevVNI, minVNI, maxVNI)
		}
		if k := opts[OptKey]; k != "" && len(t.Cfg.ClusterKey) == 0 {
			// A new leader adopts the swarm's key instead of minting its own.
			if err := t.adoptKey(k); err != nil {
				return nil, err
			}
		}
	}
	key, err := t.clusterKey()
	if err != nil {
		return nil, err
	}
	// The manager joins the control plane too: it is every node's seed.
	if err := t.ensureCluster(key, nil); err != nil {
		return nil, err
	}
	// The VNI is recorded last: a refusal above leaves no record behind.
	var vni int
	if replay {
		vni, err = t.keepVNI(netID, prevVNI)
	} else {
		vni, err = t.allocateVNI(netID)
	}
	if err != nil {
		return nil, err
	}
	seeds := []string{net.JoinHostPort(self.String(), strconv.Itoa(t.Cfg.GossipPort))}
	seeds = append(seeds, t.cluster.Addrs()...)
	out := map[string]string{}
	for k, v := range opts {
		out[k] = v
	}
	out[OptVNI] = strconv.Itoa(vni)
	if len(t.Cfg.ClusterKey) == 0 {
		// Minted here: the nodes learn it with the network. A key set with
		// GOSSIP_KEY on every node never appears in network options.
		out[OptKey] = base64.StdEncoding.EncodeToString(key)
	}
	out[OptSeeds] = strings.Join(dedup(seeds), ",")
	if enc {
		out[OptCipher] = "wireguard"
	}
	return out, nil
}

// Free releases a VNI on the manager (FreeNetwork).
func (t *Type) Free(netID string) error {
	return t.St.Update(func(tx *store.Tx) error { return tx.Delete(bucket, "vni/"+netID) })
}

// keepVNI records a replayed network's VNI (unless another network of
// this manager has it).
func (t *Type) keepVNI(netID, s string) (int, error) {
	v, err := strconv.Atoi(s)
	if err != nil || v < minVNI || v > maxVNI {
		return 0, fmt.Errorf("option %s=%q: weft allocates VNIs from %d to %d; remove the option", OptVNI, s, minVNI, maxVNI)
	}
	var clash string
	err = t.St.View(func(tx *store.Tx) error {
		return tx.ForEach(bucket, "vni/", func(k string, raw []byte) error {
			var x int
			if store.Decode(raw, &x) == nil && x == v && k != "vni/"+netID {
				clash = strings.TrimPrefix(k, "vni/")
			}
			return nil
		})
	})
	if err != nil {
		return 0, err
	}
	if clash != "" {
		return 0, fmt.Errorf("option %s=%d: VNI already used by network %.12s", OptVNI, v, clash)
	}
	if err := t.St.Update(func(tx *store.Tx) error { return tx.Put(bucket, "vni/"+netID, v) }); err != nil {
		return 0, fmt.Errorf("save VNI: %w", err)
	}
	return v, nil
}

// adoptKey makes a key learned from a network this node's cluster key, in
// the store: a manager that later allocates hands out the same one.
func (t *Type) adoptKey(b64 string) error {
	k, err := base64.StdEncoding.DecodeString(b64)
	if err != nil || (len(k) != 16 && len(k) != 24 && len(k) != 32) {
		return fmt.Errorf("option %s: not a 16, 24 or 32 byte base64 key", OptKey)
	}
	var cur string
	if ok, _ := get(t.St, "key", &cur); ok && cur == b64 {
		return nil
	}
	if err := t.St.Update(func(tx *store.Tx) error { return tx.Put(bucket, "key", b64) }); err != nil {
		return fmt.Errorf("save cluster key: %w", err)
	}
	return nil
}

func (t *Type) allocateVNI(netID string) (int, error) {
	used := map[int]string{}
	err := t.St.View(func(tx *store.Tx) error {
		return tx.ForEach(bucket, "vni/", func(k string, raw []byte) error {
			var v int
			if err := store.Decode(raw, &v); err != nil {
				return err
			}
			used[v] = strings.TrimPrefix(k, "vni/")
			return nil
		})
	})
	if err != nil {
		return 0, err
	}
	for v, id := range used {
		if id == netID {
			return v, nil // replayed by a restarted manager
		}
	}
	// Start from a hash of the network ID: a second manager that becomes
	// leader without this store still picks the same VNI for a network.
	h := fnv.New32a()
	h.Write([]byte(netID))
	span := maxVNI - minVNI + 1
	v := minVNI + int(h.Sum32())%span
	for used[v] != "" {
		v = minVNI + (v-minVNI+1)%span
	}
	if err := t.St.Update(func(tx *store.Tx) error { return tx.Put(bucket, "vni/"+netID, v) }); err != nil {
		return 0, fmt.Errorf("save VNI: %w", err)
	}
	return v, nil
}

func (t *Type) clusterKey() ([]byte, error) {
	if len(t.Cfg.ClusterKey) > 0 {
		return t.Cfg.ClusterKey, nil
	}
	if t.cluster != nil {
		return t.key, nil // the key the running control plane uses
	}
	var s string
	if ok, err := get(t.St, "key", &s); err != nil {
		return nil, err
	} else if ok {
		return base64.StdEncoding.DecodeString(s)
	}
	k := make([]byte, 32)
	if _, err := rand.Read(k); err != nil {
		return nil, err
	}
	if err := t.St.Update(func(tx *store.Tx) error { return tx.Put(bucket, "key", base64.StdEncoding.EncodeToString(k)) }); err != nil {
		return nil, fmt.Errorf("save cluster key: %w", err)
	}
	return k, nil
}

// networkKey is the cluster key: this node's GOSSIP_KEY if set, else the
// one the manager put in the network's options.
func (t *Type) networkKey(o map[string]string) ([]byte, error) {
	if len(t.Cfg.ClusterKey) > 0 {
		return t.Cfg.ClusterKey, nil
	}
	if o[OptKey] == "" {
		return nil, fmt.Errorf("the network carries no cluster key: the manager has GOSSIP_KEY set, so set the same GOSSIP_KEY on this node's weft swarm instance")
	}
	key, err := base64.StdEncoding.DecodeString(o[OptKey])
	if err != nil || (len(key) != 16 && len(key) != 24 && len(key) != 32) {
		return nil, fmt.Errorf("option %s: not a 16, 24 or 32 byte base64 key; was the network allocated by weft's swarm manager?", OptKey)
	}
	return key, nil
}

func dedup(s []string) []string {
	seen := map[string]bool{}
	var out []string
	for _, x := range s {
		if x != "" && !seen[x] {
			seen[x] = true
			out = append(out, x)
		}
	}
	return out
}

// Validate implements api.NetworkType.
func (t *Type) Validate(n *api.Network, existing []*api.Network) error {
	o := n.Options
	vni, err := strconv.Atoi(o[OptVNI])
	if err != nil || vni < 1 || vni > maxVNI {
		return errors.New("overlay networks are created by weft's swarm manager: use docker network create --scope swarm on a manager with weft's swarm instance (no weft.vni was allocated)")
	}
	for _, e := range existing {
		if e.Type == "overlay" && e.State[stVNI] == strconv.Itoa(vni) {
			return fmt.Errorf("VNI %d is already used by weft network %.12s on this node", vni, e.ID)
		}
	}
	if _, err := t.networkKey(o); err != nil {
		return err
	}
	enc, err := encrypted(o)
	if err != nil {
		return err
	}
	mtu, err := api.MTU(o, OptMTU, OptMTUShort)
	if err != nil {
		return err
	}
	if len(n.Pools) == 0 {
		return errors.New("the network has no subnet: give --subnet or use weft's IPAM")
	}
	if enc {
		for _, p := range n.Pools {
			if p.Addr().Is6() {
				return fmt.Errorf("-o encrypted networks carry IPv4 only for now: create the network without the IPv6 subnet %s", p)
			}
		}
	}
	if mtu == 0 {
		mtu = 1500
		t.mu.Lock()
		self, err := t.selfAddr(strings.Split(o[OptSeeds], ","))
		t.mu.Unlock()
		if err == nil {
			mtu = underlayMTU(self)
		}
		mtu -= overhead(self, enc)
	}
	if mtu < 576 {
		return fmt.Errorf("the underlay's MTU leaves %d bytes for containers; set option %s to at least 576 or raise the underlay's MTU", mtu, OptMTU)
	}
	id := n.ID[:min(11, len(n.ID))]
	n.State = map[string]string{stVNI: strconv.Itoa(vni), stMTU: strconv.Itoa(mtu), stBridge: "wfov" + id,
		stVXLAN: "wfvx" + id, stEncrypted: strconv.FormatBool(enc)}
	return nil
}

// overhead is what the encapsulation takes from the underlay's MTU.
func overhead(underlay netip.Addr, enc bool) int {
	o := vxlanOH
	if enc {
		o = cryptOH
	}
	if underlay.Is6() {
		o += 20 // an IPv6 header is 40 bytes, not 20
	}
	return o
}

// underlayMTU is the MTU of the link holding the address, or 1500.
func underlayMTU(a netip.Addr) int {
	addrs, err := netlink.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return 1500
	}
	for _, x := range addrs {
		if ip, ok := netip.AddrFromSlice(x.IP); ok && ip.Unmap() == a {
			if l, err := netlink.LinkByIndex(x.LinkIndex); err == nil {
				return l.Attrs().MTU
			}
		}
	}
	return 1500
}

func mtuOf(n *api.Network) int  { m, _ := strconv.Atoi(n.State[stMTU]); return m }
func isEnc(n *api.Network) bool { return n.State[stEncrypted] == "true" }

func (t *Type) alias(n *api.Network) string { return api.AliasPrefix + t.Scope + ":" + n.ID }
func (t *Type) epAlias(ep *api.Endpoint) string {
	return api.AliasPrefix + t.Scope + ":" + ep.NetworkID + ":" + ep.ID
}

// ensureCluster starts the gossip member once a key is known and keeps
// trying the seeds in the background until another member answers.
func (t *Type) ensureCluster(key []byte, seeds []string) error {
	t.seeds = dedup(append(t.seeds, seeds...))
	if t.cluster != nil {
		return nil
	}
	var stored []string
	_, _ = get(t.St, "peers", &stored)
	t.seeds = dedup(append(t.seeds, stored...))
	self, err := t.selfAddr(t.seeds)
	if err != nil {
		return err
	}
	c, err := gossip.Start(gossip.Config{Name: t.Member, Addr: self, Port: t.Cfg.GossipPort, Key: key, OnChange: t.onChange})
	if err != nil {
		return err
	}
	t.cluster, t.key, t.stop = c, key, make(chan struct{})
	logrus.WithFields(logrus.Fields{"address": self, "port": t.Cfg.GossipPort, "seeds": strings.Join(t.seeds, ",")}).Info("overlay: control plane started")
	go t.joinLoop(c, t.stop)
	return nil
}

// joinLoop contacts the seeds until some member answers, and again
// whenever this node finds itself alone (e.g. after the others restarted).
func (t *Type) joinLoop(c *gossip.Cluster, stop chan struct{}) {
	alone, tick := 0, 0
	for {
		t.mu.Lock()
		seeds := append([]string(nil), t.seeds...)
		t.mu.Unlock()
		members := c.Addrs()
		tick++
		switch {
		case len(members) < 2 && len(seeds) > 0:
			if n, err := c.Join(seeds); err != nil {
				alone++
				log := logrus.WithError(err).WithField("seeds", strings.Join(seeds, ","))
				if alone%15 == 0 { // every 30 s: a firewall, or GOSSIP_PORT differing between nodes?
					log.Warnf("overlay: no other node answers on the gossip port %d (TCP and UDP must be open between nodes)", t.Cfg.GossipPort)
				} else {
					log.Debug("overlay: no gossip seed answered yet")
				}
			} else if n > 0 {
				alone = 0
				logrus.WithField("contacted", n).Info("overlay: joined the control plane")
			}
		case tick%15 == 0:
			t.recheckRules()
			// Heal partitions: memberlist never calls back members it
			// declared dead, so known nodes that are not members are tried
			// again now and then.
			var missing []string
			for _, s := range seeds {
				if !slices.Contains(members, s) {
					missing = append(missing, s)
				}
			}
			if len(missing) > 0 {
				if n, err := c.Join(missing); err == nil && n > 0 {
					logrus.WithField("contacted", n).Info("overlay: reconnected gossip peers")
				}
			}
		}
		select {
		case <-stop:
			return
		case <-time.After(joinWait):
		}
	}
}

// recheckRules puts back the overlay's iptables rules if something (a
// firewall reload) removed them.
func (t *Type) recheckRules() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.nets) == 0 || t.Rules == nil {
		return
	}
	guard := t.tun != nil
	if err := t.Rules.Ensure(t.Cfg.VXLANPort, wgName, tunnelPrefix, guard); err != nil {
		logrus.WithError(err).Warn("overlay: re-checking the iptables rules failed")
	}
}

// onChange reprograms every local network from the gossip view.
func (t *Type) onChange() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.cluster == nil {
		return
	}
	t.joined = t.joined || len(t.cluster.Peers()) > 0
	if addrs := t.cluster.Addrs(); len(addrs) > 1 && strings.Join(addrs, ",") != t.savedPeers {
		t.savedPeers = strings.Join(addrs, ",")
		if err := t.St.Update(func(tx *store.Tx) error { return tx.Put(bucket, "peers", addrs) }); err != nil {
			logrus.WithError(err).Warn("overlay: cannot save gossip peers")
		}
	}
	if err := t.programAll(); err != nil {
		logrus.WithError(err).Warn("overlay: programming forwarding entries failed")
	}
}

// programAll updates tunnel peers and each network's entries.
func (t *Type) programAll() error {
	peers := t.cluster.Peers()
	var errs []error
	if t.tun != nil {
		var wps []WGPeer
		for _, p := range peers {
			k, err := wgtypes.ParseKey(p.WG)
			if err != nil {
				continue // this node has no encrypted network yet
			}
			wp := WGPeer{Key: k, Endpoint: netip.AddrPortFrom(p.Addr, uint16(t.Cfg.WGPort)), Tunnel: TunnelAddr(p.Addr)}
			// The peer's containers on the encrypted networks here: what it
			// may send from and what is sent to it.
			for _, e := range p.Entries {
				if n := t.nets[e.Network]; n != nil && isEnc(n) {
					if a, err := netip.ParseAddr(e.IP); err == nil && a.Is4() {
						wp.Allowed = append(wp.Allowed, netip.PrefixFrom(a, 32))
					}
				}
			}
			wps = append(wps, wp)
		}
		if err := t.tun.SetPeers(wps); err != nil {
			errs = append(errs, err)
		}
	}
	for _, n := range t.nets {
		if err := t.program(n, peers); err != nil {
			errs = append(errs, fmt.Errorf("network %.12s: %w", n.ID, err))
		}
	}
	return errors.Join(errs...)
}

// program makes the VXLAN device's FDB and neighbour entries exactly the
// remote endpoints of the network.
func (t *Type) program(n *api.Network, peers []gossip.Peer) error {
	if isEnc(n) {
		return programRouted(n, peers)
	}
	vx, err := netlink.LinkByName(n.State[stVXLAN])
	if err != nil {
		return fmt.Errorf("VXLAN device %s: %w", n.State[stVXLAN], err)
	}
	wantFDB := map[string]net.IP{} // MAC -> remote VTEP
	wantNeigh := map[string]string{}
	for _, p := range peers {
		dst := p.Addr
		if isEnc(n) {
			if p.WG == "" {
				continue // fail closed: no tunnel to this node, no entries
			}
			dst = TunnelAddr(p.Addr)
		}
		for _, e := range p.Entries {
			if e.Network != n.ID {
				continue
			}
			wantFDB[strings.ToLower(e.MAC)] = dst.AsSlice()
			wantNeigh[e.IP] = strings.ToLower(e.MAC)
		}
	}
	var errs []error
	fdb, err := netlink.NeighList(vx.Attrs().Index, unix.AF_BRIDGE)
	if err != nil {
		return fmt.Errorf("list FDB of %s: %w", n.State[stVXLAN], err)
	}
	for _, f := range fdb {
		if f.IP == nil || f.Flags&netlink.NTF_SELF == 0 {
			continue
		}
		mac := f.HardwareAddr.String()
		if d, ok := wantFDB[mac]; ok && d.Equal(f.IP) {
			delete(wantFDB, mac)
			continue
		}
		_ = netlink.NeighDel(&f)
	}
	for mac, dst := range wantFDB {
		hw, _ := net.ParseMAC(mac)
		if err := netlink.NeighSet(&netlink.Neigh{LinkIndex: vx.Attrs().Index, Family: unix.AF_BRIDGE, Flags: netlink.NTF_SELF,
			State: netlink.NUD_PERMANENT, IP: dst, HardwareAddr: hw}); err != nil {
			errs = append(errs, fmt.Errorf("FDB %s -> %s: %w", mac, dst, err))
		}
	}
	for _, fam := range []int{unix.AF_INET, unix.AF_INET6} {
		ns, err := netlink.NeighList(vx.Attrs().Index, fam)
		if err != nil {
			return fmt.Errorf("list neighbours of %s: %w", n.State[stVXLAN], err)
		}
		for _, x := range ns {
			ip, _ := netip.AddrFromSlice(x.IP)
			if m, ok := wantNeigh[ip.Unmap().String()]; ok && m == x.HardwareAddr.String() && x.State == netlink.NUD_PERMANENT {
				delete(wantNeigh, ip.Unmap().String())
				continue
			}
			_ = netlink.NeighDel(&x)
		}
	}
	for ipS, mac := range wantNeigh {
		ip, err := netip.ParseAddr(ipS)
		if err != nil {
			continue
		}
		hw, _ := net.ParseMAC(mac)
		fam := unix.AF_INET
		if ip.Is6() {
			fam = unix.AF_INET6
		}
		if err := netlink.NeighSet(&netlink.Neigh{LinkIndex: vx.Attrs().Index, Family: fam, State: netlink.NUD_PERMANENT,
			IP: ip.AsSlice(), HardwareAddr: hw}); err != nil {
			errs = append(errs, fmt.Errorf("neighbour %s -> %s: %w", ipS, mac, err))
		}
	}
	return errors.Join(errs...)
}

// ensureTunnel opens the node's WireGuard device for encrypted networks
// and announces its public key.
func (t *Type) ensureTunnel() error {
	if t.tun != nil {
		return nil
	}
	k, err := LoadOrCreateKey(t.Cfg.KeyFile)
	if err != nil {
		return err
	}
	psk := DerivePSK(t.key)
	mtu := underlayMTU(t.self) - overhead(t.self, true)
	tun, err := OpenTunnel(WGConfig{Name: wgName, Port: t.Cfg.WGPort, MTU: mtu, Key: k, PSK: &psk, Addr: TunnelAddr(t.self), Force: t.Cfg.WGBackend})
	if err != nil {
		return fmt.Errorf("-o encrypted: %w", err)
	}
	t.tun, t.wgKey = tun, k
	if err := t.Rules.Ensure(t.Cfg.VXLANPort, wgName, tunnelPrefix, true); err != nil {
		t.closeTunnel()
		return fmt.Errorf("-o encrypted: the guard against cleartext VXLAN: %w", err)
	}
	if err := t.cluster.SetWG(k.PublicKey().String()); err != nil {
		// The key is in this node's record already; the next push/pull spreads it.
		logrus.WithError(err).Warn("overlay: announcing the WireGuard key is slow; peers learn it at the next exchange")
	}
	logrus.WithFields(logrus.Fields{"backend": tun.Backend(), "device": wgName, "port": t.Cfg.WGPort, "address": TunnelAddr(t.self)}).Info("overlay: encryption tunnel up")
	return nil
}

func (t *Type) closeTunnel() {
	if t.tun == nil {
		return
	}
	_ = t.tun.Close()
	t.tun = nil
	RemoveBlackhole()
	if t.cluster != nil {
		_ = t.cluster.SetWG("")
	}
}

// ensureDevices creates or repairs the network's bridge and VXLAN device.
func (t *Type) ensureDevices(n *api.Network) error {
	if isEnc(n) {
		return ensureRouted(n)
	}
	brName, vxName := n.State[stBridge], n.State[stVXLAN]
	br, err := netlink.LinkByName(brName)
	if err != nil {
		if !netutil.IsNotFound(err) {
			return fmt.Errorf("look up %s: %w", brName, err)
		}
		if err := netlink.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: brName, MTU: mtuOf(n), TxQLen: -1}}); err != nil {
			return fmt.Errorf("create bridge %s: %w", brName, err)
		}
		if br, err = netlink.LinkByName(brName); err != nil {
			return fmt.Errorf("look up %s: %w", brName, err)
		}
	}
	if err := netlink.LinkSetAlias(br, t.alias(n)); err != nil {
		return fmt.Errorf("label %s: %w", brName, err)
	}
	noLinkLocal(br)
	if err := netlink.LinkSetUp(br); err != nil {
		return fmt.Errorf("bring up %s: %w", brName, err)
	}
	vni, _ := strconv.Atoi(n.State[stVNI])
	var src net.IP
	if isEnc(n) {
		src = TunnelAddr(t.self).AsSlice()
	} else {
		src = t.self.AsSlice()
	}
	vx, err := netlink.LinkByName(vxName)
	if err == nil {
		if v, ok := vx.(*netlink.Vxlan); !ok || v.VxlanId != vni || !v.SrcAddr.Equal(src) || v.Port != t.Cfg.VXLANPort {
			// Wrong shape (e.g. this node's address changed): rebuild.
			_ = netlink.LinkDel(vx)
			err = netlink.LinkNotFoundError{}
		}
	}
	if err != nil {
		if !netutil.IsNotFound(err) {
			return fmt.Errorf("look up %s: %w", vxName, err)
		}
		// Learning off and proxy on: the control plane fills the FDB and
		// answers ARP for remote endpoints, nothing floods between hosts.
		v := &netlink.Vxlan{LinkAttrs: netlink.LinkAttrs{Name: vxName, MTU: mtuOf(n), MasterIndex: br.Attrs().Index, TxQLen: -1},
			VxlanId: vni, SrcAddr: src, Port: t.Cfg.VXLANPort, Learning: false, Proxy: true}
		if err := netlink.LinkAdd(v); err != nil {
			return fmt.Errorf("create VXLAN device %s (VNI %d, port %d): %w", vxName, vni, t.Cfg.VXLANPort, err)
		}
		if vx, err = netlink.LinkByName(vxName); err != nil {
			return fmt.Errorf("look up %s: %w", vxName, err)
		}
	}
	if vx.Attrs().MasterIndex != br.Attrs().Index {
		if err := netlink.LinkSetMasterByIndex(vx, br.Attrs().Index); err != nil {
			return fmt.Errorf("attach %s to %s: %w", vxName, brName, err)
		}
	}
	if err := netlink.LinkSetAlias(vx, t.alias(n)); err != nil {
		return fmt.Errorf("label %s: %w", vxName, err)
	}
	noLinkLocal(vx)
	if err := netlink.LinkSetUp(vx); err != nil {
		return fmt.Errorf("bring up %s: %w", vxName, err)
	}
	return nil
}

// noLinkLocal keeps the host off the overlay: without it the kernel gives
// the bridge and its ports IPv6 link-local addresses on the overlay's L2.
func noLinkLocal(l netlink.Link) {
	_ = netlink.LinkSetIP6AddrGenMode(l, 1) // IN6_ADDR_GEN_MODE_NONE; fails harmlessly without IPv6
}

// prepare starts what a network on this node needs: control plane,
// tunnel (encrypted), devices, and the rules.
func (t *Type) prepare(n *api.Network) error {
	key, err := t.networkKey(n.Options)
	if err != nil {
		return err
	}
	if len(t.Cfg.ClusterKey) == 0 && t.cluster == nil {
		if err := t.adoptKey(n.Options[OptKey]); err != nil {
			return err
		}
	}
	if t.cluster != nil && string(key) != string(t.key) {
		return fmt.Errorf("network %.12s carries a different cluster key than the other overlay networks on this node; were they created by different swarms?", n.ID)
	}
	if err := t.ensureCluster(key, strings.Split(n.Options[OptSeeds], ",")); err != nil {
		return err
	}
	if isEnc(n) {
		if err := t.ensureTunnel(); err != nil {
			return err
		}
	} else if err := t.Rules.Ensure(t.Cfg.VXLANPort, wgName, tunnelPrefix, false); err != nil {
		return err
	}
	return t.ensureDevices(n)
}

// CreateNetwork implements api.NetworkType.
func (t *Type) CreateNetwork(n *api.Network, others []*api.Network) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.init()
	if err := t.prepare(n); err != nil {
		t.teardown(n, others)
		return err
	}
	t.nets[n.ID] = n
	if err := t.program(n, t.cluster.Peers()); err != nil {
		logrus.WithField("network", n.ID[:min(12, len(n.ID))]).WithError(err).Warn("overlay: some forwarding entries failed; retried at the next change")
	}
	logrus.WithFields(logrus.Fields{"network": n.ID[:min(12, len(n.ID))], "vni": n.State[stVNI], "mtu": n.State[stMTU], "encrypted": isEnc(n)}).Info("overlay network ready")
	return nil
}

// teardown removes a network's devices, and the tunnel and rules when no
// network needs them any more.
func (t *Type) teardown(n *api.Network, others []*api.Network) {
	delete(t.nets, n.ID)
	// Judged by every stored network (others), not only those set up here:
	// one whose reconcile failed still needs the tunnel and rules.
	anyEnc, anyOverlay := false, false
	for _, o := range append(others, mapValues(t.nets)...) {
		if o.ID == n.ID || o.Type != "overlay" && o.State[stVNI] == "" {
			continue
		}
		anyOverlay = true
		anyEnc = anyEnc || isEnc(o)
	}
	if isEnc(n) {
		removeRouted(n, !anyEnc)
	} else {
		_ = netutil.DeleteLink(n.State[stVXLAN])
		_ = netutil.DeleteLink(n.State[stBridge])
	}
	if !anyEnc {
		t.closeTunnel()
	}
	if !anyOverlay && t.Rules != nil {
		if err := t.Rules.Remove(); err != nil {
			logrus.WithError(err).Warn("overlay: removing rules failed")
		}
	}
}

func mapValues(m map[string]*api.Network) []*api.Network {
	out := make([]*api.Network, 0, len(m))
	for _, n := range m {
		out = append(out, n)
	}
	return out
}

// DeleteNetwork implements api.NetworkType.
func (t *Type) DeleteNetwork(n *api.Network, others []*api.Network) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.init()
	for id, e := range t.local {
		if e.Network == n.ID {
			delete(t.local, id)
		}
	}
	t.publish()
	t.teardown(n, others)
	return nil
}

func (t *Type) publish() {
	if t.cluster == nil {
		return
	}
	es := make([]gossip.Entry, 0, len(t.local))
	for _, e := range t.local {
		es = append(es, e)
	}
	sort.Slice(es, func(i, j int) bool { return es[i].IP < es[j].IP })
	t.cluster.SetEntries(es)
}

func vethNames(epID string) (host, cont string) {
	id := epID[:min(11, len(epID))]
	return "wfoh" + id, "wfoc" + id
}

// CreateEndpoint implements api.NetworkType.
func (t *Type) CreateEndpoint(n *api.Network, ep *api.Endpoint) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.init()
	host, cont := vethNames(ep.ID)
	master := 0
	if !isEnc(n) {
		br, err := netlink.LinkByName(n.State[stBridge])
		if err != nil {
			return fmt.Errorf("bridge %s of network %.12s is missing: %w", n.State[stBridge], n.ID, err)
		}
		master = br.Attrs().Index
	}
	mac, err := net.ParseMAC(ep.MAC)
	if err != nil {
		return fmt.Errorf("MAC address %q: %w", ep.MAC, err)
	}
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: host, MTU: mtuOf(n), TxQLen: -1, MasterIndex: master},
		PeerName: cont, PeerHardwareAddr: mac, PeerMTU: uint32(mtuOf(n))}
	if err := netlink.LinkAdd(veth); err != nil {
		return fmt.Errorf("create veth pair %s/%s: %w", host, cont, err)
	}
	hl, err := netlink.LinkByName(host)
	if err == nil {
		err = netlink.LinkSetAlias(hl, t.epAlias(ep))
		noLinkLocal(hl)
	}
	if err == nil {
		err = netlink.LinkSetUp(hl)
	}
	if err == nil && isEnc(n) {
		err = plugRouted(n, ep, hl)
	}
	if err != nil {
		unplugRouted(host)
		_ = netutil.DeleteLink(host)
		return fmt.Errorf("set up %s: %w", host, err)
	}
	ep.HostIf, ep.ContIf = host, cont
	t.addLocal(ep)
	t.publish()
	return nil
}

func (t *Type) addLocal(ep *api.Endpoint) {
	if ep.Addr4.IsValid() {
		t.local[ep.ID] = gossip.Entry{Network: ep.NetworkID, IP: ep.Addr4.Addr().String(), MAC: strings.ToLower(ep.MAC)}
	}
	if ep.Addr6.IsValid() {
		t.local[ep.ID+"/6"] = gossip.Entry{Network: ep.NetworkID, IP: ep.Addr6.Addr().String(), MAC: strings.ToLower(ep.MAC)}
	}
}

// DeleteEndpoint implements api.NetworkType.
func (t *Type) DeleteEndpoint(_ *api.Network, ep *api.Endpoint) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.init()
	delete(t.local, ep.ID)
	delete(t.local, ep.ID+"/6")
	t.publish()
	host, _ := vethNames(ep.ID)
	unplugRouted(host)
	if err := netutil.DeleteLink(host); err != nil {
		return fmt.Errorf("remove veth: %w", err)
	}
	return nil
}

// Join implements api.NetworkType. No gateway: Docker then gives the
// container egress through docker_gwbridge, as with its own overlay.
func (t *Type) Join(n *api.Network, ep *api.Endpoint) (*api.JoinInfo, error) {
	_, cont := vethNames(ep.ID)
	if _, err := netlink.LinkByName(cont); err != nil {
		return nil, fmt.Errorf("container interface %s of endpoint %.12s is missing: %w", cont, ep.ID, err)
	}
	return &api.JoinInfo{SrcName: cont, DstPrefix: "eth"}, nil
}

// Leave implements api.NetworkType.
func (t *Type) Leave(*api.Network, *api.Endpoint) error { return nil }

// Reconcile implements api.NetworkType: after a restart the devices,
// tunnel and entries are rebuilt from the store and the gossip.
func (t *Type) Reconcile(n *api.Network, eps []*api.Endpoint) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.init()
	if err := t.prepare(n); err != nil {
		return err
	}
	t.nets[n.ID] = n
	var br netlink.Link
	if !isEnc(n) {
		var err error
		if br, err = netlink.LinkByName(n.State[stBridge]); err != nil {
			return err
		}
	}
	var errs []error
	for _, ep := range eps {
		t.addLocal(ep)
		host, _ := vethNames(ep.ID)
		l, err := netlink.LinkByName(host)
		if err != nil {
			continue // its container is gone; Docker deletes the endpoint
		}
		if br != nil && l.Attrs().MasterIndex != br.Attrs().Index {
			_ = netlink.LinkSetMasterByIndex(l, br.Attrs().Index)
		}
		_ = netlink.LinkSetUp(l)
		if isEnc(n) {
			if err := plugRouted(n, ep, l); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	t.publish()
	if !t.joined {
		// Just started: an empty view would wipe the entries the kernel
		// still has from before; the first gossip change programs them.
		return nil
	}
	return t.program(n, t.cluster.Peers())
}

// Firewall implements api.NetworkType: the overlay's rules are its own (Rules).
func (t *Type) Firewall(*api.Network, []*api.Endpoint) *firewall.Network { return nil }

// Describe implements api.Describer.
func (t *Type) Describe(n *api.Network, _ *api.Endpoint) map[string]string {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := map[string]string{"weft.overlay.vni": n.State[stVNI], "weft.overlay.mtu": n.State[stMTU]}
	if isEnc(n) {
		out["weft.overlay.encryption"] = "none: tunnel down"
		if t.tun != nil {
			out["weft.overlay.encryption"] = t.tun.Backend()
		}
	} else {
		out["weft.overlay.encryption"] = "none"
	}
	if t.cluster != nil {
		out["weft.overlay.peers"] = strconv.Itoa(len(t.cluster.Peers()))
	}
	return out
}

// Resume starts the control plane at plugin start on a manager that has
// allocated overlay networks, even with none of their tasks here: every
// network's seeds name it.
func (t *Type) Resume() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.init()
	if t.cluster != nil {
		return
	}
	allocated := false
	_ = t.St.View(func(tx *store.Tx) error {
		allocated = tx.Count(bucket, "vni/") > 0
		return nil
	})
	var stored string
	if ok, _ := get(t.St, "key", &stored); !allocated || (!ok && len(t.Cfg.ClusterKey) == 0) {
		return
	}
	key, err := t.clusterKey()
	if err == nil {
		err = t.ensureCluster(key, nil)
	}
	if err != nil {
		logrus.WithError(err).Warn("overlay: cannot restart the control plane on this manager; it starts with the next overlay network")
	}
}

// Shutdown leaves the control plane (plugin stop). Devices stay: containers
// keep their addresses while weft is away; a userspace tunnel goes with the
// process, and the blackhole route keeps encrypted traffic from leaking.
func (t *Type) Shutdown() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.cluster != nil {
		close(t.stop)
		// No polite leave: peers keep this node's entries through a quick
		// restart instead of dropping them and re-learning them.
		t.cluster.Shutdown(false)
		t.cluster = nil
	}
}
