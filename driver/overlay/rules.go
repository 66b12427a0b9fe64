package overlay

import (
	"fmt"
	"net/netip"
	"strconv"

	"github.com/coreos/go-iptables/iptables"
)

// Chains of the swarm instance: named apart from the local instance's
// WEFT-* chains, so the two instances on one host never touch each other's.
const (
	chainForward = "WEFTS-FORWARD"
	chainGuard   = "WEFTS-GUARD"
)

// IPTablesRules implements Rules with iptables and ip6tables.
type IPTablesRules struct {
	V4, V6 *iptables.IPTables
}

// Ensure installs (idempotently) the FORWARD accept for overlay bridges and
// the guard that drops VXLAN to tunnel addresses not arriving through
// WireGuard.
func (r IPTablesRules) Ensure(vxlanPort int, wgIf string, tunnel netip.Prefix, guard bool) error {
	if r.V4 == nil {
		return fmt.Errorf("iptables is not usable here; overlay networks need it (setting IPTABLES_BACKEND)")
	}
	// Docker sets FORWARD's policy to DROP and br_netfilter passes bridged
	// frames through it: the overlay bridges' own traffic must be accepted.
	for _, rule := range [][]string{
		{"-i", "wfov+", "-o", "wfov+", "-j", "ACCEPT"},
		// Encrypted networks are routed: container to tunnel, tunnel to
		// container, container to container on this node.
		{"-i", "wfoh+", "-o", wgIf, "-j", "ACCEPT"},
		{"-i", wgIf, "-o", "wfoh+", "-j", "ACCEPT"},
		{"-i", "wfoh+", "-o", "wfoh+", "-j", "ACCEPT"},
	} {
		if err := ensureJump(r.V4, "filter", "FORWARD", chainForward, rule); err != nil {
			return err
		}
	}
	if r.V6 == nil {
		if guard {
			return fmt.Errorf("ip6tables is not usable here: encrypted overlays need its guard against cleartext VXLAN")
		}
		return nil
	}
	if err := ensureJump(r.V6, "filter", "FORWARD", chainForward, []string{"-i", "wfov+", "-o", "wfov+", "-j", "ACCEPT"}); err != nil {
		return err
	}
	if !guard {
		return nil
	}
	return ensureJump(r.V6, "raw", "PREROUTING", chainGuard, []string{"-d", tunnel.String(), "-p", "udp", "--dport", strconv.Itoa(vxlanPort), "!", "-i", wgIf, "-j", "DROP"})
}

func ensureJump(ipt *iptables.IPTables, table, from, chain string, rule []string) error {
	if ok, err := ipt.ChainExists(table, chain); err != nil {
		return fmt.Errorf("iptables -t %s: %w", table, err)
	} else if !ok {
		if err := ipt.NewChain(table, chain); err != nil {
			return fmt.Errorf("create chain %s: %w", chain, err)
		}
	}
	if err := ipt.AppendUnique(table, chain, rule...); err != nil {
		return fmt.Errorf("rule in %s: %w", chain, err)
	}
	// First in the chain: Docker's own rules (and its DROP policy) come after.
	if ok, _ := ipt.Exists(table, from, "-j", chain); !ok {
		if err := ipt.Insert(table, from, 1, "-j", chain); err != nil {
			return fmt.Errorf("jump from %s to %s: %w", from, chain, err)
		}
	}
	return nil
}

// Remove deletes the chains and jumps.
func (r IPTablesRules) Remove() error {
	for _, x := range []struct {
		ipt         *iptables.IPTables
		table, from string
		chain       string
	}{{r.V4, "filter", "FORWARD", chainForward}, {r.V6, "filter", "FORWARD", chainForward}, {r.V6, "raw", "PREROUTING", chainGuard}} {
		if x.ipt == nil {
			continue
		}
		_ = x.ipt.DeleteIfExists(x.table, x.from, "-j", x.chain)
		if ok, _ := x.ipt.ChainExists(x.table, x.chain); ok {
			if err := x.ipt.ClearAndDeleteChain(x.table, x.chain); err != nil {
				return fmt.Errorf("remove chain %s: %w", x.chain, err)
			}
		}
	}
	return nil
}
