package driver

import (
	"errors"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/docker/go-plugins-helpers/network"

	"github.com/weft-net/weft/driver/api"
	"github.com/weft-net/weft/firewall"
	"github.com/weft-net/weft/store"
)

// fakeType records calls and fails where told to.
type fakeType struct {
	calls       []string
	failCreate  error
	failEP      error
	kernelNets  map[string]bool
	kernelEPs   map[string]bool
	reconciled  map[string]int
	portsInRule int
}

func newFakeType() *fakeType {
	return &fakeType{kernelNets: map[string]bool{}, kernelEPs: map[string]bool{}, reconciled: map[string]int{}}
}

func (f *fakeType) Name() string      { return "fake" }
func (f *fakeType) Options() []string { return []string{"colour"} }
func (f *fakeType) Validate(n *api.Network, _ []*api.Network) error {
	if n.Options["colour"] == "red" {
		return errors.New("option colour=red: not allowed")
	}
	n.State = map[string]string{"bridge": "fk" + n.ID[:4]}
	return nil
}
func (f *fakeType) CreateNetwork(n *api.Network, _ []*api.Network) error {
	f.calls = append(f.calls, "create "+n.ID)
	if f.failCreate != nil {
		return f.failCreate
	}
	f.kernelNets[n.ID] = true
	return nil
}
func (f *fakeType) DeleteNetwork(n *api.Network, _ []*api.Network) error {
	f.calls = append(f.calls, "delete "+n.ID)
	delete(f.kernelNets, n.ID)
	return nil
}
func (f *fakeType) CreateEndpoint(_ *api.Network, ep *api.Endpoint) error {
	if f.failEP != nil {
		return f.failEP
	}
	f.kernelEPs[ep.ID] = true
	ep.HostIf = "fkh" + ep.ID[:4]
	return nil
}
func (f *fakeType) DeleteEndpoint(_ *api.Network, ep *api.Endpoint) error {
	delete(f.kernelEPs, ep.ID)
	return nil
}
func (f *fakeType) Join(*api.Network, *api.Endpoint) (*api.JoinInfo, error) {
	return &api.JoinInfo{SrcName: "x", DstPrefix: "eth"}, nil
}
func (f *fakeType) Leave(*api.Network, *api.Endpoint) error { return nil }
func (f *fakeType) Reconcile(n *api.Network, eps []*api.Endpoint) error {
	f.reconciled[n.ID] = len(eps)
	return nil
}
func (f *fakeType) Firewall(n *api.Network, eps []*api.Endpoint) *firewall.Network {
	fn := &firewall.Network{ID: n.ID, Bridge: n.State["bridge"]}
	for _, ep := range eps {
		for range ep.Ports {
			fn.Ports = append(fn.Ports, firewall.PortMap{})
		}
	}
	return fn
}

// fakeFirewall records the last synced networks and fails when told to.
type fakeFirewall struct {
	last []firewall.Network
	fail error
}

func (f *fakeFirewall) Forget() {}

func (f *fakeFirewall) Sync(n []firewall.Network, _ []string) error {
	if f.fail != nil {
		return f.fail
	}
	f.last = n
	return nil
}

func id(c byte) string { return strings.Repeat(string(c), 64) }

func setup(t *testing.T) (*Driver, *fakeType, *fakeFirewall, *store.Store, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "s.db")
	st, err := store.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	ft, fw := newFakeType(), &fakeFirewall{}
	d, err := New(st, fw, "local", "unittest", ft)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Reconcile(); err != nil {
		t.Fatal(err)
	}
	return d, ft, fw, st, path
}

func createReq(netID string, opts map[string]interface{}) *network.CreateNetworkRequest {
	o := map[string]interface{}{"type": "fake"}
	for k, v := range opts {
		o[k] = v
	}
	return &network.CreateNetworkRequest{NetworkID: netID, Options: map[string]interface{}{optGeneric: o},
		IPv4Data: []*network.IPAMData{{Pool: "10.1.0.0/24", Gateway: "10.1.0.1/24"}}}
}

func count(t *testing.T, st *store.Store, bucket string) int {
	n := 0
	_ = st.View(func(tx *store.Tx) error { n = tx.Count(bucket, ""); return nil })
	return n
}

