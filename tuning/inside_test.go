package tuning

import (
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/safchain/ethtool"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

func TestParseInsideValidation(t *testing.T) {
	s, err := Parse(map[string]string{"sysctl.net.ipv4.tcp_keepalive_time": "600", "offload.tso": "off"},
		map[string]string{"sysctl.net.ipv4.conf.IFNAME.rp_filter": "2", "offload.tso": "on"})
	if err != nil {
		t.Fatal(err)
	}
	if s.Sysctls["net.ipv4.tcp_keepalive_time"] != "600" || s.Sysctls["net.ipv4.conf.IFNAME.rp_filter"] != "2" || s.Offloads["tso"] != true {
		t.Fatalf("parsed %+v", s)
	}
	for _, bad := range []struct{ k, v, want string }{
		{"sysctl.kernel.panic", "1", "only net.*"},
		{"sysctl.net.ipv4/../x", "1", "not a valid sysctl name"},
		{"sysctl.net..ipv4", "1", "not a valid sysctl name"},
		{"sysctl.net.ipv4.tcp_keepalive_time", "6\n00", "sysctl value"},
		{"sysctl.net.ipv4.tcp_keepalive_time", "", "sysctl value"},
		{"sysctl.net.core.IFNAME.x", "1", "IFNAME may only"},
		{"offload.tso", "maybe", "on or off"},
		{"offload.turbo", "on", "unknown offload"},
	} {
		if _, err := Parse(nil, map[string]string{bad.k: bad.v}); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("%s=%q: got %v, want %q", bad.k, bad.v, err, bad.want)
		}
	}
	if !IsInsideKey("sysctl.x") || !IsInsideKey("offload.tso") || IsInsideKey("rate.egress") {
		t.Fatal("IsInsideKey")
	}
}

func TestApplyInsideNamespace(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to create network namespaces")
	}
	runtime.LockOSThread()
	orig, _ := netns.Get()
	target, err := netns.NewNamed("wftunetest")
	if err != nil {
		runtime.UnlockOSThread()
		t.Skipf("cannot create a named namespace: %v", err)
	}
	_ = netns.Set(orig)
	runtime.UnlockOSThread()
	defer func() { target.Close(); _ = netns.DeleteNamed("wftunetest") }()

	h, _ := netlink.NewHandleAt(target)
	defer h.Close()
	if err := h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth7"}, PeerName: "peer7"}); err != nil {
		t.Fatal(err)
	}
	l, _ := h.LinkByName("eth7")
	mac := l.Attrs().HardwareAddr.String()
	in := Inside{HostRoot: "", Timeout: 2 * time.Second}
	s := Settings{TxQueueLen: -1, Sysctls: map[string]string{"net.ipv4.conf.IFNAME.rp_filter": "2", "net.ipv4.tcp_keepalive_time": "600"},
		Offloads: map[string]bool{"tso": false}}
	got, err := in.ApplyInside("/var/run/netns/wftunetest", Ident{SrcName: "wfcmoved", MAC: mac}, s, "")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(got, "net.ipv4.conf.eth7.rp_filter=2") {
		t.Fatalf("applied %q", got)
	}
	// Read back inside the namespace; the host's own values are untouched.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	_ = netns.Set(target)
	rp, _ := os.ReadFile("/proc/sys/net/ipv4/conf/eth7/rp_filter")
	ka, _ := os.ReadFile("/proc/sys/net/ipv4/tcp_keepalive_time")
	e, _ := ethtool.NewEthtool()
	f, _ := e.Features("eth7")
	e.Close()
	_ = netns.Set(orig)
	hostKa, _ := os.ReadFile("/proc/sys/net/ipv4/tcp_keepalive_time")
	if strings.TrimSpace(string(rp)) != "2" || strings.TrimSpace(string(ka)) != "600" || f["tx-tcp-segmentation"] {
		t.Fatalf("inside: rp_filter %q keepalive %q tso %v", rp, ka, f["tx-tcp-segmentation"])
	}
	if strings.TrimSpace(string(hostKa)) == "600" {
		t.Fatal("the host's own sysctl was changed")
	}
	// A namespace that never shows the interface: a bounded wait, then an error.
	if _, err := (Inside{Timeout: 300 * time.Millisecond}).ApplyInside("/var/run/netns/wftunetest", Ident{SrcName: "wfcmoved", MAC: "02:00:00:00:00:99"}, s, ""); err == nil {
		t.Fatal("no error for a missing interface")
	}
}
