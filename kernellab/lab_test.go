// Package kernellab holds tests that need kernel features this CI machine
// lacks (ipvlan, 802.1q, dummy). scripts/kernel-lab.sh builds them
// statically, boots Debian's kernel under qemu with them in an initramfs,
// and reads the results from the serial console. They start the real weft
// binary and drive it over its socket the way libnetwork does: CreateNetwork,
// CreateEndpoint, Join, then move the returned interface into a namespace
// and configure it as Docker would.
package kernellab

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

const sock = "/run/weft.sock"

var pluginLog bytes.Buffer

func TestMain(m *testing.M) {
	if os.Getenv("WEFT_KERNEL_LAB") != "1" {
		fmt.Println("kernellab: not run here: these tests run inside the qemu kernel lab (make test-kernel)")
		os.Exit(0)
	}
	cmd := exec.Command("/weft")
	cmd.Env = append(os.Environ(), "SOCKET="+sock, "STATE_DIR=/tmp/weft", "IPTABLES_BACKEND=none", "LOG_LEVEL=debug",
		"HOST_ROOT=/") // sandboxes are paths in the lab's own root (there is no dockerd)
	cmd.Stdout, cmd.Stderr = &pluginLog, &pluginLog
	if err := cmd.Start(); err != nil {
		fmt.Println("kernellab: start weft:", err)
		os.Exit(1)
	}
	for i := 0; i < 200; i++ {
		if _, err := call("NetworkDriver.GetCapabilities", struct{}{}); err == nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	code := m.Run()
	_ = cmd.Process.Kill()
	if code != 0 {
		fmt.Println("---- weft log ----")
		fmt.Println(pluginLog.String())
	}
	os.Exit(code)
}

var client = &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
	DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) { return net.Dial("unix", sock) }}}

// call posts one protocol call and decodes the reply; a non-200 reply is an error with Docker's message.
func call(method string, req any) (map[string]any, error) {
	b, _ := json.Marshal(req)
	resp, err := client.Post("http://weft/"+method, "application/vnd.docker.plugins.v1.2+json", bytes.NewReader(b))
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	out := map[string]any{}
	_ = json.Unmarshal(body, &out)
	if resp.StatusCode != 200 {
		return out, fmt.Errorf("%s: %v", method, out["Err"])
	}
	return out, nil
}

func mustCall(t *testing.T, method string, req any) map[string]any {
	t.Helper()
	out, err := call(method, req)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

var seq int

func id(prefix string) string {
	seq++
	s := fmt.Sprintf("%s%d", prefix, seq)
	return s + strings.Repeat("0", 64-len(s))
}

// createNetwork creates a weft network as Docker does with its default IPAM.
func createNetwork(t *testing.T, opts map[string]string, subnet, gw string) string {
	t.Helper()
	nid := id("n")
	generic := map[string]any{}
	for k, v := range opts {
		generic[k] = v
	}
	ipv4 := map[string]any{"AddressSpace": "LocalDefault", "Pool": subnet, "Gateway": gw}
	if a, ok := opts["_aux_host"]; ok {
		delete(generic, "_aux_host")
		ipv4["AuxAddresses"] = map[string]any{"host": a}
	}
	mustCall(t, "NetworkDriver.CreateNetwork", map[string]any{"NetworkID": nid,
		"Options": map[string]any{"com.docker.network.generic": generic}, "IPv4Data": []any{ipv4}})
	return nid
}

func deleteNetwork(t *testing.T, nid string) {
	t.Helper()
	mustCall(t, "NetworkDriver.DeleteNetwork", map[string]any{"NetworkID": nid})
}

// container is an endpoint joined and moved into its own namespace.
type container struct {
	ns   netns.NsHandle
	addr string
	join map[string]any
}

func newNS(t *testing.T) netns.NsHandle {
	t.Helper()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()
	ns, err := netns.New()
	if err != nil {
		t.Fatal(err)
	}
	if err := netns.Set(orig); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Close() })
	return ns
}

// attach creates and joins an endpoint, then does what Docker does with the
// interface: moves it into a fresh namespace, names it eth0, sets the
// address and the routes from the Join reply.
func attach(t *testing.T, nid, addr string) *container {
	t.Helper()
	eid := id("e")
	mustCall(t, "NetworkDriver.CreateEndpoint", map[string]any{"NetworkID": nid, "EndpointID": eid,
		"Interface": map[string]any{"Address": addr}})
	j := mustCall(t, "NetworkDriver.Join", map[string]any{"NetworkID": nid, "EndpointID": eid, "SandboxKey": "/none"})
	src := j["InterfaceName"].(map[string]any)["SrcName"].(string)
	ns := newNS(t)
	l, err := netlink.LinkByName(src)
	if err != nil {
		t.Fatalf("interface %s from Join: %v", src, err)
	}
	if err := netlink.LinkSetNsFd(l, int(ns)); err != nil {
		t.Fatal(err)
	}
	h, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	l, _ = h.LinkByName(src)
	if err := h.LinkSetName(l, "eth0"); err != nil {
		t.Fatal(err)
	}
	a, _ := netlink.ParseAddr(addr)
	if err := h.AddrAdd(l, a); err != nil {
		t.Fatal(err)
	}
	if err := h.LinkSetUp(l); err != nil {
		t.Fatal(err)
	}
	lo, _ := h.LinkByName("lo")
	_ = h.LinkSetUp(lo)
	if gw, _ := j["Gateway"].(string); gw != "" {
		if err := h.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Gw: net.ParseIP(gw)}); err != nil {
			t.Fatalf("default route via %s: %v", gw, err)
		}
	}
	for _, r := range asList(j["StaticRoutes"]) {
		m := r.(map[string]any)
		_, dst, _ := net.ParseCIDR(m["Destination"].(string))
		if m["RouteType"].(float64) == 1 {
			if err := h.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Dst: dst, Scope: netlink.SCOPE_LINK}); err != nil {
				t.Fatalf("device route %s: %v", dst, err)
			}
		}
	}
	return &container{ns: ns, addr: strings.Split(addr, "/")[0], join: j}
}