func TestCreateNetworkRollsBackWhenFirewallFails(t *testing.T) {
	d, ft, fw, st, _ := setup(t)
	fw.fail = errors.New("iptables broke")
	err := d.CreateNetwork(createReq(id('a'), nil))
	if err == nil || !strings.Contains(err.Error(), "iptables broke") {
		t.Fatalf("got %v", err)
	}
	if len(ft.kernelNets) != 0 {
		t.Fatalf("kernel objects left: %v (calls %v)", ft.kernelNets, ft.calls)
	}
	if n := count(t, st, bucketNetworks); n != 0 {
		t.Fatalf("%d network records left", n)
	}
	if nn, _ := d.Counts(); nn != 0 {
		t.Fatalf("%d networks in memory", nn)
	}
}

func TestCreateNetworkValidationCreatesNothing(t *testing.T) {
	d, ft, _, st, _ := setup(t)
	for _, c := range []struct {
		opts map[string]interface{}
		want string
	}{
		{map[string]interface{}{"colur": "blue"}, `did you mean "colour"`},
		{map[string]interface{}{"colour": "red"}, "colour=red"},
		{map[string]interface{}{"type": "fak"}, `did you mean "fake"`},
	} {
		err := d.CreateNetwork(createReq(id('b'), c.opts))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Fatalf("%v: got %v", c.opts, err)
		}
	}
	if len(ft.calls) != 0 || count(t, st, bucketNetworks) != 0 {
		t.Fatalf("calls %v, records %d", ft.calls, count(t, st, bucketNetworks))
	}
}

func TestOverlappingSubnetRefused(t *testing.T) {
	d, _, _, _, _ := setup(t)
	if err := d.CreateNetwork(createReq(id('a'), nil)); err != nil {
		t.Fatal(err)
	}
	err := d.CreateNetwork(createReq(id('b'), nil))
	if err == nil || !strings.Contains(err.Error(), "overlaps") {
		t.Fatalf("got %v", err)
	}
}

func TestStatePersistsAndReconciles(t *testing.T) {
	d, _, _, st, path := setup(t)
	if err := d.CreateNetwork(createReq(id('a'), nil)); err != nil {
		t.Fatal(err)
	}
	resp, err := d.CreateEndpoint(&network.CreateEndpointRequest{NetworkID: id('a'), EndpointID: id('e'),
		Interface: &network.EndpointInterface{Address: "10.1.0.5/24"}})
	if err != nil {
		t.Fatal(err)
	}
	if resp.Interface == nil || resp.Interface.MacAddress != "02:42:0a:01:00:05" {
		t.Fatalf("MAC not filled in from the address: %+v", resp.Interface)
	}
	if _, err := d.Join(&network.JoinRequest{NetworkID: id('a'), EndpointID: id('e'), SandboxKey: "/var/run/docker/netns/x"}); err != nil {
		t.Fatal(err)
	}
	st.Close()

	// A restarted plugin finds everything and hands it to the type.
	st2, err := store.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer st2.Close()
	ft2 := newFakeType()
	d2, err := New(st2, &fakeFirewall{}, "local", "unittest", ft2)
	if err != nil {
		t.Fatal(err)
	}
	if err := d2.Reconcile(); err != nil {
		t.Fatal(err)
	}
	if ft2.reconciled[id('a')] != 1 {
		t.Fatalf("reconcile saw %v", ft2.reconciled)
	}
	ep := d2.eps[id('e')]
	if ep == nil || !ep.Joined || ep.Sandbox != "/var/run/docker/netns/x" || ep.Addr4.String() != "10.1.0.5/24" {
		t.Fatalf("endpoint after restart: %+v", ep)
	}
	// Deleting the network takes its endpoint records with it.
	if err := d2.DeleteNetwork(&network.DeleteNetworkRequest{NetworkID: id('a')}); err != nil {
		t.Fatal(err)
	}
	if count(t, st2, bucketNetworks)+count(t, st2, bucketEndpoints) != 0 {
		t.Fatal("records left after DeleteNetwork")
	}
}

