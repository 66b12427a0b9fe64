package bridge

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/weft-net/weft/driver/api"
)

func newNet(opts map[string]string, internal, noV4 bool) *api.Network {
	n := &api.Network{ID: strings.Repeat("a", 64), Type: "bridge", Options: opts, Internal: internal, NoIPv4: noV4, IPv6: noV4,
		Pools:    []netip.Prefix{netip.MustParsePrefix("10.1.0.0/24"), netip.MustParsePrefix("fd00:1::/64")},
		Gateways: []netip.Prefix{netip.MustParsePrefix("10.1.0.1/24"), netip.MustParsePrefix("fd00:1::1/64")}}
	if noV4 {
		n.Pools, n.Gateways = n.Pools[1:], n.Gateways[1:]
	}
	return n
}

// Docker 28/29's bridge options: honoured with Docker's meaning, or refused
// by name with the reason.
func TestValidateDockerBridgeOptions(t *testing.T) {
	ty := &Type{}
	for _, c := range []struct {
		opts     map[string]string
		internal bool
		noV4     bool
		err      []string
		state    map[string]string
	}{
		{opts: map[string]string{OptGwMode4: "nat"}, state: map[string]string{stGwMode4: "nat"}},
		{opts: map[string]string{OptGwMode4: "routed", OptGwMode6: "routed"}, state: map[string]string{stGwMode4: "routed", stGwMode6: "routed"}},
		{opts: map[string]string{OptGwMode4: "isolated", OptGwMode6: "isolated"}, internal: true, state: map[string]string{stGwMode4: "isolated", stGwMode6: "isolated"}},
		{opts: map[string]string{OptGwMode4: "isolated"}, err: []string{"gateway_mode_ipv4=isolated", "--internal"}},
		{opts: map[string]string{OptGwMode4: "nat-unprotected"},
			err: []string{"option com.docker.network.bridge.gateway_mode_ipv4=nat-unprotected is Docker bridge's; weft does not support it yet:"}},
		{opts: map[string]string{OptGwMode6: "nat"}, err: []string{"gateway_mode_ipv6=nat is Docker bridge's; weft does not support it yet", "does not NAT", "routed"}},
		{opts: map[string]string{OptGwMode6: "nat-unprotected"}, err: []string{"is Docker bridge's"}},
		{opts: map[string]string{OptGwMode4: "bridged"}, err: []string{`gateway_mode_ipv4="bridged"`, "want nat, routed or isolated"}},
		{opts: map[string]string{OptHostIP4: "192.0.2.1"}, state: map[string]string{stSNAT4: "192.0.2.1"}},
		{opts: map[string]string{OptHostIP4: "2001:db8::1"}, err: []string{"want an IPv4 address"}},
		{opts: map[string]string{OptHostIP4: "192.0.2.1", OptMasquerade: "false"}, err: []string{"this network has none"}},
		{opts: map[string]string{OptHostIP4: "192.0.2.1", OptGwMode4: "routed"}, err: []string{"this network has none"}},
		{opts: map[string]string{OptTrusted: "eth0:wg0"}, state: map[string]string{stTrusted: "eth0:wg0"}},
		{opts: map[string]string{OptTrusted: "eth0:bad name"}, err: []string{"trusted_host_interfaces", "':'-separated"}},
		// IPv6-only networks: IPv4-only options are refused.
		{opts: map[string]string{}, noV4: true, state: map[string]string{}},
		{opts: map[string]string{OptHostBinding: "127.0.0.1"}, noV4: true, err: []string{"no IPv4 (--ipv4=false)"}},
		{opts: map[string]string{OptHostIP4: "192.0.2.1"}, noV4: true, err: []string{"no IPv4 (--ipv4=false)"}},
	} {
		n := newNet(c.opts, c.internal, c.noV4)
		err := ty.Validate(n, nil)
		if len(c.err) > 0 {
			for _, w := range c.err {
				if err == nil || !strings.Contains(err.Error(), w) {
					t.Errorf("%v: got %v, want %q", c.opts, err, w)
				}
			}
			continue
		}
		if err != nil {
			t.Errorf("%v: %v", c.opts, err)
			continue
		}
		for k, v := range c.state {
			if n.State[k] != v {
				t.Errorf("%v: state %s=%q, want %q", c.opts, k, n.State[k], v)
			}
		}
	}
}

func TestFirewallCarriesModes(t *testing.T) {
	ty := &Type{}
	n := newNet(map[string]string{OptGwMode6: "routed", OptHostIP4: "192.0.2.1", OptTrusted: "eth0:wg0"}, false, false)
	if err := ty.Validate(n, nil); err != nil {
		t.Fatal(err)
	}
	ep := &api.Endpoint{ID: strings.Repeat("e", 64), Addr4: netip.MustParsePrefix("10.1.0.5/24"), Addr6: netip.MustParsePrefix("fd00:1::5/64"),
		Ports: []api.PortBinding{
			{Proto: 6, Port: 80, IP: "10.1.0.5", HostPort: 8080},
			{Proto: 6, Port: 80, IP: "fd00:1::5", HostPort: 8080, Direct: true},
			{Proto: 17, Port: 53, HostPort: 5353}, // a record from before: no IP
		}}
	fn := ty.Firewall(n, []*api.Endpoint{ep})
	if fn.Routed4 || !fn.Routed6 || fn.SNAT4.String() != "192.0.2.1" || strings.Join(fn.Trusted, ",") != "eth0,wg0" {
		t.Fatalf("firewall network %+v", fn)
	}
	if len(fn.Ports) != 3 || fn.Ports[0].ContainerIP.String() != "10.1.0.5" || fn.Ports[1].ContainerIP.String() != "fd00:1::5" ||
		fn.Ports[2].ContainerIP.String() != "10.1.0.5" {
		t.Fatalf("ports %+v", fn.Ports)
	}
}

func TestSkipGateway(t *testing.T) {
	ty := &Type{}
	for _, c := range []struct {
		opts         map[string]string
		internal     bool
		skip4, skip6 bool
	}{
		{nil, false, false, false},
		{nil, true, false, false}, // an internal bridge keeps its gateway: the host reaches its containers
		{map[string]string{OptGwMode4: "isolated"}, true, true, false},
		{map[string]string{OptGwMode6: "isolated"}, true, false, true},
		{map[string]string{OptGwMode4: "routed"}, false, false, false},
	} {
		s4, s6, err := ty.SkipGateway(c.opts, c.internal)
		if err != nil || s4 != c.skip4 || s6 != c.skip6 {
			t.Errorf("%v internal=%v: %v %v %v", c.opts, c.internal, s4, s6, err)
		}
	}
}