func asList(v any) []any {
	l, _ := v.([]any)
	return l
}

// ping runs busybox ping inside c's namespace.
func (c *container) ping(target string) bool {
	// By path through this process's fd table: wrapping the fd in an
	// os.File would close it (and whatever reuses its number) when collected.
	cmd := exec.Command("nsenter", fmt.Sprintf("--net=/proc/%d/fd/%d", os.Getpid(), int(c.ns)), "ping", "-c", "1", "-W", "2", target)
	return cmd.Run() == nil
}

func dummy(t *testing.T, name string) {
	t.Helper()
	if err := netlink.LinkAdd(&netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Name: name}}); err != nil {
		t.Fatalf("dummy %s: %v", name, err)
	}
	l, _ := netlink.LinkByName(name)
	_ = netlink.LinkSetUp(l)
	t.Cleanup(func() { _ = netlink.LinkDel(l) })
}

func TestIPvlanModesAndFlags(t *testing.T) {
	cases := []struct {
		mode, flag string
		talk       bool // two containers on the network reach each other
	}{
		{"l2", "bridge", true}, {"l2", "private", false}, {"l2", "vepa", false},
		{"l3", "bridge", true}, {"l3", "private", false}, {"l3", "vepa", false},
		{"l3s", "bridge", true}, {"l3s", "private", false},
	}
	for i, c := range cases {
		t.Run(c.mode+"-"+c.flag, func(t *testing.T) {
			parentName := fmt.Sprintf("labp%d", i)
			dummy(t, parentName)
			subnet := fmt.Sprintf("10.60.%d.0/24", i)
			nid := createNetwork(t, map[string]string{"type": "ipvlan", "parent": parentName, "ipvlan_mode": c.mode, "ipvlan_flag": c.flag},
				subnet, fmt.Sprintf("10.60.%d.1/24", i))
			a := attach(t, nid, fmt.Sprintf("10.60.%d.2/24", i))
			b := attach(t, nid, fmt.Sprintf("10.60.%d.3/24", i))
			if got := a.ping(b.addr); got != c.talk {
				t.Fatalf("ipvlan %s/%s: ping between containers = %v, want %v", c.mode, c.flag, got, c.talk)
			}
			// The kernel state matches the request.
			l, _ := netlink.LinkByName(parentName)
			if l == nil {
				t.Fatal("parent gone")
			}
			h, err := netlink.NewHandleAt(a.ns, unix.NETLINK_ROUTE)
			if err != nil {
				t.Fatal(err)
			}
			eth, err := h.LinkByName("eth0")
			h.Close()
			if err != nil {
				t.Fatal(err)
			}
			iv, ok := eth.(*netlink.IPVlan)
			if !ok || iv.Mode != map[string]netlink.IPVlanMode{"l2": netlink.IPVLAN_MODE_L2, "l3": netlink.IPVLAN_MODE_L3, "l3s": netlink.IPVLAN_MODE_L3S}[c.mode] {
				t.Fatalf("container interface %T %+v is not ipvlan %s", eth, eth, c.mode)
			}
			// L3 modes: device default route, no gateway, no gateway bridge.
			if c.mode != "l2" {
				if a.join["Gateway"] != nil && a.join["Gateway"] != "" || a.join["DisableGatewayService"] != true || len(asList(a.join["StaticRoutes"])) == 0 {
					t.Fatalf("L3 join reply %v", a.join)
				}
			} else if a.join["Gateway"] != fmt.Sprintf("10.60.%d.1", i) {
				t.Fatalf("L2 join reply gateway %v", a.join["Gateway"])
			}
			deleteNetwork(t, nid)
			if _, err := netlink.LinkByName(parentName); err != nil {
				t.Fatal("a user's parent was deleted with the network")
			}
		})
	}
}

func TestIPvlanHostAccess(t *testing.T) {
	dummy(t, "labha")
	nid := createNetwork(t, map[string]string{"type": "ipvlan", "parent": "labha", "host_access": "true", "_aux_host": "10.61.0.250/24"},
		"10.61.0.0/24", "10.61.0.1/24")
	c := attach(t, nid, "10.61.0.2/24")
	out, err := exec.Command("ping", "-c", "1", "-W", "2", c.addr).CombinedOutput()
	if err != nil {
		t.Fatalf("host cannot reach its ipvlan container with host_access: %v %s", err, out)
	}
	deleteNetwork(t, nid)
	if _, err := netlink.LinkByName("wfs" + nid[:12]); err == nil {
		t.Fatal("host_access shim left after the network was deleted")
	}
}

