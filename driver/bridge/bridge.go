// Package bridge is weft's bridge network type: one Linux bridge per network
// holding the gateway addresses, one veth pair per endpoint, and iptables
// rules for NAT, isolation and published ports. It accepts the option names
// of Docker's built-in bridge driver.
package bridge

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/sirupsen/logrus"
	"github.com/vishvananda/netlink"

	"github.com/weft-net/weft/driver/api"
	"github.com/weft-net/weft/firewall"
	"github.com/weft-net/weft/netutil"
)

// Option names, Docker's where Docker has one.
const (
	OptName        = "com.docker.network.bridge.name"
	OptICC         = "com.docker.network.bridge.enable_icc"
	OptMasquerade  = "com.docker.network.bridge.enable_ip_masquerade"
	OptHostBinding = "com.docker.network.bridge.host_binding_ipv4"
	OptMTU         = "com.docker.network.driver.mtu"
	OptIfPrefix    = "com.docker.network.container_iface_prefix"
	OptMTUShort    = "mtu" // weft's short alias
	// Docker 28+.
	OptGwMode4 = "com.docker.network.bridge.gateway_mode_ipv4"
	OptGwMode6 = "com.docker.network.bridge.gateway_mode_ipv6"
	OptTrusted = "com.docker.network.bridge.trusted_host_interfaces"
	OptHostIP4 = "com.docker.network.host_ipv4"
)

// Gateway modes (com.docker.network.bridge.gateway_mode_ipv4/6).
const (
	GwNAT      = "nat"
	GwRouted   = "routed"
	GwIsolated = "isolated"
	gwNATUnpr  = "nat-unprotected"
)

// State keys persisted in api.Network.State.
const (
	stBridge  = "bridge"
	stMTU     = "mtu"
	stICC     = "icc"
	stMasq    = "masquerade"
	stHostIP  = "host_binding_ipv4"
	stIfPfx   = "iface_prefix"
	stGwMode4 = "gateway_mode_ipv4"
	stGwMode6 = "gateway_mode_ipv6"
	stTrusted = "trusted_host_interfaces" // colon-separated, as in the option
	stSNAT4   = "host_ipv4"
	defaultMT = 1500
)

// Type implements api.NetworkType for bridges.
type Type struct {
	// Scope is the label of the plugin instance (scope and store ID) that
	// goes into the labels of the links this type creates.
	Scope string
	// NoLoopbackGuard: no firewall rules are installed (IPTABLES_BACKEND=none),
	// so none drops a container's packets to the host's 127.0.0.0/8.
	// route_localnet then stays off, and ports cannot be published on a
	// loopback address.
	NoLoopbackGuard bool
}

// Name implements api.NetworkType.
func (t *Type) Name() string { return "bridge" }

// Options implements api.NetworkType.
func (t *Type) Options() []string {
	return []string{OptName, OptICC, OptMasquerade, OptHostBinding, OptMTU, OptMTUShort, OptIfPrefix,
		OptGwMode4, OptGwMode6, OptTrusted, OptHostIP4}
}

// GatewayMode is the network's gateway mode for IPv4 (v6 false) or IPv6:
// "" (weft's default: NAT for IPv4; for IPv6 routed egress with nothing
// opened inward), nat, routed or isolated.
func GatewayMode(n *api.Network, v6 bool) string {
	if v6 {
		return n.State[stGwMode6]
	}
	return n.State[stGwMode4]
}

// gatewayModes parses the gateway_mode options. Docker's nat-unprotected,
// and NAT for IPv6, are refused by name: weft has no such rules (yet).
func gatewayModes(o map[string]string, internal bool) (m4, m6 string, err error) {
	for _, f := range []struct {
		key string
		dst *string
		v6  bool
	}{{OptGwMode4, &m4, false}, {OptGwMode6, &m6, true}} {
		v, ok := o[f.key]
		if !ok || v == "" {
			continue
		}
		switch {
		case v == GwRouted || v == GwIsolated || (v == GwNAT && !f.v6):
		case v == gwNATUnpr:
			return "", "", fmt.Errorf("option %s=%s is Docker bridge's; weft does not support it yet: weft always filters direct access to containers' unpublished ports; use %s (the default) or %s", f.key, v, GwNAT, GwRouted)
		case v == GwNAT && f.v6:
			return "", "", fmt.Errorf("option %s=%s is Docker bridge's; weft does not support it yet: weft routes IPv6 and does not NAT it; use %s (published ports are opened on the container's IPv6 address) or leave the option out", f.key, v, GwRouted)
		default:
			want := "nat, routed or isolated"
			if f.v6 {
				want = "routed or isolated"
			}
			return "", "", fmt.Errorf("option %s=%q: want %s", f.key, v, want)
		}
		if v == GwIsolated && !internal {
			return "", "", fmt.Errorf("option %s=isolated: gateway mode isolated (no gateway address on the bridge) can only be used for an --internal network", f.key)
		}
		*f.dst = v
	}
	return m4, m6, nil
}

