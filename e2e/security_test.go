package e2e

import (
	"fmt"
	"net"
	"strings"
	"testing"
	"time"
)

// TestDockerNetworkCreatedLaterStaysIsolated: Docker puts each new bridge
// network's ACCEPT rules at the top of FORWARD. A network made after the
// weft network must still not reach it, nor be reached from it.
func TestDockerNetworkCreatedLaterStaysIsolated(t *testing.T) {
	n := ipamNetwork(t)
	w := sleeper(t, "--network", n)
	dn := uniq("dnet")
	mustDocker(t, "network", "create", "-d", "bridge", "--subnet", "10.97.0.0/24", dn)
	t.Cleanup(func() { _, _ = docker("network", "rm", dn) })
	d := sleeper(t, "--network", dn)
	if canPing(d, ipOf(t, w, n)) {
		t.Fatal("a Docker network created after the weft network reached a weft container")
	}
	if canPing(w, ipOf(t, d, dn)) {
		t.Fatal("a weft container reached a container on a later Docker network")
	}
	// The jump sits in DOCKER-USER, ahead of everything Docker added; with
	// Docker's nftables backend (no DOCKER-USER) at the top of FORWARD.
	home := "DOCKER-USER"
	if firewallBackend() == "nftables" {
		home = "FORWARD"
	}
	if rules := sh(t, "iptables-nft -S "+home); !strings.Contains(rules, "-A "+home+" -j WEFT-FORWARD") {
		t.Fatalf("weft jump not in %s:\n%s", home, rules)
	}
	// Flushing that chain (as firewall scripts do) is repaired by the watchdog.
	if home == "DOCKER-USER" {
		sh(t, "iptables-nft -F DOCKER-USER && iptables-nft -A DOCKER-USER -j RETURN")
	} else {
		sh(t, "iptables-nft -F FORWARD")
	}
	eventually(t, 15*time.Second, "jump restored", func() error {
		if !strings.Contains(sh(t, "iptables-nft -S "+home), "-j WEFT-FORWARD") {
			return fmt.Errorf("not yet")
		}
		return nil
	})
	if canPing(d, ipOf(t, w, n)) {
		t.Fatal("isolation not restored after " + home + " was flushed")
	}
}

// TestContainerCannotReachHostLoopback: route_localnet on weft bridges (for
// published ports on 127.0.0.1) must not let a container talk to services
// the host binds to loopback, even one that routes 127/8 via its gateway.
func TestContainerCannotReachHostLoopback(t *testing.T) {
	ln, err := net.Listen("tcp4", "127.0.0.2:7799")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	got := make(chan string, 1)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			got <- c.RemoteAddr().String()
			c.Close()
		}
	}()
	n := ipamNetwork(t)
	gw := mustDocker(t, "network", "inspect", "-f", "{{(index .IPAM.Config 0).Gateway}}", n)
	c := sleeper(t, "--network", n, "--cap-add", "NET_ADMIN", "--sysctl", "net.ipv4.conf.all.route_localnet=1")
	// Make the container send 127.0.0.2 to the host instead of its own lo.
	script := fmt.Sprintf("ip route del local 127.0.0.0/8 dev lo table local && ip route add 127.0.0.2/32 via %s dev eth0 && echo x | nc -w 2 127.0.0.2 7799", gw)
	_, _ = execIn(c, "sh", "-c", script)
	select {
	case from := <-got:
		t.Fatalf("a container reached a host service on 127.0.0.2 (from %s)", from)
	case <-time.After(3 * time.Second):
	}
	if r := weftRules(); !strings.Contains(r, "-A WEFT-PREROUTING -d 127.0.0.0/8 -i "+bridgeOf(t, n)+" -j DROP") {
		t.Fatalf("no loopback guard for the bridge:\n%s", r)
	}
}
