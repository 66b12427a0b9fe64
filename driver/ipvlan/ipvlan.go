// Package ipvlan is weft's ipvlan network type: containers share the MAC
// address of a host parent, switched in L2 mode or routed in L3/L3S mode.
// It accepts the option names of Docker's built-in ipvlan driver.
package ipvlan

import (
	"errors"
	"fmt"
	"strconv"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/driver/api"
	"github.com/weft-net/weft/driver/parent"
	"github.com/weft-net/weft/firewall"
	"github.com/weft-net/weft/netutil"
)

// Docker's option names.
const (
	OptMode = "ipvlan_mode"
	OptFlag = "ipvlan_flag"
)

const (
	stMode = "mode"
	stFlag = "flag"
	stMTU  = "mtu"
)

var modes = map[string]netlink.IPVlanMode{"l2": netlink.IPVLAN_MODE_L2, "l3": netlink.IPVLAN_MODE_L3, "l3s": netlink.IPVLAN_MODE_L3S}
var flags = map[string]netlink.IPVlanFlag{"bridge": netlink.IPVLAN_FLAG_BRIDGE, "private": netlink.IPVLAN_FLAG_PRIVATE, "vepa": netlink.IPVLAN_FLAG_VEPA}

// Type implements api.NetworkType for ipvlan.
type Type struct {
	// Scope is the label of the plugin instance (scope and store ID) that
	// goes into the labels of the links this type creates.
	Scope string
}

// Name implements api.NetworkType.
func (t *Type) Name() string { return "ipvlan" }

// Options implements api.NetworkType.
func (t *Type) Options() []string {
	return []string{parent.OptParent, OptMode, OptFlag, parent.OptMTU, parent.OptMTUShort, parent.OptHostAccess}
}

// SkipGateway implements api.GatewaySkipper, as Docker's own ipvlan does
// where weft needs no gateway: in l3 and l3s the default route is a device
// route, and an --internal network has no default route. A --gateway the
// user gives is still reserved.
func (t *Type) SkipGateway(opts map[string]string, internal bool) (v4, v6 bool, err error) {
	mode, err := parent.Mode(opts, OptMode, "l2", "l2", "l3", "l3s")
	if err != nil {
		return false, false, err
	}
	skip := mode != "l2" || internal
	return skip, skip, nil
}

// Validate implements api.NetworkType.
func (t *Type) Validate(n *api.Network, existing []*api.Network) error {
	n.State = map[string]string{}
	mode, err := parent.Mode(n.Options, OptMode, "l2", "l2", "l3", "l3s")
	if err != nil {
		return err
	}
	flag, err := parent.Mode(n.Options, OptFlag, "bridge", "bridge", "private", "vepa")
	if err != nil {
		return err
	}
	n.State[stMode], n.State[stFlag] = mode, flag
	if err := parent.Validate(n, existing); err != nil {
		return err
	}
	for _, u := range parent.Users(n, existing) {
		if u.Type != "ipvlan" {
			return fmt.Errorf("option parent=%s: weft %s network %.12s uses this parent; ipvlan cannot share it", n.State[parent.StName], u.Type, u.ID)
		}
		// The kernel keeps one mode and one flag per parent: a second network
		// asking for others would silently change the first one's.
		if u.State[stMode] != mode {
			return fmt.Errorf("option ipvlan_mode=%s: parent %s already carries ipvlan_mode=%s (weft network %.12s); one parent has one mode",
				mode, n.State[parent.StName], u.State[stMode], u.ID)
		}
		if u.State[stFlag] != flag {
			return fmt.Errorf("option ipvlan_flag=%s: parent %s already carries ipvlan_flag=%s (weft network %.12s); one parent has one flag",
				flag, n.State[parent.StName], u.State[stFlag], u.ID)
		}
	}
	mtu, err := parent.MTU(n)
	if err != nil {
		return err
	}
	if mtu > 0 {
		n.State[stMTU] = strconv.Itoa(mtu)
	}
	return parent.ValidateHostAccess(n)
}

func (t *Type) link(n *api.Network, name string, parentIndex int) *netlink.IPVlan {
	attrs := netlink.LinkAttrs{Name: name, ParentIndex: parentIndex, TxQLen: -1}
	if m := n.State[stMTU]; m != "" {
		attrs.MTU, _ = strconv.Atoi(m)
	}
	return &netlink.IPVlan{LinkAttrs: attrs, Mode: modes[n.State[stMode]], Flag: flags[n.State[stFlag]]}
}

