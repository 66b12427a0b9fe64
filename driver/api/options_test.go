package api

import (
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
