// Package api holds what the driver core and the network types share: the
// stored network and endpoint records and the interface every network type
// (bridge now; macvlan, ipvlan, overlay later) implements.
package api

import (
	"net/netip"
	"strings"

	"github.com/weft-net/weft/firewall"
)

// Network is a weft network as persisted in the store.
type Network struct {
	ID       string
	Type     string
	Options  map[string]string // the user's -o options, validated
	IPv6     bool
	NoIPv4   bool // IPv6-only (Docker 28+: --ipv4=false)
	Internal bool
	Pools    []netip.Prefix // subnets, IPv4 and IPv6
	Gateways []netip.Prefix // gateway address with the subnet's length, one per subnet that has one
	// Aux are the --aux-address reservations by name (IPAM keeps them free).
	Aux map[string]netip.Addr
	// State is what the type decided at create time (bridge name, MTU, ...)
	// and must find again after a restart.
	State map[string]string
}

// Endpoint is one container interface on a network.
type Endpoint struct {
	ID        string
	NetworkID string
	Addr4     netip.Prefix
	Addr6     netip.Prefix
	MAC       string
	MACGiven  bool   // Docker asked for this MAC (--mac-address)
	HostIf    string // host-side interface (veth peer), if the type has one
	ContIf    string // the interface Docker moves into the container
	Options   map[string]string
	Joined    bool
	Sandbox   string
	Ports     []PortBinding // published ports, as programmed
	// State is what the type decided for the endpoint and must find again
	// (e.g. the SR-IOV VF it took and that VF's settings before).
	State map[string]string `json:",omitempty"`
}

// PortBinding is Docker's port-mapping entry (libnetwork types.PortBinding).
type PortBinding struct {
	Proto       int    // 6 tcp, 17 udp
	IP          string // container IP
	Port        uint16 // container port
	HostIP      string
	HostPort    uint16
	HostPortEnd uint16
	// Direct: opened on the container's address IP (gateway mode routed),
	// no host port. weft's own field, never sent by Docker.
	Direct bool `json:",omitempty"`
}

// JoinInfo is what a type returns for Join.
type JoinInfo struct {
	SrcName     string
	DstPrefix   string
	Gateway     string
	GatewayIPv6 string
	// DisableGatewayService stops Docker from adding docker_gwbridge.
	DisableGatewayService bool
	StaticRoutes          []StaticRoute
}

// StaticRoute is a route Docker installs in the container.
type StaticRoute struct {
	Destination string // CIDR
	Connected   bool   // a device route (no next hop)
	NextHop     string
}

// NetworkType is one kind of weft network. Methods change only kernel
// state; the core persists records and rolls back on error.
type NetworkType interface {
	// Name is the value of -o type=NAME.
	Name() string
	// Options lists the -o keys this type accepts, for validation and
	// "did you mean" suggestions.
	Options() []string
	// Validate checks options and fills n.State; it changes nothing in the kernel.
	Validate(n *Network, existing []*Network) error
	CreateNetwork(n *Network, others []*Network) error
	// DeleteNetwork removes the network's kernel objects; others are the
	// remaining networks (a shared parent stays while one uses it).
	DeleteNetwork(n *Network, others []*Network) error
	CreateEndpoint(n *Network, ep *Endpoint) error
	DeleteEndpoint(n *Network, ep *Endpoint) error
	Join(n *Network, ep *Endpoint) (*JoinInfo, error)
	Leave(n *Network, ep *Endpoint) error
	// Reconcile re-creates what is missing for a stored network and its
	// endpoints (after a reboot or a plugin restart).
	Reconcile(n *Network, eps []*Endpoint) error
	// Firewall describes the network to the firewall, or nil when the type needs no rules.
	Firewall(n *Network, eps []*Endpoint) *firewall.Network
}

// HostShaper is implemented by types whose endpoints have a host-side
// device, where tc rate limits are applied.
type HostShaper interface {
	HostSideShaping() bool
}

// GatewaySkipper is implemented by types that need no gateway address in
// some configurations. Docker 28+ asks (GwAllocCheck) before it allocates
// the network's addresses; opts are the -o options.
type GatewaySkipper interface {
	SkipGateway(opts map[string]string, internal bool) (v4, v6 bool, err error)
}

// Describer is implemented by types with endpoint facts worth showing in
// the endpoint's operational info (e.g. which SR-IOV VF it holds).
type Describer interface {
	Describe(n *Network, ep *Endpoint) map[string]string
}

// AliasPrefix starts the alias weft sets on every link it creates, so that
// leftovers are recognisable even with user-chosen names.
const AliasPrefix = "weft:"

// LinkPrefixes are the name prefixes of the links weft creates: bridges
// (weft-), veth ends (wfh, wfc), IFBs (wfi), host_access shims (wfs),
// placeholder parents (wfd), ipvlan probes (wfp), the overlay's bridges,
// VXLANs and veths (wfov, wfvx, wfoh, wfoc) and its WireGuard link (wfwg).
var LinkPrefixes = []string{"weft-", "wfh", "wfc", "wfi", "wfs", "wfd", "wfp", "wfov", "wfvx", "wfoh", "wfoc", "wfwg"}

// WeftStyleName reports whether name looks like one weft gives its own
// links. Such a name is reserved: a user cannot choose it, and a device
// bearing it without weft's label is never adopted or deleted.
func WeftStyleName(name string) bool {
	for _, p := range LinkPrefixes {
		if strings.HasPrefix(name, p) {
			return true
		}
	}
	return false
}

// Labelled reports whether a link's alias is a weft label (any instance).
func Labelled(alias string) bool { return strings.HasPrefix(alias, AliasPrefix) }

// LabelledFor reports whether a link's alias is a weft label for the
// network netID (with or without an endpoint part).
func LabelledFor(alias, netID string) bool {
	return Labelled(alias) && (strings.HasSuffix(alias, ":"+netID) || strings.Contains(alias, ":"+netID+":"))
}

// Gateways returns the gateways an endpoint should use: none on an internal
// network, and only for the address families the endpoint has.
func Gateways(n *Network, ep *Endpoint) (v4, v6 string) {
	if n.Internal {
		return "", ""
	}
	for _, gw := range n.Gateways {
		if gw.Addr().Is4() && v4 == "" && ep.Addr4.IsValid() {
			v4 = gw.Addr().String()
		}
		if gw.Addr().Is6() && v6 == "" && ep.Addr6.IsValid() {
			v6 = gw.Addr().String()
		}
	}
	return v4, v6
}

// Allocator is implemented by swarm types that allocate on the manager
// (AllocateNetwork): what Allocate returns is all the nodes will see.
type Allocator interface {
	Allocate(netID string, opts map[string]string) (map[string]string, error)
	Free(netID string) error
}

// Discoverer is implemented by types that need node discovery events.
type Discoverer interface {
	Discovered(addr string, self bool)
}