// SkipGateway implements api.GatewaySkipper: an isolated family has no
// gateway address on the bridge, so Docker 28+ need not reserve one.
func (t *Type) SkipGateway(opts map[string]string, internal bool) (v4, v6 bool, err error) {
	m4, m6, err := gatewayModes(opts, internal)
	return m4 == GwIsolated, m6 == GwIsolated, err
}

// HostSideShaping implements api.HostShaper: rate limits go on the host veth.
func (t *Type) HostSideShaping() bool { return true }

// BridgeName is the bridge of a validated network.
func BridgeName(n *api.Network) string { return n.State[stBridge] }

// HostBinding is the default host IP for published ports ("" = all).
func HostBinding(n *api.Network) string { return n.State[stHostIP] }

func (t *Type) alias(n *api.Network) string { return api.AliasPrefix + t.Scope + ":" + n.ID }

func (t *Type) epAlias(ep *api.Endpoint) string {
	return api.AliasPrefix + t.Scope + ":" + ep.NetworkID + ":" + ep.ID
}

// Validate implements api.NetworkType.
func (t *Type) Validate(n *api.Network, existing []*api.Network) error {
	o := n.Options
	st := map[string]string{}
	name := o[OptName]
	if name == "" {
		name = "weft-" + n.ID[:min(10, len(n.ID))]
	} else if err := api.IfName(OptName, name); err != nil {
		return err
	} else if name == "docker0" || name == "docker_gwbridge" {
		return fmt.Errorf("option %s=%s: %s is the name of Docker's own bridge; weft does not take it over: choose another bridge name", OptName, name, name)
	} else if api.WeftStyleName(name) {
		return fmt.Errorf("option %s=%s: names starting with %s are reserved for the interfaces weft creates; choose another bridge name", OptName, name, strings.Join(api.LinkPrefixes, ", "))
	}
	for _, e := range existing {
		if e.State[stBridge] == name {
			return fmt.Errorf("option %s=%s: bridge %s is already used by weft network %.12s; choose another name", OptName, name, name, e.ID)
		}
	}
	if _, err := netlink.LinkByName(name); err == nil {
		return fmt.Errorf("option %s=%s: an interface named %s already exists on the host; weft does not take over a device it did not create: choose another bridge name", OptName, name, name)
	}
	st[stBridge] = name
	mtu, err := api.MTU(o, OptMTU, OptMTUShort)
	if err != nil {
		return err
	}
	if mtu == 0 {
		mtu = defaultMT
	}
	st[stMTU] = strconv.Itoa(mtu)
	icc, err := api.Bool(o, OptICC, true)
	if err != nil {
		return err
	}
	masq, err := api.Bool(o, OptMasquerade, true)
	if err != nil {
		return err
	}
	st[stICC] = strconv.FormatBool(icc)
	st[stMasq] = strconv.FormatBool(masq)
	if h := o[OptHostBinding]; h != "" {
		a, err := netip.ParseAddr(h)
		if err != nil || !a.Is4() {
			return fmt.Errorf("option %s=%q: want an IPv4 address of this host, e.g. 127.0.0.1", OptHostBinding, h)
		}
		if a.IsLoopback() && t.NoLoopbackGuard {
			return fmt.Errorf("option %s=%s: weft runs with IPTABLES_BACKEND=none, which installs no rule keeping containers off the host's loopback, so ports cannot be published on 127.0.0.0/8; use another address of this host, or set IPTABLES_BACKEND=auto", OptHostBinding, h)
		}
		st[stHostIP] = a.String()
	}
	if st[stGwMode4], st[stGwMode6], err = gatewayModes(o, n.Internal); err != nil {
		return err
	}
	if h, ok := o[OptHostIP4]; ok {
		a, err := netip.ParseAddr(h)
		if err != nil || !a.Is4() {
			return fmt.Errorf("option %s=%q: want an IPv4 address of this host, the source address of the network's outgoing IPv4 traffic", OptHostIP4, h)
		}
		if !masq || st[stGwMode4] == GwRouted {
			return fmt.Errorf("option %s=%s sets the source address of IPv4 NAT, and this network has none (%s=false or %s=routed); remove one of them", OptHostIP4, h, OptMasquerade, OptGwMode4)
		}
		st[stSNAT4] = a.String()
	}
	if v, ok := o[OptTrusted]; ok {
		// Docker's separator: interface names cannot hold ':'.
		var names []string
		for _, name := range strings.FieldsFunc(v, func(r rune) bool { return r == ':' }) {
			if err := api.IfName(OptTrusted, name); err != nil {
				return fmt.Errorf("%w (the option is a ':'-separated list of host interfaces)", err)
			}
			names = append(names, name)
		}
		st[stTrusted] = strings.Join(names, ":")
	}
	if p := o[OptIfPrefix]; p != "" {
		if err := api.IfName(OptIfPrefix, p+"0"); err != nil || len(p) > 12 {
			return fmt.Errorf("option %s=%q: a prefix of 1 to 12 letters, digits, '_', '.' or '-'", OptIfPrefix, p)
		}
		st[stIfPfx] = p
	}
	if len(n.Pools) == 0 {
		return errors.New("the network has no subnet: give --subnet or use an IPAM driver that assigns one")
	}
	if n.NoIPv4 {
		if h := o[OptHostBinding]; h != "" {
			return fmt.Errorf("option %s=%s: this network has no IPv4 (--ipv4=false), so ports cannot be published on an IPv4 host address; remove the option", OptHostBinding, h)
		}
		if _, ok := o[OptHostIP4]; ok {
			return fmt.Errorf("option %s: this network has no IPv4 (--ipv4=false) and so no IPv4 NAT; remove the option", OptHostIP4)
		}
	}
	n.State = st
	return nil
}

