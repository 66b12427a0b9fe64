package driver

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/docker/go-plugins-helpers/network"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/weft-net/weft/driver/api"
	"github.com/weft-net/weft/internal/nstest"
	"github.com/weft-net/weft/store"
	"github.com/weft-net/weft/tuning"
)

// vethType is the fake type with a real interface for Docker to move.
type vethType struct {
	*fakeType
	src map[string]string // endpoint ID -> its interface in the host namespace
}

func (v *vethType) Join(_ *api.Network, ep *api.Endpoint) (*api.JoinInfo, error) {
	return &api.JoinInfo{SrcName: v.src[ep.ID], DstPrefix: "eth"}, nil
}

// readSysctl reads a sysctl (as a path under /proc/sys) inside ns, on a
// locked thread that is thrown away afterwards.
func readSysctl(t *testing.T, ns netns.NsHandle, key string) string {
	t.Helper()
	out := make(chan string)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with the goroutine
		if err := netns.Set(ns); err != nil {
			out <- "error: " + err.Error()
			return
		}
		b, err := os.ReadFile("/proc/sys/" + key)
		if err != nil {
			out <- "error: " + err.Error()
			return
		}
		out <- strings.TrimSpace(string(b))
	}()
	return <-out
}

// Engine 28+ through the driver: Join prepares in the existing namespace,
// the values are in place when Docker has moved and renamed the interface
// (to the endpoint's ifname), the operational info reports what was
// applied, and Leave before the move gives borrowed defaults back.
func TestJoinTimeTuningThroughTheDriver(t *testing.T) {
	nstest.Run(t, func() {
		host, _ := netns.Get()
		defer host.Close()
		name := fmt.Sprintf("wfdj%d", os.Getpid())
		sbx, err := netns.NewNamed(name)
		if err != nil {
			_ = netns.Set(host)
			t.Skipf("cannot create a named namespace: %v", err)
		}
		_ = netns.Set(host)
		defer func() { sbx.Close(); _ = netns.DeleteNamed(name) }()
		sandboxKey := filepath.Join("/var/run/netns", name)

		st, err := store.Open(filepath.Join(t.TempDir(), "s.db"))
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		vt := &vethType{fakeType: newFakeType(), src: map[string]string{id('e'): "wfdjc0", id('f'): "wfdjc1"}}
		d, err := New(st, &fakeFirewall{}, "local", "unittest", vt)
		if err != nil {
			t.Fatal(err)
		}
		d.SetInside(tuning.Inside{Timeout: 5 * time.Second})
		if err := d.Reconcile(); err != nil {
			t.Fatal(err)
		}
		if err := d.CreateNetwork(createReq(id('a'), map[string]interface{}{"sysctl.net.ipv4.conf.IFNAME.rp_filter": "2"})); err != nil {
			t.Fatal(err)
		}
		orig := readSysctl(t, sbx, "net/ipv4/conf/default/rp_filter")
		if orig == "2" {
			t.Fatal("the namespace's default rp_filter already is 2: the test would prove nothing")
		}
		for _, dev := range []string{"wfdjc0", "wfdjc1"} {
			if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: dev}, PeerName: dev + "p"}); err != nil {
				t.Fatal(err)
			}
		}
		l, _ := netlink.LinkByName("wfdjc0")
		if _, err := d.CreateEndpoint(&network.CreateEndpointRequest{NetworkID: id('a'), EndpointID: id('e'),
			Interface: &network.EndpointInterface{Address: "10.1.0.5/24", MacAddress: l.Attrs().HardwareAddr.String()},
			Options:   map[string]interface{}{optIfname: "wan0"}}); err != nil {
			t.Fatal(err)
		}
		resp, err := d.Join(&network.JoinRequest{NetworkID: id('a'), EndpointID: id('e'), SandboxKey: sandboxKey})
		if err != nil {
			t.Fatal(err)
		}
		// Docker (29.8+): move, rename to DstName.
		if err := netlink.LinkSetNsFd(l, int(sbx)); err != nil {
			t.Fatal(err)
		}
		h, _ := netlink.NewHandleAt(sbx)
		defer h.Close()
		moved, err := h.LinkByName("wfdjc0")
		if err != nil {
			t.Fatal(err)
		}
		if err := h.LinkSetName(moved, resp.InterfaceName.DstName); err != nil {
			t.Fatal(err)
		}
		if v := readSysctl(t, sbx, "net/ipv4/conf/wan0/rp_filter"); v != "2" {
			t.Fatalf("rp_filter of wan0 right after the move: %s", v)
		}
		deadline := time.Now().Add(5 * time.Second)
		for {
			info, err := d.EndpointInfo(&network.InfoRequest{NetworkID: id('a'), EndpointID: id('e')})
			if err != nil {
				t.Fatal(err)
			}
			if got, _ := info.Value["weft.tuning.inside"].(string); got == "applied: net.ipv4.conf.wan0.rp_filter=2; set before the move: net.ipv4.conf.IFNAME.rp_filter=2" {
				break
			} else if time.Now().After(deadline) {
				t.Fatalf("weft.tuning.inside = %q", got)
			}
			time.Sleep(20 * time.Millisecond)
		}
		if v := readSysctl(t, sbx, "net/ipv4/conf/default/rp_filter"); v != orig {
			t.Fatalf("default rp_filter %s after the move, was %s", v, orig)
		}
		// A second endpoint leaves before Docker moved its interface.
		if _, err := d.CreateEndpoint(&network.CreateEndpointRequest{NetworkID: id('a'), EndpointID: id('f'),
			Interface: &network.EndpointInterface{Address: "10.1.0.6/24"}}); err != nil {
			t.Fatal(err)
		}
		if _, err := d.Join(&network.JoinRequest{NetworkID: id('a'), EndpointID: id('f'), SandboxKey: sandboxKey}); err != nil {
			t.Fatal(err)
		}
		if v := readSysctl(t, sbx, "net/ipv4/conf/default/rp_filter"); v != "2" {
			t.Fatalf("default rp_filter %s while the second endpoint's move is pending", v)
		}
		if err := d.Leave(&network.LeaveRequest{NetworkID: id('a'), EndpointID: id('f')}); err != nil {
			t.Fatal(err)
		}
		deadline = time.Now().Add(2 * time.Second)
		for readSysctl(t, sbx, "net/ipv4/conf/default/rp_filter") != orig {
			if time.Now().After(deadline) {
				t.Fatal("Leave did not give the borrowed default back")
			}
			time.Sleep(20 * time.Millisecond)
		}
	})
}