func TestCreateEndpointFailureLeavesNoRecord(t *testing.T) {
	d, ft, _, st, _ := setup(t)
	if err := d.CreateNetwork(createReq(id('a'), nil)); err != nil {
		t.Fatal(err)
	}
	ft.failEP = errors.New("veth failed")
	if _, err := d.CreateEndpoint(&network.CreateEndpointRequest{NetworkID: id('a'), EndpointID: id('e')}); err == nil {
		t.Fatal("no error")
	}
	if count(t, st, bucketEndpoints) != 0 {
		t.Fatal("endpoint record left")
	}
	ft.failEP = nil
	_, err := d.CreateEndpoint(&network.CreateEndpointRequest{NetworkID: id('a'), EndpointID: id('f'),
		Options: map[string]interface{}{"speed": "fast"}})
	if err == nil || !strings.Contains(err.Error(), `"speed"`) {
		t.Fatalf("unknown endpoint option: %v", err)
	}
}

func TestPublishRollsBackAndReleasesPorts(t *testing.T) {
	d, _, fw, st, _ := setup(t)
	if err := d.CreateNetwork(createReq(id('a'), nil)); err != nil {
		t.Fatal(err)
	}
	if _, err := d.CreateEndpoint(&network.CreateEndpointRequest{NetworkID: id('a'), EndpointID: id('e'),
		Interface: &network.EndpointInterface{Address: "10.1.0.5/24"}}); err != nil {
		t.Fatal(err)
	}
	// Take a free port and publish it; a failing firewall must release it.
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	pm := []interface{}{map[string]interface{}{"Proto": float64(6), "Port": float64(80), "HostIP": "127.0.0.1", "HostPort": float64(port)}}
	req := &network.ProgramExternalConnectivityRequest{NetworkID: id('a'), EndpointID: id('e'), Options: map[string]interface{}{optPortMap: pm}}
	fw.fail = errors.New("iptables broke")
	if err := d.ProgramExternalConnectivity(req); err == nil {
		t.Fatal("no error")
	}
	if l, err := net.Listen("tcp4", "127.0.0.1:"+itoa(port)); err != nil {
		t.Fatalf("port %d still held after rollback: %v", port, err)
	} else {
		l.Close()
	}
	fw.fail = nil
	if err := d.ProgramExternalConnectivity(req); err != nil {
		t.Fatal(err)
	}
	if _, err := net.Listen("tcp4", "127.0.0.1:"+itoa(port)); err == nil {
		t.Fatalf("port %d not reserved while published", port)
	}
	if len(fw.last) != 1 || len(fw.last[0].Ports) != 1 {
		t.Fatalf("firewall not told about the port: %+v", fw.last)
	}
	var saved api.Endpoint
	_ = st.View(func(tx *store.Tx) error { _, err := tx.Get(bucketEndpoints, id('a')+"/"+id('e'), &saved); return err })
	if len(saved.Ports) != 1 || int(saved.Ports[0].HostPort) != port || saved.Ports[0].IP != "10.1.0.5" {
		t.Fatalf("published port not persisted: %+v", saved.Ports)
	}
	if err := d.RevokeExternalConnectivity(&network.RevokeExternalConnectivityRequest{NetworkID: id('a'), EndpointID: id('e')}); err != nil {
		t.Fatal(err)
	}
	if l, err := net.Listen("tcp4", "127.0.0.1:"+itoa(port)); err != nil {
		t.Fatalf("port %d still held after revoke: %v", port, err)
	} else {
		l.Close()
	}
}

func itoa(i int) string { return strconv.Itoa(i) }

func TestParentMap(t *testing.T) {
	m, err := ParseParentMap(" eth0=ens5, bond0=eth1 ,")
	if err != nil || m["eth0"] != "ens5" || m["bond0"] != "eth1" || len(m) != 2 {
		t.Fatalf("parsed %v, %v", m, err)
	}
	for _, bad := range []string{"eth0", "eth0=", "=ens5", "eth0=a b"} {
		if _, err := ParseParentMap(bad); err == nil || !strings.Contains(err.Error(), "PARENT_MAP") {
			t.Errorf("PARENT_MAP=%q: %v", bad, err)
		}
	}
	d := &Driver{parentMap: m}
	for in, want := range map[string]string{"eth0": "ens5", "eth0.10": "ens5.10", "eth2": "eth2"} {
		o := map[string]string{"parent": in}
		d.mapParent(o)
		if o["parent"] != want {
			t.Errorf("parent %s -> %s, want %s", in, o["parent"], want)
		}
	}
	o := map[string]string{"type": "macvlan"}
	d.mapParent(o)
	if _, ok := o["parent"]; ok {
		t.Error("a parent appeared from nowhere")
	}
}
