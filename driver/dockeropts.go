package driver

import (
	"fmt"
	"sort"
	"strings"

	"github.com/sirupsen/logrus"

	"github.com/weft-net/weft/driver/api"
)

// -o keys Docker itself reads for every network driver. weft accepts them
// and leaves them to Docker: enable_ipv4/enable_ipv6 are the -o forms of
// --ipv4/--ipv6 (Docker passes the result separately, see ipFamilies), and
// the advertise_addr options tune the unsolicited ARP/NA that Docker 28+
// sends for each new container interface.
const (
	optEnableIPv4     = "com.docker.network.enable_ipv4"
	optAdvertiseNMsgs = "com.docker.network.advertise_addr_nmsgs"
	optAdvertiseMs    = "com.docker.network.advertise_addr_ms"
)

var dockerKeys = []string{optEnableIPv4, optEnableIPv6, optAdvertiseNMsgs, optAdvertiseMs}

// refusedDockerOptions are options of Docker's bridge driver (Docker 28/29)
// that weft does not implement, with the reason and what to do instead.
// They are refused by name rather than as unknown options.
var refusedDockerOptions = map[string]string{
	"com.docker.network.bridge.inhibit_ipv4": "it is for a bridge you created yourself whose IPv4 gateway is elsewhere; " +
		"weft creates its own bridge and puts the gateway address on it. Remove the option",
	"com.docker.network.bridge.default_bridge": "it marks Docker's default bridge (docker0), which a weft network cannot be. Remove the option",
	"com.docker.network.host_ipv6": "it sets the source address of IPv6 NAT, and weft routes IPv6 instead of NATing it. Remove the option " +
		"(com.docker.network.host_ipv4 is supported)",
}

// checkDockerOptions gives Docker's own option names a specific message
// instead of the generic "unknown option": the bridge options weft does
// not support, and options of another weft network type.
func (d *Driver) checkDockerOptions(typ string, opts map[string]string, allowed []string) error {
	ok := map[string]bool{}
	for _, a := range allowed {
		ok[a] = true
	}
	keys := make([]string, 0, len(opts))
	for k := range opts {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if ok[k] {
			continue
		}
		if why, refused := refusedDockerOptions[k]; refused {
			return fmt.Errorf("option %s is Docker bridge's; weft does not support it yet: %s", k, why)
		}
		var owners []string
		for name, t := range d.types {
			if name == typ {
				continue
			}
			for _, o := range t.Options() {
				if o == k {
					owners = append(owners, "type="+name)
					break
				}
			}
		}
		if len(owners) > 0 {
			sort.Strings(owners)
			return fmt.Errorf("option %q is for %s networks, and this network is type=%s; remove it", k, strings.Join(owners, " or "), typ)
		}
	}
	return nil
}

// ipFamilies returns which address families Docker enabled for a new
// network. Docker 28+ sends com.docker.network.enable_ipv4 (false for
// --ipv4=false); older engines do not, and their networks always have IPv4.
// The -o forms of --ipv4/--ipv6 are checked against the result: an engine
// that does not know one ignores it, and the network would silently get
// what the user asked not to have.
func ipFamilies(req map[string]interface{}, opts map[string]string) (v4, v6 bool, err error) {
	v4 = true
	if _, ok := req[optEnableIPv4]; ok {
		v4 = boolOpt(req, optEnableIPv4)
	}
	v6 = boolOpt(req, optEnableIPv6)
	for _, f := range []struct {
		key, flag string
		got       bool
	}{{optEnableIPv4, "--ipv4", v4}, {optEnableIPv6, "--ipv6", v6}} {
		if _, ok := opts[f.key]; !ok {
			continue
		}
		want, err := api.Bool(opts, f.key, f.got)
		if err != nil {
			return false, false, err
		}
		if want != f.got {
			return false, false, fmt.Errorf("option %s=%s was not applied by this Docker Engine (the network would have %s=%t; Engine 28 or newer reads this option): use %s=%t instead",
				f.key, opts[f.key], f.flag, f.got, f.flag, want)
		}
	}
	if !v4 && !v6 {
		return false, false, fmt.Errorf("the network has neither IPv4 nor IPv6 (--ipv4=false without --ipv6): weft networks need at least one address family; add --ipv6")
	}
	return v4, v6, nil
}

// GwAllocCheckRequest is the body of /NetworkDriver.GwAllocCheck (Docker
// 28+, for drivers whose capabilities say GwAllocChecker), sent before IPAM
// allocates a new network's subnets. Options are those CreateNetwork will get.
type GwAllocCheckRequest struct {
	Options map[string]interface{}
}

// GwAllocCheckResponse tells Docker, per family, not to reserve a gateway
// address (a --gateway the user gives is reserved anyway).
type GwAllocCheckResponse struct {
	SkipIPv4 bool
	SkipIPv6 bool
}

// GwAllocCheck answers whether the network described by the options needs
// gateway addresses: ipvlan l3/l3s and internal macvlan, ipvlan and SR-IOV
// networks do not, nor does a bridge family in gateway mode isolated.
// Invalid options fail here already, before Docker allocates anything.
func (d *Driver) GwAllocCheck(req *GwAllocCheckRequest) (*GwAllocCheckResponse, error) {
	opts, err := genericOptions(req.Options)
	if err != nil {
		return nil, err
	}
	typ, t, err := d.checkOptions(opts)
	if err != nil {
		return nil, err
	}
	resp := &GwAllocCheckResponse{}
	if s, ok := t.(api.GatewaySkipper); ok {
		if resp.SkipIPv4, resp.SkipIPv6, err = s.SkipGateway(opts, boolOpt(req.Options, optInternal)); err != nil {
			return nil, err
		}
	}
	logrus.WithFields(logrus.Fields{"type": typ, "skip_ipv4": resp.SkipIPv4, "skip_ipv6": resp.SkipIPv6}).Debug("gateway allocation check")
	return resp, nil
}
