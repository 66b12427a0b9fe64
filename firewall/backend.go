package firewall

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"

	"github.com/coreos/go-iptables/iptables"
)

// LegacyTableNames lists the legacy iptables tables the kernel has loaded.
var LegacyTableNames = "/proc/net/ip_tables_names"

// Backend is an iptables flavour: "nft" or "legacy".
type Backend string

// DetectBackend picks the iptables backend that holds the host's existing
// rules (Docker's above all), the way Kubernetes' wrappers do: weft's rules
// must live next to Docker's or they would not be evaluated with them.
func DetectBackend(setting string) (Backend, string, error) {
	switch setting {
	case "nft", "legacy", "none":
		return Backend(setting), "set by IPTABLES_BACKEND", nil
	case "", "auto":
	default:
		return "", "", fmt.Errorf("setting IPTABLES_BACKEND=%q: want auto, nft, legacy or none", setting)
	}
	count := func(b string) (rules int, docker bool) {
		if b == "legacy" {
			// Reading legacy tables instantiates them in the kernel (and makes
			// iptables-nft warn about them forever): look only if some exist.
			names, err := os.ReadFile(LegacyTableNames)
			if err != nil || len(bytes.TrimSpace(names)) == 0 {
				return 0, false
			}
		}
		out, err := exec.Command("/usr/sbin/iptables-" + b + "-save").Output()
		if err != nil {
			return -1, false
		}
		return bytes.Count(out, []byte("\n-A ")), bytes.Contains(out, []byte(":DOCKER"))
	}
	nRules, nDocker := count("nft")
	lRules, lDocker := count("legacy")
	switch {
	case nDocker && !lDocker:
		return "nft", "Docker's chains are in nf_tables", nil
	case lDocker && !nDocker:
		return "legacy", "Docker's chains are in legacy iptables", nil
	case nRules < 0 && lRules < 0:
		return "", "", fmt.Errorf("neither iptables-nft nor iptables-legacy works in this kernel")
	case lRules > nRules:
		return "legacy", fmt.Sprintf("legacy iptables holds more rules (%d vs %d)", lRules, nRules), nil
	default:
		return "nft", fmt.Sprintf("nf_tables holds at least as many rules (%d vs %d)", nRules, lRules), nil
	}
}

// Open returns go-iptables handles for the backend; v6 is nil (with the
// error logged by the caller) when ip6tables does not work here.
func Open(b Backend) (v4, v6 *iptables.IPTables, err6 error, err error) {
	v4, err = iptables.New(iptables.IPFamily(iptables.ProtocolIPv4), iptables.Path("/usr/sbin/iptables-"+string(b)))
	if err != nil {
		return nil, nil, nil, fmt.Errorf("iptables (%s): %w", b, err)
	}
	v6, err6 = iptables.New(iptables.IPFamily(iptables.ProtocolIPv6), iptables.Path("/usr/sbin/ip6tables-"+string(b)))
	if err6 == nil {
		if _, e := v6.ListChains("filter"); e != nil {
			v6, err6 = nil, e
		}
	}
	return v4, v6, err6, nil
}