func explain(err error, parentName string) error {
	switch {
	case parent.IsUnsupported(err):
		return parent.FeatureError("ipvlan", "CONFIG_IPVLAN")
	case errors.Is(err, unix.EBUSY):
		return fmt.Errorf("parent %s carries macvlan interfaces (or is itself a macvlan/ipvlan); ipvlan cannot use it: %w", parentName, err)
	}
	return err
}

// CreateNetwork implements api.NetworkType. ipvlan interfaces are made per
// endpoint, so a short-lived probe checks here, at `docker network create`,
// that the kernel and the parent support them.
func (t *Type) CreateNetwork(n *api.Network, others []*api.Network) error {
	if err := parent.Ensure(n, t.Scope); err != nil {
		return err
	}
	success := false
	defer func() {
		if !success {
			_ = t.DeleteNetwork(n, others)
		}
	}()
	p, err := netlink.LinkByName(n.State[parent.StName])
	if err != nil {
		return fmt.Errorf("parent: %w", err)
	}
	probe := "wfp" + n.ID[:min(12, len(n.ID))]
	if err := netlink.LinkAdd(t.link(n, probe, p.Attrs().Index)); err != nil {
		return explain(err, p.Attrs().Name)
	}
	_ = netutil.DeleteLink(probe)
	if err := parent.EnsureShim(n, t.Scope, func(name string, idx int) netlink.Link { return t.link(n, name, idx) }); err != nil {
		return err
	}
	success = true
	return nil
}

// DeleteNetwork implements api.NetworkType.
func (t *Type) DeleteNetwork(n *api.Network, others []*api.Network) error {
	if err := parent.RemoveShim(n); err != nil {
		return err
	}
	return parent.Release(n, others, t.Scope)
}

// CreateEndpoint implements api.NetworkType.
func (t *Type) CreateEndpoint(n *api.Network, ep *api.Endpoint) error {
	if ep.MACGiven {
		return errors.New("ipvlan interfaces share the parent's MAC address: --mac-address cannot be used on an ipvlan network")
	}
	p, err := netlink.LinkByName(n.State[parent.StName])
	if err != nil {
		return fmt.Errorf("parent %s of network %.12s is missing: %w", n.State[parent.StName], n.ID, err)
	}
	name := parent.ContName(ep.ID)
	if err := netlink.LinkAdd(t.link(n, name, p.Attrs().Index)); err != nil {
		return fmt.Errorf("create ipvlan %s on %s: %w", name, p.Attrs().Name, explain(err, p.Attrs().Name))
	}
	success := false
	defer func() {
		if !success {
			_ = netutil.DeleteLink(name)
		}
	}()
	l, err := netlink.LinkByName(name)
	if err != nil {
		return fmt.Errorf("look up %s: %w", name, err)
	}
	_ = netlink.LinkSetAlias(l, api.AliasPrefix+t.Scope+":"+n.ID+":"+ep.ID)
	ep.MAC = l.Attrs().HardwareAddr.String()
	if err := parent.AddHostRoute(n, ep); err != nil {
		return err
	}
	ep.ContIf = name
	success = true
	return nil
}

// DeleteEndpoint implements api.NetworkType.
func (t *Type) DeleteEndpoint(n *api.Network, ep *api.Endpoint) error {
	return parent.DeleteEndpoint(n, ep)
}

// Join implements api.NetworkType. In L3 and L3S mode the parent routes:
// the container's default route is a device route and Docker must not add
// its gateway bridge.
func (t *Type) Join(n *api.Network, ep *api.Endpoint) (*api.JoinInfo, error) {
	ji := parent.Join(n, ep)
	if n.State[stMode] == "l2" {
		return ji, nil
	}
	ji.Gateway, ji.GatewayIPv6, ji.DisableGatewayService = "", "", true
	if !n.Internal {
		if ep.Addr4.IsValid() {
			ji.StaticRoutes = append(ji.StaticRoutes, api.StaticRoute{Destination: "0.0.0.0/0", Connected: true})
		}
		if ep.Addr6.IsValid() {
			ji.StaticRoutes = append(ji.StaticRoutes, api.StaticRoute{Destination: "::/0", Connected: true})
		}
	}
	return ji, nil
}

// Leave implements api.NetworkType.
func (t *Type) Leave(*api.Network, *api.Endpoint) error { return nil }

// Reconcile implements api.NetworkType.
func (t *Type) Reconcile(n *api.Network, eps []*api.Endpoint) error {
	return parent.Reconcile(n, eps, t.Scope, func(name string, idx int) netlink.Link { return t.link(n, name, idx) })
}

// Firewall implements api.NetworkType.
func (t *Type) Firewall(*api.Network, []*api.Endpoint) *firewall.Network { return nil }
