// Package driver is weft's NetworkDriver: it speaks Docker's remote driver
// protocol, persists every change before replying, keeps the firewall in
// step, and hands kernel work to the network type of each network.
package driver

import (
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/docker/go-plugins-helpers/network"
	"github.com/sirupsen/logrus"
	"github.com/vishvananda/netlink"

	"github.com/weft-net/weft/driver/api"
	"github.com/weft-net/weft/firewall"
	"github.com/weft-net/weft/netutil"
	"github.com/weft-net/weft/store"
	"github.com/weft-net/weft/tuning"
)

// Store buckets.
const (
	bucketNetworks  = "networks"
	bucketEndpoints = "endpoints"
)

// Keys Docker puts in CreateNetwork's Options.
const (
	optGeneric    = "com.docker.network.generic"
	optEnableIPv6 = "com.docker.network.enable_ipv6"
	optInternal   = "com.docker.network.internal"
	optType       = "type"
	optPortMap    = "com.docker.network.portmap"
	optExposed    = "com.docker.network.endpoint.exposedports"
	// optIfname (docker run --network name=N,driver-opt=KEY=NAME) is the
	// one com.docker key of CreateEndpoint weft keeps: Join answers it as
	// InterfaceName.DstName, which Engine 29.8+ honours. Older engines,
	// 20.10 among them, ignore DstName and name the interface from DstPrefix.
	optIfname = "com.docker.network.endpoint.ifname"
)

// Firewall is what the driver needs from the firewall package.
type Firewall interface {
	// Sync installs the rules for the networks; bridges are the host's
	// other bridges (hostBridges), which weft containers may not enter.
	Sync(nets []firewall.Network, bridges []string) error
	// Forget makes the next Sync re-read every rule from the kernel.
	Forget()
}

// Driver implements network.Driver.
type Driver struct {
	mu    sync.Mutex
	st    *store.Store
	fw    Firewall
	scope string // local or global: the capabilities Docker sees
	label string // scope + store instance: the link labels this plugin owns
	types map[string]api.NetworkType
	nets  map[string]*api.Network
	eps   map[string]*api.Endpoint // by endpoint ID
	ports *portReserver
	ready chan struct{}

	inside       tuning.Inside
	insideResult map[string]string // endpoint ID -> what was applied inside, or the error
	parentMap    map[string]string // PARENT_MAP: a network's parent name -> this node's interface

	// insideWait: endpoint ID -> the inside tuning Join prepared, until applied.
	insideWait map[string]*tuning.Pending

	fwCaps FirewallCaps

	// listBridges enumerates the host's bridges for the firewall (hostBridges).
	listBridges func() []string
}

// FirewallCaps says which rules the firewall can install on this host.
// The zero value: every family.
type FirewallCaps struct {
	// None: IPTABLES_BACKEND=none; no rules at all, for any family.
	None bool
	// NoIPv6: ip6tables does not work here, so IPv6 rules would be
	// skipped; Err6 says why.
	NoIPv6 bool
	Err6   error
}

// SetFirewallCaps tells the driver what the firewall can do here.
func (d *Driver) SetFirewallCaps(c FirewallCaps) { d.fwCaps = c }

// checkIPv6Rules refuses an IPv6 network that needs firewall rules when
// ip6tables does not work: it would exist without its IPv6 isolation.
// With IPTABLES_BACKEND=none no family has rules, by the user's choice.
func (d *Driver) checkIPv6Rules(n *api.Network, t api.NetworkType) error {
	if !n.IPv6 || d.fwCaps.None || !d.fwCaps.NoIPv6 || t.Firewall(n, nil) == nil {
		return nil
	}
	why := "it fails"
	if d.fwCaps.Err6 != nil {
		why = d.fwCaps.Err6.Error()
	}
	return fmt.Errorf("--ipv6: ip6tables does not work on this host (%s), so weft cannot install this network's IPv6 rules (isolation between networks, filtering of unpublished ports); make ip6tables work (e.g. load the ip6_tables or nf_tables kernel module) and restart the plugin (docker plugin disable, then enable), or create the network without --ipv6", why)
}

// SetParentMap sets this node's parent renames (setting PARENT_MAP): a
// swarm network names one parent for all nodes, whose NICs may differ.
func (d *Driver) SetParentMap(m map[string]string) { d.parentMap = m }

// ParseParentMap parses PARENT_MAP: NETWORK_PARENT=LOCAL_INTERFACE,...
func ParseParentMap(s string) (map[string]string, error) {
	out := map[string]string{}
	for _, kv := range strings.Split(s, ",") {
		if strings.TrimSpace(kv) == "" {
			continue
		}
		from, to, ok := strings.Cut(strings.TrimSpace(kv), "=")
		if !ok || api.IfName("PARENT_MAP", from) != nil || api.IfName("PARENT_MAP", to) != nil {
			return nil, fmt.Errorf("setting PARENT_MAP=%q: want NETWORK_PARENT=LOCAL_INTERFACE pairs, comma-separated, e.g. eth0=ens5", s)
		}
		out[from] = to
	}
	return out, nil
}