func mtuOf(n *api.Network) int {
	m, _ := strconv.Atoi(n.State[stMTU])
	if m == 0 {
		return defaultMT
	}
	return m
}

// CreateNetwork implements api.NetworkType.
func (t *Type) CreateNetwork(n *api.Network, _ []*api.Network) (err error) {
	name := BridgeName(n)
	if _, err := netlink.LinkByName(name); err == nil {
		return fmt.Errorf("option %s: an interface named %s already exists on the host; choose another bridge name", OptName, name)
	}
	success := false
	defer func() {
		if !success {
			_ = netutil.DeleteLink(name)
		}
	}()
	if err := t.ensureBridge(n); err != nil {
		return err
	}
	success = true
	return nil
}

// ensureBridge creates or repairs the bridge: name, MTU, alias, addresses, up.
func (t *Type) ensureBridge(n *api.Network) error {
	name := BridgeName(n)
	log := logrus.WithFields(logrus.Fields{"network": n.ID[:min(12, len(n.ID))], "bridge": name})
	l, err := netlink.LinkByName(name)
	created := false
	if err != nil {
		if !netutil.IsNotFound(err) {
			return fmt.Errorf("look up bridge %s: %w", name, err)
		}
		created = true
		br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name, MTU: mtuOf(n), TxQLen: -1}}
		if err := netlink.LinkAdd(br); err != nil {
			return fmt.Errorf("create bridge %s: %w", name, err)
		}
		log.Info("created bridge")
		if l, err = netlink.LinkByName(name); err != nil {
			return fmt.Errorf("look up new bridge %s: %w", name, err)
		}
	}
	if _, ok := l.(*netlink.Bridge); !ok {
		return fmt.Errorf("%s exists but is a %s, not a bridge", name, l.Type())
	}
	if a := l.Attrs().Alias; !created && !api.LabelledFor(a, n.ID) {
		// Someone else's device under this name: never adopt it.
		return fmt.Errorf("bridge %s of network %.12s: a device named %s exists without weft's label (alias %q); weft does not take over a device it did not create: rename or delete it, then restart the plugin", name, n.ID, name, a)
	}
	if l.Attrs().Alias != t.alias(n) {
		if err := netlink.LinkSetAlias(l, t.alias(n)); err != nil {
			return fmt.Errorf("label bridge %s: %w", name, err)
		}
	}
	if l.Attrs().MTU != mtuOf(n) {
		if err := netlink.LinkSetMTU(l, mtuOf(n)); err != nil {
			return fmt.Errorf("set MTU %d on bridge %s: %w", mtuOf(n), name, err)
		}
	}
	if n.IPv6 {
		// New links inherit net.ipv6.conf.default.disable_ipv6, which a
		// managed plugin cannot change (/proc/sys is read-only there).
		if b, err := os.ReadFile(filepath.Join(netutil.ProcSys, "net/ipv6/conf", name, "disable_ipv6")); err == nil && strings.TrimSpace(string(b)) == "1" {
			return fmt.Errorf("--ipv6: IPv6 is disabled on this host for new interfaces (net.ipv6.conf.default.disable_ipv6=1); set it to 0 with sysctl, or create the network without --ipv6")
		}
	}
	for _, gw := range n.Gateways {
		if GatewayMode(n, gw.Addr().Is6()) == GwIsolated {
			// Isolated: the host has no address on the network. Docker
			// before 28 reserves a gateway anyway; it stays unused.
			continue
		}
		// nodad: the gateway must answer at once, not after duplicate detection.
		a := netutil.AddrOf(gw)
		if gw.Addr().Is6() {
			a.Flags = 0x02 // IFA_F_NODAD
		}
		if err := netlink.AddrReplace(l, a); err != nil {
			return fmt.Errorf("add gateway %s to bridge %s: %w", gw, name, err)
		}
	}
	// Before the bridge is up: Router Advertisements a container sends
	// must not change the host's routes or addresses.
	if err := netutil.RefuseRouterAdvertisements(name); err != nil {
		return fmt.Errorf("bridge %s: %w", name, err)
	}
	if t.NoLoopbackGuard {
		// No rule drops containers' packets to 127.0.0.0/8: keep the
		// kernel's own wall (route_localnet off), also on a bridge that had it on.
		if err := netutil.SetIPv4DevConf(l, netutil.IPv4DevConfRouteLocalnet, 0); err != nil {
			return fmt.Errorf("bridge %s: turn off route_localnet: %w", name, err)
		}
	}
	if err := netlink.LinkSetUp(l); err != nil {
		return fmt.Errorf("bring up bridge %s: %w", name, err)
	}
	// Published ports reached through 127.0.0.1 are routed to the bridge
	// (the firewall drops containers' packets to 127.0.0.0/8).
	if !t.NoLoopbackGuard {
		if err := netutil.SetIPv4DevConf(l, netutil.IPv4DevConfRouteLocalnet, 1); err != nil {
			log.WithError(err).Warn("cannot enable route_localnet: published ports will not answer on 127.0.0.1")
		}
	}
	return nil
}

