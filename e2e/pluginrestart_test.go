package e2e

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"time"
)

// restartPlugin disables and re-enables weft, as an upgrade or a crash
// would restart it, and waits until it answers again.
func restartPlugin(t *testing.T) {
	t.Helper()
	mustDocker(t, "plugin", "disable", "-f", plugin)
	mustDocker(t, "plugin", "enable", plugin)
}

// TestPublishedPortsAcrossPluginRestart: containers that published ports
// and joined before the plugin restarted keep their ports, and can be
// stopped and removed cleanly afterwards, with nothing left behind, on
// every engine. Docker 29 forgets its remote endpoints' Join options when
// the plugin restarts (moby/moby#50283): it never sends them a
// RevokeExternalConnectivity again, so weft must drop their ports when the
// endpoint goes. A gateway change for such a container fails in Docker
// itself; the test checks that this leaves the container and its ports
// working.
func TestPublishedPortsAcrossPluginRestart(t *testing.T) {
	o := newOutside(t)
	n := ipamNetwork(t)
	w := web(t, "--network", n, "-p", "18280:80", "-p", "127.0.0.1:18281:80")
	eventually(t, 5*time.Second, "web server up", func() error { _, err := httpGet("127.0.0.1:18280"); return err })
	wantPage(t, "before the restart, from outside", o.hostIP+":18280", o.get)

	logBefore, _ := os.ReadFile("/run/weft-e2e/dockerd.log")
	restartPlugin(t)
	eventually(t, 20*time.Second, "published port after the plugin restart", func() error {
		_, err := o.get(o.hostIP + ":18280")
		return err
	})
	wantPage(t, "after the restart, from outside", o.hostIP+":18280", o.get)
	wantPage(t, "after the restart, on 127.0.0.1", "127.0.0.1:18281", httpGet)
	// The plugin warns, in the dockerd log, about what Docker 29 forgot.
	eventually(t, 10*time.Second, "warning about forgotten Join options in the dockerd log", func() error {
		b, err := os.ReadFile("/run/weft-e2e/dockerd.log")
		if err == nil && len(b) >= len(logBefore) {
			b = b[len(logBefore):] // only what this restart logged
		}
		if err != nil || !strings.Contains(string(b), "moby/moby#50283") {
			return fmt.Errorf("no warning naming moby/moby#50283 (%v)", err)
		}
		return nil
	})

	// A second weft network joined after the restart works as usual.
	n2 := ipamNetwork(t)
	mustDocker(t, "network", "connect", n2, w)
	peer := sleeper(t, "--network", n2)
	if !canPing(peer, ipOf(t, w, n2)) {
		t.Fatal("a network connected after the plugin restart does not carry traffic")
	}
	// Making another network the gateway (Engine 28+: --gw-priority) makes
	// Docker 29 revoke the old gateway's connectivity, which it no longer
	// can for an endpoint joined before the restart.
	if dockerMajor(t) >= 28 {
		n3 := ipamNetwork(t)
		out, err := docker("network", "connect", "--gw-priority", "10", n3, w)
		switch {
		case err == nil:
			t.Logf("gateway change after the plugin restart accepted")
		case strings.Contains(out, "remote network driver: endpoint") && strings.Contains(out, "not found"):
			t.Logf("gateway change refused by Docker as documented (moby/moby#50283): %s", out)
		default:
			t.Fatalf("gateway change after the plugin restart failed otherwise: %v %s", err, out)
		}
		// Whatever Docker did, the container is still served on its port.
		wantPage(t, "after the gateway change attempt", "127.0.0.1:18281", httpGet)
	}

	// Stop and remove: the ports go with the endpoint, Revoke or not.
	mustDocker(t, "stop", "-t", "1", w)
	eventually(t, 10*time.Second, "ports closed after stop", func() error {
		if r := sh(t, "iptables-nft -t nat -S WEFT-DNAT 2>/dev/null || true"); strings.Contains(r, "--dport 18280 ") || strings.Contains(r, "--dport 18281 ") {
			return fmt.Errorf("DNAT rules still there:\n%s", r)
		}
		return nil
	})
	wantNoPage(t, "stopped container's port", o.hostIP+":18280", o.get)
	mustDocker(t, "rm", w)
	// The host ports are free again: a new container publishes the same.
	w2 := web(t, "--network", n, "-p", "18280:80")
	eventually(t, 10*time.Second, "port re-published by a new container", func() error {
		body, err := o.get(o.hostIP + ":18280")
		if err == nil && !strings.Contains(body, page) {
			err = fmt.Errorf("answer %q", body)
		}
		return err
	})
	mustDocker(t, "rm", "-f", w2)
}
