package driver

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/docker/go-plugins-helpers/network"
)

// com.docker.network.endpoint.ifname reaches the driver in CreateEndpoint's
// options only (Docker's Join request carries the sandbox's labels), so
// weft keeps it with the endpoint and answers it as DstName at Join.
func TestIfnameOptionBecomesDstName(t *testing.T) {
	d, _, _, _, _ := setup(t)
	if err := d.CreateNetwork(createReq(id('a'), nil)); err != nil {
		t.Fatal(err)
	}
	if _, err := d.CreateEndpoint(&network.CreateEndpointRequest{NetworkID: id('a'), EndpointID: id('e'),
		Interface: &network.EndpointInterface{Address: "10.1.0.5/24"},
		Options:   map[string]interface{}{optIfname: "wan0", "com.docker.network.endpoint.exposedports": []interface{}{}}}); err != nil {
		t.Fatal(err)
	}
	resp, err := d.Join(&network.JoinRequest{NetworkID: id('a'), EndpointID: id('e'), SandboxKey: "/var/run/docker/netns/x"})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(resp)
	if !strings.Contains(string(b), `"InterfaceName":{"SrcName":"x","DstPrefix":"eth","DstName":"wan0"}`) {
		t.Fatalf("Join answered %s", b)
	}
	// Without the option: no DstName, Docker numbers DstPrefix.
	if _, err := d.CreateEndpoint(&network.CreateEndpointRequest{NetworkID: id('a'), EndpointID: id('f'),
		Interface: &network.EndpointInterface{Address: "10.1.0.6/24"}}); err != nil {
		t.Fatal(err)
	}
	resp, err = d.Join(&network.JoinRequest{NetworkID: id('a'), EndpointID: id('f'), SandboxKey: "/var/run/docker/netns/y"})
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := json.Marshal(resp); strings.Contains(string(b), "DstName") {
		t.Fatalf("Join answered %s", b)
	}
	// A name the kernel would refuse fails docker run / connect up front.
	for _, bad := range []string{"", "this-name-is-too-long", "wan/0", "-x"} {
		_, err := d.CreateEndpoint(&network.CreateEndpointRequest{NetworkID: id('a'), EndpointID: id('g'),
			Options: map[string]interface{}{optIfname: bad}})
		if err == nil || !strings.Contains(err.Error(), optIfname) || !strings.Contains(err.Error(), "1 to 15") {
			t.Errorf("ifname %q: %v", bad, err)
		}
	}
	// Other com.docker keys stay Docker's: not refused as unknown, not kept.
	if ep := d.eps[id('e')]; len(ep.Options) != 1 || ep.Options[optIfname] != "wan0" {
		t.Fatalf("endpoint options %v", ep.Options)
	}
}
