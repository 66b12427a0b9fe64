package driver

import (
	"encoding/json"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"

	"github.com/docker/go-plugins-helpers/network"
	"github.com/sirupsen/logrus"

	"github.com/weft-net/weft/driver/api"
	"github.com/weft-net/weft/driver/bridge"
	"github.com/weft-net/weft/driver/ipvlan"
	"github.com/weft-net/weft/driver/macvlan"
	"github.com/weft-net/weft/driver/sriov"
	"github.com/weft-net/weft/store"
)

// realTypes is a driver with weft's local types; only their pure methods
// (Options, SkipGateway) are used here.
func realTypes(t *testing.T) *Driver {
	t.Helper()
	st, err := store.Open(filepath.Join(t.TempDir(), "s.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	d, err := New(st, &fakeFirewall{}, "local", "unittest", &bridge.Type{}, &macvlan.Type{}, &ipvlan.Type{}, &sriov.Type{})
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func TestCapabilitiesAdvertiseGwAllocChecker(t *testing.T) {
	d, _, _, _, _ := setup(t)
	c, err := d.GetCapabilities()
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(c)
	// The field names of moby's remote driver API (GetCapabilityResponse).
	for _, want := range []string{`"Scope":"local"`, `"ConnectivityScope":"local"`, `"GwAllocChecker":true`} {
		if !strings.Contains(string(b), want) {
			t.Errorf("capabilities %s lack %s", b, want)
		}
	}
}

func TestGwAllocCheck(t *testing.T) {
	d := realTypes(t)
	for _, c := range []struct {
		opts         map[string]interface{}
		internal     bool
		skip4, skip6 bool
		err          string
	}{
		{opts: nil}, // bridge: the gateway lives on the bridge
		{opts: map[string]interface{}{"com.docker.network.bridge.gateway_mode_ipv4": "isolated"}, internal: true, skip4: true},
		{opts: map[string]interface{}{"com.docker.network.bridge.gateway_mode_ipv6": "isolated"}, internal: true, skip6: true},
		{opts: map[string]interface{}{"com.docker.network.bridge.gateway_mode_ipv4": "isolated"}, err: "--internal"},
		{opts: map[string]interface{}{"type": "ipvlan", "parent": "eth0"}},
		{opts: map[string]interface{}{"type": "ipvlan", "parent": "eth0"}, internal: true, skip4: true, skip6: true},
		{opts: map[string]interface{}{"type": "ipvlan", "parent": "eth0", "ipvlan_mode": "l3"}, skip4: true, skip6: true},
		{opts: map[string]interface{}{"type": "ipvlan", "ipvlan_mode": "l3s"}, skip4: true, skip6: true},
		{opts: map[string]interface{}{"type": "ipvlan", "ipvlan_mode": "l4"}, err: "ipvlan_mode=l4"},
		{opts: map[string]interface{}{"type": "macvlan", "parent": "eth0"}},
		{opts: map[string]interface{}{"type": "macvlan", "parent": "eth0"}, internal: true, skip4: true, skip6: true},
		{opts: map[string]interface{}{"type": "sriov", "parent": "ens1f0"}, internal: true, skip4: true, skip6: true},
		{opts: map[string]interface{}{"type": "macvlan", "macvlan_mod": "private"}, err: `did you mean "macvlan_mode"`},
	} {
		req := map[string]interface{}{optGeneric: c.opts, optInternal: c.internal, optEnableIPv4: true, optEnableIPv6: true}
		// Through JSON, as the request arrives.
		raw, _ := json.Marshal(map[string]interface{}{"Options": req})
		var r GwAllocCheckRequest
		if err := json.Unmarshal(raw, &r); err != nil {
			t.Fatal(err)
		}
		resp, err := d.GwAllocCheck(&r)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("%v internal=%v: got %v, want an error with %q", c.opts, c.internal, err, c.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%v internal=%v: %v", c.opts, c.internal, err)
			continue
		}
		if resp.SkipIPv4 != c.skip4 || resp.SkipIPv6 != c.skip6 {
			t.Errorf("%v internal=%v: skip %v/%v, want %v/%v", c.opts, c.internal, resp.SkipIPv4, resp.SkipIPv6, c.skip4, c.skip6)
		}
		out, _ := json.Marshal(resp)
		if !strings.Contains(string(out), `"SkipIPv4":`) || !strings.Contains(string(out), `"SkipIPv6":`) {
			t.Errorf("response %s lacks moby's field names", out)
		}
	}
}

func TestDockerOptionsGetSpecificMessages(t *testing.T) {
	d := realTypes(t)
	for _, c := range []struct {
		opts map[string]string
		want []string
	}{
		{map[string]string{"com.docker.network.bridge.inhibit_ipv4": "true"},
			[]string{"option com.docker.network.bridge.inhibit_ipv4 is Docker bridge's; weft does not support it yet:", "Remove the option"}},
		{map[string]string{"com.docker.network.bridge.default_bridge": "true"}, []string{"is Docker bridge's", "docker0"}},
		{map[string]string{"com.docker.network.host_ipv6": "2001:db8::1"}, []string{"is Docker bridge's", "routes IPv6"}},
		{map[string]string{"type": "macvlan", "com.docker.network.bridge.enable_icc": "false"},
			[]string{`option "com.docker.network.bridge.enable_icc" is for type=bridge networks, and this network is type=macvlan`}},
		{map[string]string{"parent": "eth0"}, []string{`option "parent" is for type=ipvlan or type=macvlan or type=sriov networks, and this network is type=bridge`}},
		// Not Docker's: the generic message with a suggestion.
		{map[string]string{"com.docker.network.bridge.host_binding_ipv6": "::1"}, []string{`unknown option "com.docker.network.bridge.host_binding_ipv6"`, `did you mean "com.docker.network.bridge.host_binding_ipv4"`}},
	} {
		_, _, err := d.checkOptions(c.opts)
		for _, w := range c.want {
			if err == nil || !strings.Contains(err.Error(), w) {
				t.Errorf("%v: got %v, want %q", c.opts, err, w)
			}
		}
	}
	// Docker's own keys for every driver, and the supported bridge options, pass.
	for _, o := range []map[string]string{
		{"com.docker.network.enable_ipv4": "false", "com.docker.network.enable_ipv6": "true",
			"com.docker.network.advertise_addr_nmsgs": "2", "com.docker.network.advertise_addr_ms": "100"},
		{"com.docker.network.bridge.gateway_mode_ipv4": "routed", "com.docker.network.bridge.gateway_mode_ipv6": "routed",
			"com.docker.network.bridge.trusted_host_interfaces": "eth0:eth1", "com.docker.network.host_ipv4": "192.0.2.1"},
		{"type": "ipvlan", "com.docker.network.advertise_addr_nmsgs": "0"},
	} {
		if _, _, err := d.checkOptions(o); err != nil {
			t.Errorf("%v: %v", o, err)
		}
	}
}

func TestIPFamilies(t *testing.T) {
	for _, c := range []struct {
		req    map[string]interface{}
		opts   map[string]string
		v4, v6 bool
		err    []string
	}{
		{req: map[string]interface{}{}, v4: true},                                                   // Docker 20.10: no enable_ipv4 key
		{req: map[string]interface{}{optEnableIPv4: true, optEnableIPv6: true}, v4: true, v6: true}, // dual stack
		{req: map[string]interface{}{optEnableIPv4: false, optEnableIPv6: true}, v6: true},          // --ipv4=false --ipv6
		{req: map[string]interface{}{optEnableIPv4: false, optEnableIPv6: false}, err: []string{"neither IPv4 nor IPv6", "add --ipv6"}},
		// Docker 28+ applied the -o form: it agrees.
		{req: map[string]interface{}{optEnableIPv4: false, optEnableIPv6: true}, opts: map[string]string{optEnableIPv4: "false"}, v6: true},
		// An engine that ignored the -o form.
		{req: map[string]interface{}{optEnableIPv6: true}, opts: map[string]string{optEnableIPv4: "false"},
			err: []string{"option com.docker.network.enable_ipv4=false was not applied by this Docker Engine", "--ipv4=true", "use --ipv4=false"}},
		{req: map[string]interface{}{optEnableIPv6: false}, opts: map[string]string{optEnableIPv6: "true"},
			err: []string{"com.docker.network.enable_ipv6=true was not applied", "use --ipv6=true"}},
		{req: map[string]interface{}{}, opts: map[string]string{optEnableIPv4: "nope"}, err: []string{"want true or false"}},
	} {
		v4, v6, err := ipFamilies(c.req, c.opts)
		if len(c.err) > 0 {
			for _, w := range c.err {
				if err == nil || !strings.Contains(err.Error(), w) {
					t.Errorf("%v %v: got %v, want %q", c.req, c.opts, err, w)
				}
			}
			continue
		}
		if err != nil || v4 != c.v4 || v6 != c.v6 {
			t.Errorf("%v %v: got %v %v %v, want %v %v", c.req, c.opts, v4, v6, err, c.v4, c.v6)
		}
	}
}

// An IPv6-only network (Docker 28+ --ipv4=false) is created and stored as
// such; publishing on it without a way to reach IPv6 is refused at
// ProgramExternalConnectivity (docker run), naming the fix.
func TestIPv6OnlyNetwork(t *testing.T) {
	d, _, fw, st, _ := setup(t)
	req := &network.CreateNetworkRequest{NetworkID: id('a'), Options: map[string]interface{}{
		optGeneric: map[string]interface{}{"type": "fake"}, optEnableIPv4: false, optEnableIPv6: true},
		IPv6Data: []*network.IPAMData{{Pool: "fd00:1::/64", Gateway: "fd00:1::1/64"}}}
	if err := d.CreateNetwork(req); err != nil {
		t.Fatal(err)
	}
	var saved api.Network
	_ = st.View(func(tx *store.Tx) error { _, err := tx.Get(bucketNetworks, id('a'), &saved); return err })
	if !saved.NoIPv4 || !saved.IPv6 || len(saved.Pools) != 1 || saved.Pools[0].String() != "fd00:1::/64" {
		t.Fatalf("stored network %+v", saved)
	}
	resp, err := d.CreateEndpoint(&network.CreateEndpointRequest{NetworkID: id('a'), EndpointID: id('e'),
		Interface: &network.EndpointInterface{AddressIPv6: "fd00:1::2/64"}})
	if err != nil {
		t.Fatal(err)
	}
	if resp.Interface == nil || resp.Interface.MacAddress == "" {
		t.Fatalf("no MAC for an endpoint without IPv4: %+v", resp.Interface)
	}
	pm := []interface{}{map[string]interface{}{"Proto": float64(6), "Port": float64(80), "HostPort": float64(18080)}}
	err = d.ProgramExternalConnectivity(&network.ProgramExternalConnectivityRequest{NetworkID: id('a'), EndpointID: id('e'),
		Options: map[string]interface{}{optPortMap: pm}})
	for _, w := range []string{"cannot publish port 80/tcp", "IPv6-only (--ipv4=false)", "create the network with IPv4 too"} {
		if err == nil || !strings.Contains(err.Error(), w) {
			t.Errorf("publish on IPv6-only: got %v, want %q", err, w)
		}
	}
	if ep := d.eps[id('e')]; len(ep.Ports) != 0 {
		t.Errorf("ports recorded after the refusal: %+v", ep.Ports)
	}
	if len(fw.last) == 1 && len(fw.last[0].Ports) != 0 {
		t.Errorf("firewall got ports: %+v", fw.last)
	}
	// Without -p the same container starts.
	if err := d.ProgramExternalConnectivity(&network.ProgramExternalConnectivityRequest{NetworkID: id('a'), EndpointID: id('e'),
		Options: map[string]interface{}{}}); err != nil {
		t.Fatal(err)
	}
}

func TestPortPlan(t *testing.T) {
	log := logrus.NewEntry(logrus.New())
	dual := &api.Endpoint{ID: id('e'), Addr4: netip.MustParsePrefix("10.1.0.5/24"), Addr6: netip.MustParsePrefix("fd00:1::5/64")}
	v6only := &api.Endpoint{ID: id('f'), Addr6: netip.MustParsePrefix("fd00:1::6/64")}
	br := func(noV4 bool, st map[string]string) *api.Network {
		return &api.Network{ID: id('a'), Type: "bridge", NoIPv4: noV4, IPv6: true, State: st}
	}
	routed6 := map[string]string{"gateway_mode_ipv6": "routed"}
	routed4 := map[string]string{"gateway_mode_ipv4": "routed"}
	bind := func(hostIP string) []api.PortBinding {
		return []api.PortBinding{{Proto: 6, Port: 80, HostIP: hostIP, HostPort: 8080}}
	}
	type pb = api.PortBinding
	for _, c := range []struct {
		name         string
		n            *api.Network
		ep           *api.Endpoint
		pm           []api.PortBinding
		want, direct []api.PortBinding
		err          []string
	}{
		{name: "dual stack, NAT", n: br(false, nil), ep: dual, pm: bind(""),
			want: []pb{{Proto: 6, Port: 80, IP: "10.1.0.5", HostPort: 8080}}},
		{name: "dual stack, IPv6 host address skipped as before", n: br(false, nil), ep: dual, pm: bind("::")},
		{name: "dual stack, IPv6 routed", n: br(false, routed6), ep: dual, pm: bind(""),
			want:   []pb{{Proto: 6, Port: 80, IP: "10.1.0.5", HostPort: 8080}},
			direct: []pb{{Proto: 6, Port: 80, IP: "fd00:1::5", HostPort: 8080, Direct: true}}},
		{name: "IPv4 routed", n: br(false, routed4), ep: dual, pm: bind("127.0.0.1"),
			direct: []pb{{Proto: 6, Port: 80, IP: "10.1.0.5", HostPort: 8080, Direct: true}}},
		{name: "IPv6-only, routed", n: br(true, routed6), ep: v6only, pm: append(bind(""), bind("::")...),
			direct: []pb{{Proto: 6, Port: 80, IP: "fd00:1::6", HostPort: 8080, Direct: true}}},
		{name: "IPv6-only, routed, IPv4 host address", n: br(true, routed6), ep: v6only, pm: bind("127.0.0.1"),
			err: []string{"on the IPv4 host address 127.0.0.1", "has no IPv4 (--ipv4=false)"}},
		{name: "IPv6-only, NAT", n: br(true, nil), ep: v6only, pm: bind(""),
			err: []string{"IPv6-only (--ipv4=false)", "-o com.docker.network.bridge.gateway_mode_ipv6=routed"}},
		{name: "IPv6-only macvlan", n: &api.Network{ID: id('a'), Type: "macvlan", NoIPv4: true}, ep: v6only, pm: bind(""),
			err: []string{"IPv6-only (--ipv4=false)", "create the network with IPv4 too"}},
	} {
		want, direct, err := portPlan(c.n, c.ep, c.pm, log)
		if len(c.err) > 0 {
			for _, w := range c.err {
				if err == nil || !strings.Contains(err.Error(), w) {
					t.Errorf("%s: got %v, want %q", c.name, err, w)
				}
			}
			if c.n.Type == "macvlan" && err != nil && strings.Contains(err.Error(), "gateway_mode") {
				t.Errorf("%s: a bridge option suggested for macvlan: %v", c.name, err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", c.name, err)
			continue
		}
		if g, w := mustJSON(want), mustJSON(c.want); g != w {
			t.Errorf("%s: NAT bindings %s, want %s", c.name, g, w)
		}
		if g, w := mustJSON(direct), mustJSON(c.direct); g != w {
			t.Errorf("%s: direct bindings %s, want %s", c.name, g, w)
		}
	}
}

func mustJSON(v []api.PortBinding) string {
	if len(v) == 0 {
		return "[]"
	}
	b, _ := json.Marshal(v)
	return string(b)
}

// Bindings opened on the container's address hold no host port: after a
// restart weft must not try to take the host port back.
func TestReserveSkipsDirectBindings(t *testing.T) {
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	port := uint16(l.Addr().(*net.TCPAddr).Port)
	r := newPortReserver()
	if err := r.reserve(id('e'), []api.PortBinding{{Proto: 6, Port: 80, HostIP: "127.0.0.1", HostPort: port, Direct: true}}); err != nil {
		t.Fatalf("direct binding reserved a host port: %v", err)
	}
	if err := r.reserve(id('e'), []api.PortBinding{{Proto: 6, Port: 80, HostIP: "127.0.0.1", HostPort: port}}); err == nil {
		t.Fatal("control: a NAT binding on a taken port did not fail")
	}
	r.release(id('e'))
}
