package api

import (
	"net/netip"
	"strings"
	"testing"
)

func TestCheckKeysSuggests(t *testing.T) {
	allowed := []string{"type", "com.docker.network.bridge.enable_icc", "com.docker.network.driver.mtu"}
	err := CheckKeys("option", map[string]string{"com.docker.network.bridge.enable_ic": "true"}, allowed)
	if err == nil || !strings.Contains(err.Error(), `did you mean "com.docker.network.bridge.enable_icc"`) {
		t.Fatalf("got %v", err)
	}
	err = CheckKeys("option", map[string]string{"mtu": "1400"}, allowed)
	if err == nil || !strings.Contains(err.Error(), `did you mean "com.docker.network.driver.mtu"`) {
		t.Fatalf("got %v", err)
	}
	if err := CheckKeys("option", map[string]string{"type": "bridge"}, allowed); err != nil {
		t.Fatal(err)
	}
	if s := Closest("zzzzzzzzzzzz", allowed); s != "" {
		t.Fatalf("far-off key got suggestion %q", s)
	}
}

func TestParsers(t *testing.T) {
	if _, err := Bool(map[string]string{"k": "yes"}, "k", true); err == nil || !strings.Contains(err.Error(), "k=") {
		t.Fatalf("bool: %v", err)
	}
	if b, _ := Bool(map[string]string{"k": "false"}, "k", true); b {
		t.Fatal("false parsed as true")
	}
	for _, bad := range []string{"67", "65536", "x", "-1"} {
		if _, err := MTU(map[string]string{"m": bad}, "m"); err == nil {
			t.Fatalf("MTU %s accepted", bad)
		}
	}
	if n, _ := MTU(map[string]string{"m": "1400"}, "x", "m"); n != 1400 {
		t.Fatalf("MTU = %d", n)
	}
	for _, bad := range []string{"", "a/b", "sixteen-chars-xx", "a b", "+", "eth+", "x%d", "-x", ".", "..", "a:b"} {
		if IfName("k", bad) == nil {
			t.Fatalf("ifname %q accepted", bad)
		}
	}
	for _, good := range []string{"eth0", "eth0.30", "weft-br_1", "a"} {
		if err := IfName("k", good); err != nil {
			t.Fatalf("ifname %q refused: %v", good, err)
		}
	}
}

func TestGateways(t *testing.T) {
	n := &Network{Gateways: []netip.Prefix{netip.MustParsePrefix("10.0.0.1/24"), netip.MustParsePrefix("fd00::1/64")}}
	both := &Endpoint{Addr4: netip.MustParsePrefix("10.0.0.2/24"), Addr6: netip.MustParsePrefix("fd00::2/64")}
	if v4, v6 := Gateways(n, both); v4 != "10.0.0.1" || v6 != "fd00::1" {
		t.Fatalf("dual stack: %q %q", v4, v6)
	}
	if v4, v6 := Gateways(n, &Endpoint{Addr4: both.Addr4}); v4 != "10.0.0.1" || v6 != "" {
		t.Fatalf("IPv4-only endpoint got an IPv6 gateway: %q %q", v4, v6)
	}
	n.Internal = true
	if v4, v6 := Gateways(n, both); v4 != "" || v6 != "" {
		t.Fatalf("internal network got gateways: %q %q", v4, v6)
	}
}
