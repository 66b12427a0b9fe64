package driver

import (
	"errors"
	"net"
	"strings"
	"testing"

	"github.com/docker/go-plugins-helpers/network"
)

func ipv6Req(netID string) *network.CreateNetworkRequest {
	r := createReq(netID, nil)
	r.Options[optEnableIPv6] = true
	r.IPv6Data = []*network.IPAMData{{Pool: "fd00:77::/64", Gateway: "fd00:77::1/64"}}
	return r
}

// An IPv6 network that needs firewall rules is refused when ip6tables does
// not work, with nothing created; IPv4-only networks and the none backend
// (no rules for any family, by choice) are not affected.
func TestIPv6RefusedWithoutIp6tables(t *testing.T) {
	d, ft, fw, st, _ := setup(t)
	d.SetFirewallCaps(FirewallCaps{NoIPv6: true, Err6: errors.New("ip6tables: can't initialize ip6tables table `filter'")})
	err := d.CreateNetwork(ipv6Req(id('a')))
	for _, w := range []string{"--ipv6", "ip6tables does not work", "can't initialize", "without --ipv6"} {
		if err == nil || !strings.Contains(err.Error(), w) {
			t.Fatalf("error does not say %q: %v", w, err)
		}
	}
	if len(ft.calls) != 0 || count(t, st, bucketNetworks) != 0 || len(fw.last) != 0 {
		t.Fatalf("something was created: calls %v, records %d, firewall %v", ft.calls, count(t, st, bucketNetworks), fw.last)
	}
	if err := d.CreateNetwork(createReq(id('b'), nil)); err != nil {
		t.Fatalf("an IPv4-only network is refused: %v", err)
	}

	d2, _, _, _, _ := setup(t)
	d2.SetFirewallCaps(FirewallCaps{None: true})
	if err := d2.CreateNetwork(ipv6Req(id('a'))); err != nil {
		t.Fatalf("IPTABLES_BACKEND=none: %v", err)
	}
	d3, _, _, _, _ := setup(t)
	if err := d3.CreateNetwork(ipv6Req(id('a'))); err != nil {
		t.Fatalf("with ip6tables: %v", err)
	}
}

// With IPTABLES_BACKEND=none a port published on a loopback address is
// refused (no guard rule exists, route_localnet stays off); other host
// addresses are not.
func TestLoopbackPublishRefusedWithoutFirewall(t *testing.T) {
	d, _, fw, _, _ := setup(t)
	d.SetFirewallCaps(FirewallCaps{None: true})
	if err := d.CreateNetwork(createReq(id('a'), nil)); err != nil {
		t.Fatal(err)
	}
	if _, err := d.CreateEndpoint(&network.CreateEndpointRequest{NetworkID: id('a'), EndpointID: id('e'),
		Interface: &network.EndpointInterface{Address: "10.1.0.5/24"}}); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	pm := []interface{}{map[string]interface{}{"Proto": float64(6), "Port": float64(80), "HostIP": "127.0.0.1", "HostPort": float64(port)}}
	req := &network.ProgramExternalConnectivityRequest{NetworkID: id('a'), EndpointID: id('e'), Options: map[string]interface{}{optPortMap: pm}}
	err = d.ProgramExternalConnectivity(req)
	for _, w := range []string{"127.0.0.1:" + itoa(port) + "/tcp", "IPTABLES_BACKEND=none", "route_localnet", "IPTABLES_BACKEND=auto"} {
		if err == nil || !strings.Contains(err.Error(), w) {
			t.Fatalf("error does not say %q: %v", w, err)
		}
	}
	if l, err := net.Listen("tcp4", "127.0.0.1:"+itoa(port)); err != nil {
		t.Fatalf("port %d held after the refusal: %v", port, err)
	} else {
		l.Close()
	}
	if len(fw.last) == 1 && len(fw.last[0].Ports) != 0 {
		t.Fatalf("firewall told about a refused port: %+v", fw.last)
	}
	pm[0].(map[string]interface{})["HostIP"] = ""
	if err := d.ProgramExternalConnectivity(req); err != nil {
		t.Fatalf("a port on every address is refused: %v", err)
	}
}