// DeleteNetwork implements api.NetworkType.
func (t *Type) DeleteNetwork(n *api.Network, _ []*api.Network) error {
	name := BridgeName(n)
	l, err := netlink.LinkByName(name)
	if err != nil {
		if netutil.IsNotFound(err) {
			return nil
		}
		return fmt.Errorf("remove bridge: look up %s: %w", name, err)
	}
	if !api.LabelledFor(l.Attrs().Alias, n.ID) {
		// Not weft's (someone made a device under the name since): leave it.
		logrus.WithFields(logrus.Fields{"network": n.ID[:min(12, len(n.ID))], "bridge": name}).Warn("not deleting a device without weft's label: weft did not create it")
		return nil
	}
	if err := netlink.LinkDel(l); err != nil {
		return fmt.Errorf("remove bridge: delete %s: %w", name, err)
	}
	return nil
}

func vethNames(epID string) (host, cont string) {
	id := epID[:min(12, len(epID))]
	return "wfh" + id, "wfc" + id
}

// CreateEndpoint implements api.NetworkType.
func (t *Type) CreateEndpoint(n *api.Network, ep *api.Endpoint) error {
	host, cont := vethNames(ep.ID)
	br, err := netlink.LinkByName(BridgeName(n))
	if err != nil {
		return fmt.Errorf("bridge %s of network %.12s is missing: %w", BridgeName(n), n.ID, err)
	}
	mac, err := net.ParseMAC(ep.MAC)
	if err != nil {
		return fmt.Errorf("MAC address %q: %w", ep.MAC, err)
	}
	veth := &netlink.Veth{
		LinkAttrs:        netlink.LinkAttrs{Name: host, MTU: mtuOf(n), TxQLen: -1, MasterIndex: br.Attrs().Index},
		PeerName:         cont,
		PeerHardwareAddr: mac,
		PeerMTU:          uint32(mtuOf(n)),
	}
	if err := netlink.LinkAdd(veth); err != nil {
		return fmt.Errorf("create veth pair %s/%s: %w", host, cont, err)
	}
	success := false
	defer func() {
		if !success {
			_ = netutil.DeleteLink(host)
		}
	}()
	hl, err := netlink.LinkByName(host)
	if err != nil {
		return fmt.Errorf("look up %s: %w", host, err)
	}
	if err := netlink.LinkSetAlias(hl, t.epAlias(ep)); err != nil {
		return fmt.Errorf("label %s: %w", host, err)
	}
	// A container reaching its own published port: after DNAT, br_netfilter
	// bridges the frame back out of the port it came in on.
	if err := netlink.LinkSetHairpin(hl, true); err != nil {
		return fmt.Errorf("enable hairpin on %s: %w", host, err)
	}
	if n.State[stICC] == "false" {
		// Bridged traffic between isolated ports is dropped by the bridge
		// itself, which works whether or not br_netfilter is loaded.
		if err := netlink.LinkSetIsolated(hl, true); err != nil {
			return fmt.Errorf("isolate port %s (enable_icc=false): %w", host, err)
		}
	}
	if err := netlink.LinkSetUp(hl); err != nil {
		return fmt.Errorf("bring up %s: %w", host, err)
	}
	ep.HostIf, ep.ContIf = host, cont
	success = true
	return nil
}