// TestVLANParentCreatedTaggedDeleted: parent=labv0.30 does not exist, so
// weft creates the 802.1q sub-interface; a LAN namespace that only has a
// VLAN 30 interface answers, which proves the frames are tagged; the
// sub-interface goes with the last network that uses it.
func TestVLANParentCreatedTaggedDeleted(t *testing.T) {
	if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "labv0"}, PeerName: "labv1"}); err != nil {
		t.Fatal(err)
	}
	v0, _ := netlink.LinkByName("labv0")
	t.Cleanup(func() { _ = netlink.LinkDel(v0) })
	_ = netlink.LinkSetUp(v0)
	lan := newNS(t)
	v1, _ := netlink.LinkByName("labv1")
	if err := netlink.LinkSetNsFd(v1, int(lan)); err != nil {
		t.Fatal(err)
	}
	h, err := netlink.NewHandleAt(lan, unix.NETLINK_ROUTE)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	v1, _ = h.LinkByName("labv1")
	_ = h.LinkSetUp(v1)
	for vid, addr := range map[int]string{30: "10.70.0.254/24", 40: "10.71.0.254/24"} {
		name := fmt.Sprintf("labv1.%d", vid)
		if err := h.LinkAdd(&netlink.Vlan{LinkAttrs: netlink.LinkAttrs{Name: name, ParentIndex: v1.Attrs().Index}, VlanId: vid}); err != nil {
			t.Fatal(err)
		}
		vl, _ := h.LinkByName(name)
		a, _ := netlink.ParseAddr(addr)
		_ = h.AddrAdd(vl, a)
		_ = h.LinkSetUp(vl)
	}

	mac := createNetwork(t, map[string]string{"type": "macvlan", "parent": "labv0.30"}, "10.70.0.0/24", "10.70.0.254/24")
	sub, err := netlink.LinkByName("labv0.30")
	if err != nil {
		t.Fatal("labv0.30 was not created")
	}
	if v, ok := sub.(*netlink.Vlan); !ok || v.VlanId != 30 || v.ParentIndex != v0.Attrs().Index {
		t.Fatalf("labv0.30 is %T %+v, want VLAN 30 on labv0", sub, sub)
	}
	c := attach(t, mac, "10.70.0.2/24")
	if !c.ping("10.70.0.254") {
		t.Fatal("macvlan on labv0.30 cannot reach the VLAN 30 host: frames not tagged 30?")
	}
	// A second network on the same weft-made parent keeps it alive.
	mac2 := createNetwork(t, map[string]string{"type": "macvlan", "parent": "labv0.30"}, "10.72.0.0/24", "10.72.0.1/24")
	deleteNetwork(t, mac)
	if _, err := netlink.LinkByName("labv0.30"); err != nil {
		t.Fatal("labv0.30 deleted while another network uses it")
	}
	deleteNetwork(t, mac2)
	if _, err := netlink.LinkByName("labv0.30"); err == nil {
		t.Fatal("labv0.30 left after the last network that used it")
	}

	// ipvlan over an auto-created 802.1q parent.
	iv := createNetwork(t, map[string]string{"type": "ipvlan", "parent": "labv0.40"}, "10.71.0.0/24", "10.71.0.254/24")
	ci := attach(t, iv, "10.71.0.2/24")
	if !ci.ping("10.71.0.254") {
		t.Fatal("ipvlan on labv0.40 cannot reach the VLAN 40 host")
	}
	deleteNetwork(t, iv)
	if _, err := netlink.LinkByName("labv0.40"); err == nil {
		t.Fatal("labv0.40 left after its network")
	}
	if _, err := netlink.LinkByName("labv0"); err != nil {
		t.Fatal("the base interface was deleted")
	}
}

func TestParentlessMacvlanUsesDummy(t *testing.T) {
	nid := createNetwork(t, map[string]string{"type": "macvlan"}, "10.73.0.0/24", "10.73.0.1/24")
	l, err := netlink.LinkByName("wfd" + nid[:12])
	if err != nil {
		t.Fatal("no placeholder parent")
	}
	if l.Type() != "dummy" {
		t.Fatalf("placeholder is a %s; with dummy available it should be a dummy", l.Type())
	}
	a, b := attach(t, nid, "10.73.0.2/24"), attach(t, nid, "10.73.0.3/24")
	if !a.ping(b.addr) {
		t.Fatal("containers on a parent-less network cannot talk")
	}
	if g, _ := a.join["Gateway"].(string); g != "" || a.join["DisableGatewayService"] != true {
		t.Fatalf("parent-less network is internal; join reply %v", a.join)
	}
	deleteNetwork(t, nid)
	if _, err := netlink.LinkByName("wfd" + nid[:12]); err == nil {
		t.Fatal("placeholder left")
	}
}
