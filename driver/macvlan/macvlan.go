// Package macvlan is weft's macvlan network type: containers get a macvlan
// interface on a host parent and sit directly on its LAN. It accepts the
// option names of Docker's built-in macvlan driver, plus mtu and host_access.
package macvlan

import (
	"fmt"
	"net"

	"github.com/vishvananda/netlink"

	"github.com/weft-net/weft/driver/api"
	"github.com/weft-net/weft/driver/parent"
	"github.com/weft-net/weft/firewall"
	"github.com/weft-net/weft/netutil"
)

// OptMode is Docker's macvlan_mode option.
const OptMode = "macvlan_mode"

const (
	stMode = "mode"
	stMTU  = "mtu"
)

var modes = map[string]netlink.MacvlanMode{
	"bridge":   netlink.MACVLAN_MODE_BRIDGE,
	"private":  netlink.MACVLAN_MODE_PRIVATE,
	"vepa":     netlink.MACVLAN_MODE_VEPA,
	"passthru": netlink.MACVLAN_MODE_PASSTHRU,
}

// Type implements api.NetworkType for macvlan.
type Type struct {
	// Scope is the label of the plugin instance (scope and store ID) that
	// goes into the labels of the links this type creates.
	Scope string
}

// Name implements api.NetworkType.
func (t *Type) Name() string { return "macvlan" }

// Options implements api.NetworkType.
func (t *Type) Options() []string {
	return []string{parent.OptParent, OptMode, parent.OptMTU, parent.OptMTUShort, parent.OptHostAccess}
}

// SkipGateway implements api.GatewaySkipper: an --internal network has no
// default route, so no gateway address is needed (a --gateway the user
// gives is still reserved). Otherwise weft keeps one, as before Docker 28:
// containers get a default route through it.
func (t *Type) SkipGateway(_ map[string]string, internal bool) (v4, v6 bool, err error) {
	return internal, internal, nil
}

// Validate implements api.NetworkType.
func (t *Type) Validate(n *api.Network, existing []*api.Network) error {
	n.State = map[string]string{}
	mode, err := parent.Mode(n.Options, OptMode, "bridge", "bridge", "private", "vepa", "passthru")
	if err != nil {
		return err
	}
	n.State[stMode] = mode
	if err := parent.Validate(n, existing); err != nil {
		return err
	}
	for _, u := range parent.Users(n, existing) {
		if u.Type == "ipvlan" {
			return fmt.Errorf("option parent=%s: weft ipvlan network %.12s uses this parent; macvlan and ipvlan cannot share one", n.State[parent.StName], u.ID)
		}
		if mode == "passthru" || u.State[stMode] == "passthru" {
			return fmt.Errorf("option parent=%s: a passthru network needs the parent to itself, and weft network %.12s already uses it; use another parent",
				n.State[parent.StName], u.ID)
		}
	}
	mtu, err := parent.MTU(n)
	if err != nil {
		return err
	}
	if mtu > 0 {
		n.State[stMTU] = fmt.Sprint(mtu)
	}
	return parent.ValidateHostAccess(n)
}

func (t *Type) shim(name string, parentIndex int) netlink.Link {
	return &netlink.Macvlan{LinkAttrs: netlink.LinkAttrs{Name: name, ParentIndex: parentIndex}, Mode: netlink.MACVLAN_MODE_BRIDGE}
}

// CreateNetwork implements api.NetworkType.
func (t *Type) CreateNetwork(n *api.Network, others []*api.Network) error {
	if err := parent.Ensure(n, t.Scope); err != nil {
		return err
	}
	if err := parent.EnsureShim(n, t.Scope, t.shim); err != nil {
		_ = t.DeleteNetwork(n, others)
		return err
	}
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
	p, err := netlink.LinkByName(n.State[parent.StName])
	if err != nil {
		return fmt.Errorf("parent %s of network %.12s is missing: %w", n.State[parent.StName], n.ID, err)
	}
	name := parent.ContName(ep.ID)
	attrs := netlink.LinkAttrs{Name: name, ParentIndex: p.Attrs().Index, TxQLen: -1}
	if m := n.State[stMTU]; m != "" {
		fmt.Sscan(m, &attrs.MTU)
	}
	passthru := n.State[stMode] == "passthru"
	if !passthru {
		// In passthru mode the interface takes over the parent's MAC.
		mac, err := net.ParseMAC(ep.MAC)
		if err != nil {
			return fmt.Errorf("MAC address %q: %w", ep.MAC, err)
		}
		attrs.HardwareAddr = mac
	} else if ep.MACGiven {
		return fmt.Errorf("macvlan_mode=passthru uses the parent's MAC address: --mac-address cannot be used")
	}
	if err := netlink.LinkAdd(&netlink.Macvlan{LinkAttrs: attrs, Mode: modes[n.State[stMode]]}); err != nil {
		if parent.IsUnsupported(err) {
			return parent.FeatureError("macvlan", "CONFIG_MACVLAN")
		}
		return fmt.Errorf("create macvlan %s on %s: %w", name, p.Attrs().Name, err)
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
	if passthru {
		ep.MAC = l.Attrs().HardwareAddr.String()
	}
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

// Join implements api.NetworkType.
func (t *Type) Join(n *api.Network, ep *api.Endpoint) (*api.JoinInfo, error) {
	return parent.Join(n, ep), nil
}

// Leave implements api.NetworkType.
func (t *Type) Leave(*api.Network, *api.Endpoint) error { return nil }

// Reconcile implements api.NetworkType.
func (t *Type) Reconcile(n *api.Network, eps []*api.Endpoint) error {
	return parent.Reconcile(n, eps, t.Scope, t.shim)
}

// Firewall implements api.NetworkType: macvlan traffic bypasses the host's IP stack.
func (t *Type) Firewall(*api.Network, []*api.Endpoint) *firewall.Network { return nil }