// mapParent applies the parent map to a network's options; a VLAN
// sub-interface (eth0.10) keeps its VLAN on the mapped interface.
func (d *Driver) mapParent(opts map[string]string) {
	p, ok := opts["parent"]
	if !ok || len(d.parentMap) == 0 {
		return
	}
	base, vlan, dotted := strings.Cut(p, ".")
	to, ok := d.parentMap[base]
	if !ok {
		return
	}
	if dotted {
		to += "." + vlan
	}
	logrus.WithFields(logrus.Fields{"parent": p, "on_this_node": to}).Info("parent renamed by PARENT_MAP")
	opts["parent"] = to
}

// SetInside configures how tuning reaches containers' namespaces.
func (d *Driver) SetInside(in tuning.Inside) { d.inside = in }

// New loads the stored state. label (Label(scope, store)) must be the one
// the types were given. Call Reconcile (in the background) once the socket
// is listening.
func New(st *store.Store, fw Firewall, scope, label string, types ...api.NetworkType) (*Driver, error) {
	d := &Driver{st: st, fw: fw, scope: scope, label: label, types: map[string]api.NetworkType{},
		nets: map[string]*api.Network{}, eps: map[string]*api.Endpoint{}, ports: newPortReserver(), ready: make(chan struct{}),
		inside: tuning.Inside{HostRoot: "", Timeout: 30 * time.Second}, insideResult: map[string]string{},
		listBridges: hostBridges}
	for _, t := range types {
		d.types[t.Name()] = t
	}
	err := st.View(func(tx *store.Tx) error {
		if err := tx.ForEach(bucketNetworks, "", func(_ string, raw []byte) error {
			var n api.Network
			if err := store.Decode(raw, &n); err != nil {
				return err
			}
			d.nets[n.ID] = &n
			return nil
		}); err != nil {
			return err
		}
		return tx.ForEach(bucketEndpoints, "", func(_ string, raw []byte) error {
			var ep api.Endpoint
			if err := store.Decode(raw, &ep); err != nil {
				return err
			}
			d.eps[ep.ID] = &ep
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("load state: %w", err)
	}
	return d, nil
}

// Counts reports stored networks and endpoints.
func (d *Driver) Counts() (int, int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.nets), len(d.eps)
}

// Reconcile brings the kernel in line with the store: re-creates bridges,
// addresses and rules of stored networks, re-reserves published ports, and
// removes weft links no stored network owns. Driver calls wait for it.
func (d *Driver) Reconcile() error {
	defer close(d.ready)
	d.mu.Lock()
	defer d.mu.Unlock()
	var errs []error
	for _, n := range d.sortedNets() {
		t, err := d.typeOf(n)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if err := t.Reconcile(n, d.endpointsOf(n.ID)); err != nil {
			errs = append(errs, fmt.Errorf("reconcile network %.12s: %w", n.ID, err))
		}
		for _, ep := range d.endpointsOf(n.ID) {
			ts, err := tuning.Parse(n.Options, ep.Options)
			if err != nil || !ts.Shaped() || !ep.Joined || !linkExists(ep.HostIf) {
				continue
			}
			// Rate limits live on host-side devices: put back what is missing.
			if err := tuning.Apply(tuning.Link{Host: ep.HostIf, IFB: "wfi" + short(ep.ID),
				Alias: api.AliasPrefix + d.label + ":" + ep.NetworkID + ":" + ep.ID, Cont: ep.HostIf},
				tuning.Settings{TxQueueLen: -1, RateEgress: ts.RateEgress, RateIngress: ts.RateIngress, Burst: ts.Burst, Latency: ts.Latency}); err != nil {
				errs = append(errs, fmt.Errorf("reconcile tuning of endpoint %.12s: %w", ep.ID, err))
			}
		}
	}
	for _, ep := range d.eps {
		if len(ep.Ports) == 0 {
			continue
		}
		if err := d.ports.reserve(ep.ID, ep.Ports); err != nil {
			logrus.WithField("endpoint", short(ep.ID)).WithError(err).Warn("cannot re-reserve published ports; they stay forwarded but another program may take them")
		}
	}
	d.removeLeftovers()
	if err := d.syncFirewall(); err != nil {
		errs = append(errs, err)
	}
	logrus.WithFields(logrus.Fields{"networks": len(d.nets), "endpoints": len(d.eps)}).Info("reconciled kernel state with the store")
	d.warnForgottenJoins()
	return errors.Join(errs...)
}

// warnForgottenJoins says, once at start, what Docker 29+ can no longer do
// for containers that joined before this plugin start: its remote-driver
// proxy keeps each endpoint's Join options in memory only
// (moby/moby#50283), so it cannot move their gateway to another network
// and never sends them RevokeExternalConnectivity. weft cannot replay that
// cache; their ports keep working and go when the endpoint is deleted.
func (d *Driver) warnForgottenJoins() {
	joined, withPorts := 0, 0
	for _, ep := range d.eps {
		if ep.Joined {
			joined++
			if len(ep.Ports) > 0 {
				withPorts++
			}
		}
	}
	if joined == 0 || d.scope != "local" {
		return
	}
	logrus.WithFields(logrus.Fields{"endpoints": joined, "with_published_ports": withPorts}).Warn(
		"containers joined before this plugin start: on Docker 29+ (moby/moby#50283) `docker network connect` of a network that becomes their gateway fails with \"remote network driver: endpoint ... not found\" until the container restarts; their connectivity and published ports keep working, and weft removes the ports when the container stops")
}

// removeLeftovers deletes links labelled as this instance's that no stored
// network or endpoint owns (e.g. after a crash in the middle of a call).
func (d *Driver) removeLeftovers() {
	links, err := netlink.LinkList()
	if err != nil {
		logrus.WithError(err).Warn("cannot list links to remove leftovers")
		return
	}
	prefix := api.AliasPrefix + d.label + ":"
	for _, l := range links {
		alias := l.Attrs().Alias
		if !strings.HasPrefix(alias, prefix) {
			continue
		}
		parts := strings.Split(strings.TrimPrefix(alias, prefix), ":")
		owned := false
		if _, ok := d.nets[parts[0]]; ok {
			owned = len(parts) == 1
			if len(parts) == 2 {
				_, owned = d.eps[parts[1]]
			}
		}
		if !owned {
			logrus.WithFields(logrus.Fields{"link": l.Attrs().Name, "alias": alias}).Info("removing leftover weft link")
			_ = netlink.LinkDel(l)
		}
	}
}

func (d *Driver) wait() { <-d.ready }

// typeOf returns a network's type, or an error for a type this build does
// not know (e.g. after a downgrade), instead of a nil interface.
func (d *Driver) typeOf(n *api.Network) (api.NetworkType, error) {
	t, ok := d.types[n.Type]
	if !ok {
		return nil, fmt.Errorf("network %.12s has type %q, which this version of weft does not support", n.ID, n.Type)
	}
	return t, nil
}

// Watch re-checks the firewall every interval until stop closes: a
// firewall script that flushes DOCKER-USER, or a reboot of Docker's
// rules, must not leave weft's networks unprotected for long. A bridge
// that appears or goes (netlink notification) re-syncs at once, so a new
// Docker, libvirt or CNI bridge is walled off from weft containers.
func (d *Driver) Watch(stop <-chan struct{}, interval time.Duration) {
	<-d.ready
	t := time.NewTicker(interval)
	defer t.Stop()
	bridges := bridgeEvents(stop)
	for {
		select {
		case <-stop:
			return
		case <-bridges:
			// Coalesce a burst (a bridge and its ports come together).
			time.Sleep(100 * time.Millisecond)
			select {
			case <-bridges:
			default:
			}
			d.mu.Lock()
			if err := d.syncFirewall(); err != nil {
				logrus.WithError(err).Warn("firewall update after a bridge change failed")
			}
			d.mu.Unlock()
		case <-t.C:
			d.mu.Lock()
			d.fw.Forget()
			if err := d.syncFirewall(); err != nil {
				logrus.WithError(err).Warn("firewall check failed")
			}
			d.mu.Unlock()
		}
	}
}

func (d *Driver) sortedNets() []*api.Network {
	out := make([]*api.Network, 0, len(d.nets))
	for _, n := range d.nets {
		out = append(out, n)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

func (d *Driver) endpointsOf(netID string) []*api.Endpoint {
	var out []*api.Endpoint
	for _, ep := range d.eps {
		if ep.NetworkID == netID {
			out = append(out, ep)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// syncFirewall renders every network's rules (with overrides applied) and syncs.
func (d *Driver) syncFirewall() error {
	var fns []firewall.Network
	for _, n := range d.sortedNets() {
		t := d.types[n.Type]
		if t == nil {
			continue
		}
		if fn := t.Firewall(n, d.endpointsOf(n.ID)); fn != nil {
			fns = append(fns, *fn)
		}
	}
	var bridges []string
	if len(fns) > 0 {
		bridges = d.listBridges()
	}
	if err := d.fw.Sync(fns, bridges); err != nil {
		return fmt.Errorf("update firewall: %w", err)
	}
	return nil
}

// Capabilities is the reply to GetCapabilities: the helpers' type plus
// GwAllocChecker (Docker 28+), which makes Docker call GwAllocCheck.
type Capabilities struct {
	Scope             string
	ConnectivityScope string
	GwAllocChecker    bool
}

// GetCapabilities answers NetworkDriver.GetCapabilities.
func (d *Driver) GetCapabilities() (*Capabilities, error) {
	return &Capabilities{Scope: d.scope, ConnectivityScope: d.scope, GwAllocChecker: true}, nil
}

// checkOptions finds the network type of -o options and checks the keys
// and tuning values.
func (d *Driver) checkOptions(opts map[string]string) (string, api.NetworkType, error) {
	typ := opts[optType]
	if typ == "" {
		typ = "bridge"
	}
	t, ok := d.types[typ]
	if !ok {
		names := make([]string, 0, len(d.types))
		for n := range d.types {
			names = append(names, n)
		}
		sort.Strings(names)
		if d.scope == "global" && opts[optType] == "" {
			return "", nil, fmt.Errorf("weft's swarm instance needs option type: one of %s (bridge networks are local: use the local weft instance)", strings.Join(names, ", "))
		}
		msg := fmt.Sprintf("option type=%s: unknown network type", typ)
		if s := api.Closest(typ, names); s != "" {
			msg += fmt.Sprintf(" (did you mean %q?)", s)
		}
		return "", nil, fmt.Errorf("%s; this weft instance (scope %s) supports: %s", msg, d.scope, strings.Join(names, ", "))
	}
	allowed := append(append(append([]string{optType}, t.Options()...), tuning.NetworkKeys()...), dockerKeys...)
	if err := d.checkDockerOptions(typ, opts, allowed); err != nil {
		return "", nil, err
	}
	if err := api.CheckKeys("option", withoutInside(opts), allowed); err != nil {
		return "", nil, err
	}
	if _, err := tuning.Parse(opts, nil); err != nil {
		return "", nil, err
	}
	return typ, t, nil
}

// AllocateNetwork implements network.Driver. It runs on the swarm manager,
// which passes the nodes only what it returns: so the user's options go
// back, checked here so that a mistake fails `docker network create`
// rather than every task later.
func (d *Driver) AllocateNetwork(req *network.AllocateNetworkRequest) (*network.AllocateNetworkResponse, error) {
	if d.scope != "global" {
		return nil, errors.New("swarm networks need weft's swarm instance: install the plugin a second time with SCOPE=global (e.g. as weft-swarm) and use that")
	}
	opts := map[string]string{}
	for k, v := range req.Options {
		if !strings.HasPrefix(k, "com.docker.network.") || k == "com.docker.network.driver.mtu" {
			opts[k] = v
		}
	}
	_, t, err := d.checkOptions(opts)
	if err != nil {
		return nil, err
	}
	if a, ok := t.(api.Allocator); ok {
		if opts, err = a.Allocate(req.NetworkID, opts); err != nil {
			return nil, err
		}
	}
	shown := map[string]string{}
	for k, v := range opts {
		if strings.Contains(k, "key") {
			v = "(secret)"
		}
		shown[k] = v
	}
	logrus.WithFields(logrus.Fields{"network": short(req.NetworkID), "options": fmt.Sprint(shown)}).Info("swarm network allocated")
	return &network.AllocateNetworkResponse{Options: opts}, nil
}

// FreeNetwork implements network.Driver. The request names no type: every
// allocating type forgets the network (a no-op for the others).
func (d *Driver) FreeNetwork(req *network.FreeNetworkRequest) error {
	var errs []error
	for _, t := range d.types {
		if a, ok := t.(api.Allocator); ok {
			errs = append(errs, a.Free(req.NetworkID))
		}
	}
	return errors.Join(errs...)
}

// DiscoverNew implements network.Driver: node discovery (type 1) tells
// this node's own address (Self), which the overlay's control plane uses.
func (d *Driver) DiscoverNew(req *network.DiscoveryNotification) error {
	if req.DiscoveryType != 1 {
		return nil
	}
	m, ok := req.DiscoveryData.(map[string]interface{})
	if !ok {
		return nil
	}
	addr, _ := m["Address"].(string)
	self, _ := m["Self"].(bool)
	if addr == "" {
		return nil
	}
	for _, t := range d.types {
		if dt, ok := t.(api.Discoverer); ok {
			dt.Discovered(addr, self)
		}
	}
	return nil
}

// DiscoverDelete implements network.Driver.
func (d *Driver) DiscoverDelete(*network.DiscoveryNotification) error { return nil }

func genericOptions(opts map[string]interface{}) (map[string]string, error) {
	out := map[string]string{}
	g, ok := opts[optGeneric]
	if !ok || g == nil {
		return out, nil
	}
	m, ok := g.(map[string]interface{})
	if !ok {
		return nil, fmt.Errorf("unexpected %s value %T", optGeneric, g)
	}
	for k, v := range m {
		switch v := v.(type) {
		case string:
			out[k] = v
		case bool, float64:
			out[k] = fmt.Sprint(v)
		default:
			return nil, fmt.Errorf("option %s: unexpected value %v", k, v)
		}
	}
	return out, nil
}

func boolOpt(opts map[string]interface{}, key string) bool {
	switch v := opts[key].(type) {
	case bool:
		return v
	case string:
		return v == "true"
	}
	return false
}

func ipamPrefixes(data []*network.IPAMData, aux map[string]netip.Addr) (pools, gws []netip.Prefix, err error) {
	for _, d := range data {
		if d == nil || d.Pool == "" {
			continue
		}
		for name, v := range d.AuxAddresses {
			s, _ := v.(string)
			p, err := netip.ParsePrefix(s)
			if err != nil {
				return nil, nil, fmt.Errorf("--aux-address %s=%v: %w", name, v, err)
			}
			aux[name] = p.Addr()
		}
		p, err := netip.ParsePrefix(d.Pool)
		if err != nil {
			return nil, nil, fmt.Errorf("subnet %q from IPAM: %w", d.Pool, err)
		}
		pools = append(pools, p.Masked())
		if d.Gateway != "" {
			g, err := netip.ParsePrefix(d.Gateway)
			if err != nil {
				return nil, nil, fmt.Errorf("gateway %q from IPAM: %w", d.Gateway, err)
			}
			gws = append(gws, g)
		}
	}
	return pools, gws, nil
}

// CreateNetwork implements network.Driver.
func (d *Driver) CreateNetwork(req *network.CreateNetworkRequest) error {
	d.wait()
	d.mu.Lock()
	defer d.mu.Unlock()
	log := logrus.WithField("network", short(req.NetworkID))
	if _, ok := d.nets[req.NetworkID]; ok {
		// Repeated after restarts in swarm: the network is already here.
		return nil
	}
	opts, err := genericOptions(req.Options)
	if err != nil {
		return err
	}
	d.mapParent(opts)
	typ, t, err := d.checkOptions(opts)
	if err != nil {
		return err
	}
	v4, v6, err := ipFamilies(req.Options, opts)
	if err != nil {
		return err
	}
	n := &api.Network{ID: req.NetworkID, Type: typ, Options: opts,
		IPv6: v6, NoIPv4: !v4, Internal: boolOpt(req.Options, optInternal)}
	n.Aux = map[string]netip.Addr{}
	p4, g4, err := ipamPrefixes(req.IPv4Data, n.Aux)
	if err != nil {
		return err
	}
	p6, g6, err := ipamPrefixes(req.IPv6Data, n.Aux)
	if err != nil {
		return err
	}
	n.Pools, n.Gateways = append(p4, p6...), append(g4, g6...)
	if err := d.checkOverlap(n); err != nil {
		return err
	}
	if err := t.Validate(n, d.sortedNets()); err != nil {
		return err
	}
	if err := d.checkIPv6Rules(n, t); err != nil {
		return err
	}
	others := d.sortedNets()
	if err := t.CreateNetwork(n, others); err != nil {
		return err
	}
	success := false
	defer func() {
		if !success {
			delete(d.nets, n.ID)
			_ = t.DeleteNetwork(n, others)
			if err := d.syncFirewall(); err != nil {
				log.WithError(err).Error("rollback: firewall")
			}
		}
	}()
	d.nets[n.ID] = n
	if err := d.syncFirewall(); err != nil {
		return err
	}
	if err := d.st.Update(func(tx *store.Tx) error { return tx.Put(bucketNetworks, n.ID, n) }); err != nil {
		return fmt.Errorf("save network: %w", err)
	}
	success = true
	log.WithFields(logrus.Fields{"type": typ, "subnets": fmt.Sprint(n.Pools)}).Info("network created")
	return nil
}

// checkOverlap refuses a subnet already used by another weft network: with
// Docker's default IPAM nothing else would stop two bridges routing it.
func (d *Driver) checkOverlap(n *api.Network) error {
	for _, o := range d.nets {
		for _, a := range o.Pools {
			for _, b := range n.Pools {
				if a.Overlaps(b) {
					return fmt.Errorf("subnet %s overlaps subnet %s of weft network %.12s; choose another --subnet", b, a, o.ID)
				}
			}
		}
	}
	return nil
}

// DeleteNetwork implements network.Driver.
func (d *Driver) DeleteNetwork(req *network.DeleteNetworkRequest) error {
	d.wait()
	d.mu.Lock()
	defer d.mu.Unlock()
	n, ok := d.nets[req.NetworkID]
	if !ok {
		return nil
	}
	t, terr := d.typeOf(n)
	for _, ep := range d.endpointsOf(n.ID) {
		// Docker removes endpoints first; these are records of containers
		// that vanished while the plugin was away.
		if terr == nil {
			_ = t.DeleteEndpoint(n, ep)
		}
		d.ports.release(ep.ID)
		delete(d.eps, ep.ID)
	}
	delete(d.nets, n.ID)
	if terr == nil {
		if err := t.DeleteNetwork(n, d.sortedNets()); err != nil {
			d.nets[n.ID] = n
			return err
		}
	} else {
		// Nothing of an unknown type can be undone; drop the records so
		// `docker network rm` succeeds.
		logrus.WithField("network", short(n.ID)).WithError(terr).Warn("removing the records of a network of unknown type")
	}
	if err := d.st.Update(func(tx *store.Tx) error {
		if err := tx.DeletePrefix(bucketEndpoints, n.ID+"/"); err != nil {
			return err
		}
		return tx.Delete(bucketNetworks, n.ID)
	}); err != nil {
		return fmt.Errorf("save: %w", err)
	}
	if err := d.syncFirewall(); err != nil {
		return err
	}
	logrus.WithField("network", short(n.ID)).Info("network deleted")
	return nil
}

func epKey(ep *api.Endpoint) string { return ep.NetworkID + "/" + ep.ID }

func (d *Driver) saveEndpoint(ep *api.Endpoint) error {
	if err := d.st.Update(func(tx *store.Tx) error { return tx.Put(bucketEndpoints, epKey(ep), ep) }); err != nil {
		return fmt.Errorf("save endpoint: %w", err)
	}
	return nil
}

func endpointOptions(opts map[string]interface{}) (map[string]string, error) {
	out := map[string]string{}
	for k, v := range opts {
		if strings.HasPrefix(k, "com.docker.") && k != optIfname {
			continue // Docker's own keys (port map, exposed ports, ...)
		}
		s, ok := v.(string)
		if !ok {
			return nil, fmt.Errorf("endpoint option %s: want a string", k)
		}
		out[k] = s
	}
	return out, nil
}

// CreateEndpoint implements network.Driver.
func (d *Driver) CreateEndpoint(req *network.CreateEndpointRequest) (*network.CreateEndpointResponse, error) {
	d.wait()
	d.mu.Lock()
	locked := true
	defer func() {
		if locked {
			d.mu.Unlock()
		}
	}()
	n, ok := d.nets[req.NetworkID]
	if !ok {
		return nil, fmt.Errorf("weft has no network %.12s (was it created with another driver?)", req.NetworkID)
	}
	if _, ok := d.eps[req.EndpointID]; ok {
		return nil, fmt.Errorf("endpoint %.12s already exists", req.EndpointID)
	}
	eopts, err := endpointOptions(req.Options)
	if err != nil {
		return nil, err
	}
	if err := api.CheckKeys("endpoint option (--driver-opt)", withoutInside(eopts), append(tuning.EndpointKeys(), optIfname)); err != nil {
		return nil, err
	}
	if name, ok := eopts[optIfname]; ok {
		if err := api.IfName(optIfname, name); err != nil {
			return nil, err
		}
	}
	// Checked here so that a bad value fails `docker network connect`
	// before anything is created; applied at Join.
	if _, err := tuning.Parse(n.Options, eopts); err != nil {
		return nil, err
	}
	ep := &api.Endpoint{ID: req.EndpointID, NetworkID: n.ID, Options: eopts}
	resp := &network.CreateEndpointResponse{}
	if req.Interface != nil {
		if req.Interface.Address != "" {
			if ep.Addr4, err = netip.ParsePrefix(req.Interface.Address); err != nil {
				return nil, fmt.Errorf("address %q: %w", req.Interface.Address, err)
			}
		}
		if req.Interface.AddressIPv6 != "" {
			if ep.Addr6, err = netip.ParsePrefix(req.Interface.AddressIPv6); err != nil {
				return nil, fmt.Errorf("IPv6 address %q: %w", req.Interface.AddressIPv6, err)
			}
		}
		ep.MAC = req.Interface.MacAddress
	}
	ep.MACGiven = ep.MAC != ""
	if !ep.MACGiven {
		ep.MAC = netutil.MACFor(ep.Addr4.Addr()).String()
	}
	t, err := d.typeOf(n)
	if err != nil {
		return nil, err
	}
	if err := t.CreateEndpoint(n, ep); err != nil {
		return nil, err
	}
	if !ep.MACGiven {
		// The type may have changed it (ipvlan uses the parent's).
		resp.Interface = &network.EndpointInterface{MacAddress: ep.MAC}
	}
	// Reserve the endpoint in memory, then commit without holding the
	// lock: many containers starting at once share fsyncs instead of
	// queueing behind each other. Docker never calls for an endpoint before
	// CreateEndpoint has answered, and answers only after the commit.
	d.eps[ep.ID] = ep
	snap := *ep
	d.mu.Unlock()
	locked = false
	if err := d.saveEndpoint(&snap); err != nil {
		d.mu.Lock()
		delete(d.eps, ep.ID)
		_ = t.DeleteEndpoint(n, ep)
		d.mu.Unlock()
		return nil, err
	}
	logrus.WithFields(logrus.Fields{"network": short(n.ID), "endpoint": short(ep.ID), "address": ep.Addr4, "mac": ep.MAC}).Info("endpoint created")
	return resp, nil
}

// DeleteEndpoint implements network.Driver.
func (d *Driver) DeleteEndpoint(req *network.DeleteEndpointRequest) error {
	d.wait()
	d.mu.Lock()
	defer d.mu.Unlock()
	ep, ok := d.eps[req.EndpointID]
	if !ok {
		return nil
	}
	// Commit first: if the store fails, nothing has changed. If the kernel
	// step fails after it, the start-up sweep removes the labelled leftover.
	if err := d.st.Update(func(tx *store.Tx) error { return tx.Delete(bucketEndpoints, epKey(ep)) }); err != nil {
		return fmt.Errorf("save: %w", err)
	}
	hadPorts := len(ep.Ports) > 0
	d.ports.release(ep.ID)
	delete(d.eps, ep.ID)
	delete(d.insideResult, ep.ID)
	_ = tuning.Remove(d.tuningLink(ep))
	if n := d.nets[ep.NetworkID]; n != nil {
		if t, err := d.typeOf(n); err == nil {
			if err := t.DeleteEndpoint(n, ep); err != nil {
				logrus.WithFields(logrus.Fields{"network": short(n.ID), "endpoint": short(ep.ID)}).WithError(err).Warn("removing the endpoint's interface failed")
			}
		}
	}
	if hadPorts {
		if err := d.syncFirewall(); err != nil {
			return err
		}
	}
	logrus.WithFields(logrus.Fields{"network": short(ep.NetworkID), "endpoint": short(ep.ID)}).Info("endpoint deleted")
	return nil
}

// EndpointOperInfo is the response of EndpointInfo. The helpers' type only
// allows string values; Docker accepts any JSON.
type EndpointOperInfo struct {
	Value map[string]interface{}
}

// EndpointInfo returns what `docker inspect` can show about an endpoint.
func (d *Driver) EndpointInfo(req *network.InfoRequest) (*EndpointOperInfo, error) {
	d.wait()
	d.mu.Lock()
	defer d.mu.Unlock()
	ep, ok := d.eps[req.EndpointID]
	if !ok {
		return nil, fmt.Errorf("weft has no endpoint %.12s", req.EndpointID)
	}
	v := map[string]interface{}{"weft.host_interface": ep.HostIf}
	if r, ok := d.insideResult[ep.ID]; ok {
		v["weft.tuning.inside"] = r
	}
	if n := d.nets[ep.NetworkID]; n != nil {
		if ts, err := tuning.Parse(n.Options, ep.Options); err == nil && ts.String() != "" {
			v["weft.tuning"] = ts.String()
		}
		if t, err := d.typeOf(n); err == nil {
			if desc, ok := t.(api.Describer); ok {
				for k, s := range desc.Describe(n, ep) {
					v[k] = s
				}
			}
		}
	}
	if len(ep.Ports) > 0 {
		v[optPortMap] = ep.Ports
	}
	return &EndpointOperInfo{Value: v}, nil
}

// Join implements network.Driver.
func (d *Driver) Join(req *network.JoinRequest) (*JoinResponse, error) {
	d.wait()
	d.mu.Lock()
	locked := true
	defer func() {
		if locked {
			d.mu.Unlock()
		}
	}()
	ep, ok := d.eps[req.EndpointID]
	if !ok {
		return nil, fmt.Errorf("weft has no endpoint %.12s", req.EndpointID)
	}
	n := d.nets[ep.NetworkID]
	if n == nil {
		return nil, fmt.Errorf("weft has no network %.12s", ep.NetworkID)
	}
	t, err := d.typeOf(n)
	if err != nil {
		return nil, err
	}
	ji, err := t.Join(n, ep)
	if err != nil {
		return nil, err
	}
	// Tuning goes on now, while the container's interface is still in the
	// host namespace (Docker moves it after Join answers).
	ts, err := tuning.Parse(n.Options, ep.Options)
	if err == nil {
		err = tuning.Apply(d.tuningLink(ep), ts)
	}
	if err != nil {
		_ = t.Leave(n, ep)
		return nil, err
	}
	if s := ts.String(); s != "" {
		logrus.WithFields(logrus.Fields{"network": short(n.ID), "endpoint": short(ep.ID), "tuning": s}).Info("tuning applied")
	}
	prevJoined, prevSandbox := ep.Joined, ep.Sandbox
	ep.Joined, ep.Sandbox = true, req.SandboxKey
	snap := *ep
	d.mu.Unlock() // commit outside the lock, as in CreateEndpoint
	locked = false
	if err := d.saveEndpoint(&snap); err != nil {
		d.mu.Lock()
		ep.Joined, ep.Sandbox = prevJoined, prevSandbox
		_ = tuning.Remove(d.tuningLink(ep))
		_ = t.Leave(n, ep)
		d.mu.Unlock()
		return nil, err
	}
	logrus.WithFields(logrus.Fields{"network": short(n.ID), "endpoint": short(ep.ID), "sandbox": req.SandboxKey}).Debug("joined")
	// Types without a host-side device are shaped inside the container.
	shapeIFB := ""
	if ts.Shaped() && !hostShaping(t) {
		shapeIFB = "wfi" + short(ep.ID)
	}
	if ts.HasInside() || shapeIFB != "" {
		// On Engine 28+ the container's namespace exists now and its
		// process starts only after every interface is in: Prepare sets
		// what it can before answering (see tuning/jointime.go), Finish
		// the rest once Docker has moved the interface. On 20.10 all of it
		// waits for the namespace.
		p := d.inside.Prepare(req.SandboxKey, ji.SrcName, snap.MAC, ts, shapeIFB)
		d.mu.Lock()
		if d.insideWait == nil {
			d.insideWait = map[string]*tuning.Pending{}
		}
		d.insideWait[ep.ID] = p
		d.mu.Unlock()
		if p.AtJoin() {
			logrus.WithFields(logrus.Fields{"endpoint": short(ep.ID), "before_the_move": strings.Join(p.Early(), " ")}).Debug("tuning prepared in the container's namespace")
		}
		go d.applyInside(ep.ID, p)
	}
	resp := &JoinResponse{
		InterfaceName:         InterfaceName{SrcName: ji.SrcName, DstPrefix: ji.DstPrefix, DstName: snap.Options[optIfname]},
		Gateway:               ji.Gateway,
		GatewayIPv6:           ji.GatewayIPv6,
		DisableGatewayService: ji.DisableGatewayService,
	}
	for _, r := range ji.StaticRoutes {
		sr := &network.StaticRoute{Destination: r.Destination, NextHop: r.NextHop}
		if r.Connected {
			sr.RouteType = 1 // libnetwork types.CONNECTED
		}
		resp.StaticRoutes = append(resp.StaticRoutes, sr)
	}
	return resp, nil
}

// JoinResponse is Join's answer: the helpers' type, whose InterfaceName
// lacks DstName.
type JoinResponse struct {
	InterfaceName         InterfaceName
	Gateway               string
	GatewayIPv6           string
	StaticRoutes          []*network.StaticRoute
	DisableGatewayService bool
}

// InterfaceName names the interface Docker moves into the container
// (SrcName) and its name there: DstName exactly, else DstPrefix plus a
// number. Docker before 29.8 ignores DstName.
type InterfaceName struct {
	SrcName   string
	DstPrefix string
	DstName   string `json:",omitempty"`
}

// Leave implements network.Driver.
func (d *Driver) Leave(req *network.LeaveRequest) error {
	d.wait()
	d.mu.Lock()
	defer d.mu.Unlock()
	ep, ok := d.eps[req.EndpointID]
	if !ok {
		return nil
	}
	if p := d.insideWait[ep.ID]; p != nil {
		p.Cancel() // gives back what it borrowed in the sandbox
		delete(d.insideWait, ep.ID)
	}
	if err := tuning.Remove(d.tuningLink(ep)); err != nil {
		logrus.WithField("endpoint", short(ep.ID)).WithError(err).Warn("removing the endpoint's tuning failed")
	}
	if n := d.nets[ep.NetworkID]; n != nil && ep.HostIf == "" {
		// Shaped inside the container: its IFB stays there if the container
		// runs on. Only then is the namespace worth opening.
		if ts, err := tuning.Parse(n.Options, ep.Options); err == nil && ts.Shaped() {
			d.inside.RemoveInside(ep.Sandbox, "wfi"+short(ep.ID))
		}
	}
	if n := d.nets[ep.NetworkID]; n != nil {
		if t, err := d.typeOf(n); err == nil {
			if err := t.Leave(n, ep); err != nil {
				return err
			}
		}
	}
	delete(d.insideResult, ep.ID)
	prev := *ep
	ep.Joined, ep.Sandbox = false, ""
	if err := d.saveEndpoint(ep); err != nil {
		*ep = prev
		return err
	}
	return nil
}

func short(id string) string { return id[:min(12, len(id))] }

// Label is what a plugin instance puts after "weft:" in its link labels:
// the scope and the store's instance ID.
func Label(scope string, st *store.Store) (string, error) {
	id, err := st.InstanceID()
	if err != nil {
		return "", err
	}
	return scope + ":" + id, nil
}

// withoutInside drops sysctl.* and offload.* keys, which tuning.Parse checks.
func withoutInside(opts map[string]string) map[string]string {
	out := map[string]string{}
	for k, v := range opts {
		if !tuning.IsInsideKey(k) {
			out[k] = v
		}
	}
	return out
}

// applyInside runs after Join has answered: it finishes the inside tuning
// Join prepared once Docker has moved the interface into the container, and
// keeps the result for the endpoint's operational info.
func (d *Driver) applyInside(epID string, p *tuning.Pending) {
	log := logrus.WithField("endpoint", short(epID))
	got, err := p.Finish()
	res := "applied: " + got
	if early := p.Early(); len(early) > 0 {
		// Engine 28+: these were in place when the interface arrived.
		res += "; set before the move: " + strings.Join(early, " ")
	}
	if err != nil {
		res = "error: " + err.Error()
		log.WithError(err).Warn("tuning inside the container failed")
	} else {
		log.WithFields(logrus.Fields{"applied": got, "prepared_at_join": p.AtJoin()}).Info("tuning applied inside the container")
	}
	d.mu.Lock()
	if _, ok := d.eps[epID]; ok && d.insideWait[epID] == p { // not left (or joined again) meanwhile
		delete(d.insideWait, epID)
		d.insideResult[epID] = res
	}
	d.mu.Unlock()
}

func linkExists(name string) bool {
	if name == "" {
		return false
	}
	_, err := netlink.LinkByName(name)
	return err == nil
}

func hostShaping(t api.NetworkType) bool {
	hs, ok := t.(api.HostShaper)
	return ok && hs.HostSideShaping()
}

// tuningLink names the interfaces tuning works on for an endpoint.
func (d *Driver) tuningLink(ep *api.Endpoint) tuning.Link {
	return tuning.Link{Host: ep.HostIf, Cont: ep.ContIf, IFB: "wfi" + short(ep.ID),
		Alias: api.AliasPrefix + d.label + ":" + ep.NetworkID + ":" + ep.ID}
}
