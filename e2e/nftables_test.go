package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// TestOrphanedDockerUserChain: on a host whose Docker moved to its nftables
// backend, the DOCKER-USER chain an earlier iptables run made is still
// there, but FORWARD no longer jumps to it (as after `iptables -F`). weft's
// jump must not go into it, where it would never run: a LAN neighbour stays
// out of unpublished ports, and published ones still answer (the control).
func TestOrphanedDockerUserChain(t *testing.T) {
	o := newOutside(t)
	n := ipamNetwork(t)
	w := web(t, "--network", n, "-p", "18380:80")
	wip := ipOf(t, w, n)
	// The neighbour routes the weft subnet through this host, as a LAN
	// router would, so only the firewall stands between it and port 80.
	subnet := mustDocker(t, "network", "inspect", "-f", "{{(index .IPAM.Config 0).Subnet}}", n)
	sh(t, fmt.Sprintf("ip -n %s route add %s via %s", o.ns, subnet, o.hostIP))
	eventually(t, 10*time.Second, "published port from the LAN", func() error { _, err := o.get(o.hostIP + ":18380"); return err })

	// An orphan: DOCKER-USER exists (with its old RETURN), FORWARD does
	// not jump to it. On the iptables backend Docker's own chain is made
	// unreachable the same way, as `iptables -F FORWARD` would.
	created := false
	if out, err := exec("iptables-nft", "-S", "DOCKER-USER"); err != nil {
		sh(t, "iptables-nft -N DOCKER-USER && iptables-nft -A DOCKER-USER -j RETURN")
		created = true
	} else {
		t.Logf("DOCKER-USER already there:\n%s", out)
	}
	if firewallBackend() == "iptables" {
		// Put Docker's jump back afterwards (dockerd only does at start).
		t.Cleanup(func() {
			if out, _ := exec("iptables-nft", "-S", "FORWARD"); !strings.Contains(out, "-j DOCKER-USER") {
				_, _ = exec("iptables-nft", "-I", "FORWARD", "1", "-j", "DOCKER-USER")
			}
		})
		sh(t, "while iptables-nft -D FORWARD -j DOCKER-USER 2>/dev/null; do :; done")
	}
	if created {
		t.Cleanup(func() { _, _ = exec("sh", "-c", "iptables-nft -F DOCKER-USER; iptables-nft -X DOCKER-USER") })
	}
	eventually(t, 15*time.Second, "weft's jump at the top of FORWARD, reached", func() error {
		fwd := sh(t, "iptables-nft -S FORWARD")
		if !strings.Contains(fwd, "-A FORWARD -j WEFT-FORWARD") {
			return fmt.Errorf("FORWARD:\n%s", fwd)
		}
		if user := sh(t, "iptables-nft -S DOCKER-USER"); strings.Contains(user, "WEFT-FORWARD") {
			return fmt.Errorf("jump still in the unreached DOCKER-USER:\n%s", user)
		}
		return nil
	})
	// Unpublished: port 80 on the container's own address, straight from the LAN.
	if body, err := o.get(wip + ":80"); err == nil && strings.Contains(body, page) {
		t.Fatalf("a LAN neighbour reached the unpublished port %s:80 past an orphaned DOCKER-USER", wip)
	}
	wantPage(t, "published port from the LAN with an orphaned DOCKER-USER", o.hostIP+":18380", o.get)
}