// DeleteEndpoint implements api.NetworkType.
func (t *Type) DeleteEndpoint(_ *api.Network, ep *api.Endpoint) error {
	host, _ := vethNames(ep.ID)
	if err := netutil.DeleteLink(host); err != nil {
		return fmt.Errorf("remove veth: %w", err)
	}
	return nil
}

// Join implements api.NetworkType.
func (t *Type) Join(n *api.Network, ep *api.Endpoint) (*api.JoinInfo, error) {
	_, cont := vethNames(ep.ID)
	if _, err := netlink.LinkByName(cont); err != nil {
		return nil, fmt.Errorf("container interface %s of endpoint %.12s is missing: %w", cont, ep.ID, err)
	}
	ji := &api.JoinInfo{SrcName: cont, DstPrefix: "eth"}
	if p := n.State[stIfPfx]; p != "" {
		ji.DstPrefix = p
	}
	ji.Gateway, ji.GatewayIPv6 = api.Gateways(n, ep)
	return ji, nil
}

// Leave implements api.NetworkType. Docker moves the interface back to the
// host and then deletes the endpoint, so nothing is needed here.
func (t *Type) Leave(*api.Network, *api.Endpoint) error { return nil }

// Reconcile implements api.NetworkType.
func (t *Type) Reconcile(n *api.Network, eps []*api.Endpoint) error {
	if err := t.ensureBridge(n); err != nil {
		return err
	}
	br, err := netlink.LinkByName(BridgeName(n))
	if err != nil {
		return fmt.Errorf("look up bridge: %w", err)
	}
	for _, ep := range eps {
		host, _ := vethNames(ep.ID)
		l, err := netlink.LinkByName(host)
		if err != nil {
			// Its container is gone (e.g. after a reboot); Docker deletes the endpoint.
			continue
		}
		if l.Attrs().MasterIndex != br.Attrs().Index {
			if err := netlink.LinkSetMasterByIndex(l, br.Attrs().Index); err != nil {
				return fmt.Errorf("attach %s to %s: %w", host, BridgeName(n), err)
			}
		}
		if err := netlink.LinkSetUp(l); err != nil {
			return fmt.Errorf("bring up %s: %w", host, err)
		}
	}
	return nil
}

// Firewall implements api.NetworkType.
func (t *Type) Firewall(n *api.Network, eps []*api.Endpoint) *firewall.Network {
	fn := &firewall.Network{
		ID:         n.ID,
		Bridge:     BridgeName(n),
		Subnets:    n.Pools,
		ICC:        n.State[stICC] != "false",
		Masquerade: n.State[stMasq] != "false",
		Internal:   n.Internal,
		Routed4:    GatewayMode(n, false) == GwRouted,
		Routed6:    GatewayMode(n, true) == GwRouted,
	}
	if a, err := netip.ParseAddr(n.State[stSNAT4]); err == nil {
		fn.SNAT4 = a
	}
	if v := n.State[stTrusted]; v != "" {
		fn.Trusted = strings.Split(v, ":")
	}
	for _, ep := range eps {
		for _, p := range ep.Ports {
			hip, _ := netip.ParseAddr(p.HostIP)
			// The container address the binding goes to (IPv6 only in
			// gateway_mode_ipv6=routed); records from before held IPv4.
			cip, err := netip.ParseAddr(p.IP)
			if err != nil {
				cip = ep.Addr4.Addr()
			}
			proto := "tcp"
			if p.Proto == 17 {
				proto = "udp"
			}
			fn.Ports = append(fn.Ports, firewall.PortMap{Proto: proto, HostIP: hip, HostPort: p.HostPort, ContainerIP: cip, ContainerPort: p.Port})
		}
	}
	return fn
}
