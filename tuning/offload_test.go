package tuning

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/safchain/ethtool"
	"github.com/vishvananda/netlink"

	"github.com/weft-net/weft/internal/nstest"
)

func TestFeatureMatch(t *testing.T) {
	for _, c := range []struct {
		name, pattern string
		want          bool
	}{
		{"tx-tcp-segmentation", "tx-tcp*-segmentation", true},
		{"tx-tcp6-segmentation", "tx-tcp*-segmentation", true},
		{"tx-tcp-ecn-segmentation", "tx-tcp*-segmentation", true},
		{"tx-tcp-mangleid-segmentation", "tx-tcp*-segmentation", true},
		{"tx-tcp-accecn-segmentation", "tx-tcp*-segmentation", true},
		{"tx-udp-segmentation", "tx-tcp*-segmentation", false},
		{"tx-tcp-segmentation-x", "tx-tcp*-segmentation", false},
		{"tx-scatter-gather", "tx-scatter-gather*", true},
		{"tx-scatter-gather-fraglist", "tx-scatter-gather*", true},
		{"tx-checksum-ipv4", "tx-checksum-*", true},
		{"tx-checksum-", "tx-checksum-*", true},
		{"tx-checksumming", "tx-checksum-*", false},
		{"rx-gro", "rx-gro", true},
		{"rx-gro-hw", "rx-gro", false},
		{"rx-gro-list", "rx-gro", false},
		{"tx-gso-partial", "tx-generic-segmentation", false},
		// prefix and suffix must not overlap
		{"ab", "ab*b", false},
	} {
		if got := featureMatch(c.name, c.pattern); got != c.want {
			t.Errorf("featureMatch(%q, %q) = %v", c.name, c.pattern, got)
		}
	}
}

// ethtoolK runs ethtool(8) -k on dev in the calling thread's namespace and
// returns its lines (name -> "on"/"off", with " [fixed]" where shown).
func ethtoolK(t *testing.T, dev string) map[string]string {
	t.Helper()
	out, err := exec.Command("ethtool", "-k", dev).CombinedOutput()
	if err != nil {
		t.Fatalf("ethtool -k %s: %v\n%s", dev, err, out)
	}
	lines := map[string]string{}
	for _, l := range strings.Split(string(out), "\n") {
		if k, v, ok := strings.Cut(strings.TrimSpace(l), ": "); ok {
			lines[k] = v
		}
	}
	return lines
}

// summaries are the lines of `ethtool -k` for the offload options.
var summaries = map[string]string{
	"tso": "tcp-segmentation-offload", "tx": "tx-checksumming", "sg": "scatter-gather",
	"gso": "generic-segmentation-offload", "gro": "generic-receive-offload", "rx": "rx-checksumming",
}

// Each offload switches what ethtool -K switches: ethtool(8) then reports
// its summary line off, and every feature under it off. On the old code
// (one feature per option) tso, tx and sg failed here: ethtool still said
// "tcp-segmentation-offload: on" (tx-tcp6-segmentation and the others were
// on), "tx-checksumming: on" (tx-checksum-sctp), "scatter-gather: on"
// (tx-scatter-gather-fraglist).
func TestOffloadsMeanWhatEthtoolMeans(t *testing.T) {
	if _, err := exec.LookPath("ethtool"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("ethtool(8) is not installed (make deps installs Debian's ethtool)")
		}
		t.Skip("ethtool(8) is not installed (make deps installs Debian's ethtool)")
	}
	nstest.Run(t, func() {
		for i, opt := range []string{"tso", "tx", "sg", "gso", "gro", "rx"} {
			dev, peer := fmt.Sprintf("wfo%d", i), fmt.Sprintf("wfo%dp", i)
			veth(t, dev, peer)
			line := summaries[opt]
			if opt == "gro" {
				// A veth has GRO off until asked (or XDP): switch it on
				// first, which is the control.
				if got, err := setOffloads(dev, map[string]bool{"gro": true}); err != nil || !strings.HasPrefix(strings.Join(got, " "), "offload.gro=on:rx-gro=true") {
					t.Fatalf("gro=on: %q %v", got, err)
				}
			}
			k := ethtoolK(t, dev)
			if k[line] != "on" {
				t.Fatalf("control: a fresh veth has %s: %q, want on: the test would prove nothing", line, k[line])
			}
			names := featureNames(t, dev)
			feats := matchFeatures(names, offloads[opt].pattern)
			got, err := setOffloads(dev, map[string]bool{opt: false})
			if err != nil {
				t.Fatalf("offload.%s=off: %v", opt, err)
			}
			k = ethtoolK(t, dev)
			if k[line] != "off" {
				t.Errorf("offload.%s=off: ethtool -k says %s: %s (applied %q)", opt, line, k[line], got)
			}
			for _, f := range feats {
				// (ethtool shows a feature alone under its summary line
				// when it is the only one.)
				if len(feats) > 1 && !strings.HasPrefix(k[f], "off") {
					t.Errorf("offload.%s=off: ethtool -k says %s: %s", opt, f, k[f])
				}
				if !strings.Contains(got[0], f+"=false") {
					t.Errorf("offload.%s=off: applied %q does not report %s", opt, got, f)
				}
			}
			if !strings.HasPrefix(got[0], "offload."+opt+"=off:") {
				t.Errorf("applied %q", got)
			}
			// And back on: the summary line reads on again, although a veth
			// has fixed-off bits under tx (tx-checksum-ipv4, -ipv6,
			// -fcoe-crc), which are reported, not an error.
			got, err = setOffloads(dev, map[string]bool{opt: true})
			if err != nil {
				t.Fatalf("offload.%s=on: %v", opt, err)
			}
			if k = ethtoolK(t, dev); k[line] != "on" {
				t.Errorf("offload.%s=on: ethtool -k says %s: %s", opt, line, k[line])
			}
			if opt == "tx" && !strings.Contains(got[0], "tx-checksum-ipv4=false(fixed)") {
				t.Errorf("offload.tx=on: the fixed-off tx-checksum-ipv4 is not reported: %q", got)
			}
		}
	})
}

func featureNames(t *testing.T, dev string) map[string]uint {
	t.Helper()
	e, err := ethtool.NewEthtool()
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	names, err := e.FeatureNames(dev)
	if err != nil {
		t.Fatal(err)
	}
	return names
}

// Every feature the kernel lists under a pattern is switched, newer ones
// included: the set comes from the kernel, not from a list in weft.
func TestOffloadFeaturesComeFromTheKernel(t *testing.T) {
	nstest.Run(t, func() {
		veth(t, "wfok", "wfokp")
		names := featureNames(t, "wfok")
		tso := matchFeatures(names, offloads["tso"].pattern)
		for _, f := range []string{"tx-tcp-segmentation", "tx-tcp-ecn-segmentation", "tx-tcp-mangleid-segmentation", "tx-tcp6-segmentation"} {
			if _, ok := names[f]; ok && !strings.Contains(" "+strings.Join(tso, " ")+" ", " "+f+" ") {
				t.Errorf("tso misses %s: %v", f, tso)
			}
		}
		if _, ok := names["tx-tcp-accecn-segmentation"]; ok && !strings.Contains(strings.Join(tso, " "), "tx-tcp-accecn-segmentation") {
			t.Errorf("tso misses tx-tcp-accecn-segmentation, which this kernel lists: %v", tso)
		}
		if _, err := setOffloads("wfok", map[string]bool{"tso": false}); err != nil {
			t.Fatal(err)
		}
		e, _ := ethtool.NewEthtool()
		defer e.Close()
		f, _ := e.Features("wfok")
		for n := range names {
			if featureMatch(n, "tx-tcp*-segmentation") && f[n] {
				t.Errorf("%s on after tso=off", n)
			}
		}
	})
}

// A request the device cannot meet is an error naming the option; a fixed
// bit already at the asked value is not.
func TestOffloadRequestsThatCannotBeMet(t *testing.T) {
	nstest.Run(t, func() {
		// lo: scatter-gather and rx checksumming are fixed on.
		for _, opt := range []string{"sg", "rx"} {
			_, err := setOffloads("lo", map[string]bool{opt: false})
			if err == nil || !strings.Contains(err.Error(), "offload."+opt+"=off") || !strings.Contains(err.Error(), "fixed") {
				t.Errorf("offload.%s=off on lo: %v, want an error naming offload.%s and the fixed feature", opt, err, opt)
			}
		}
		veth(t, "wfof", "wfofp")
		// LRO is fixed off on a veth: off is met (and reported fixed), on is not.
		got, err := setOffloads("wfof", map[string]bool{"lro": false})
		if err != nil || len(got) != 1 || got[0] != "offload.lro=off:rx-lro=false(fixed)" {
			t.Errorf("lro=off on a veth: %q %v", got, err)
		}
		if _, err := setOffloads("wfof", map[string]bool{"lro": true}); err == nil || !strings.Contains(err.Error(), "offload.lro=on") {
			t.Errorf("lro=on on a veth: %v, want an error naming offload.lro", err)
		}
		// GSO needs scatter-gather: asking both gso=on and sg=off cannot
		// be met for gso; sg=off is, and is still reported.
		got, err = setOffloads("wfof", map[string]bool{"gso": true, "sg": false})
		if err == nil || !strings.Contains(err.Error(), "offload.gso=on") || strings.Contains(err.Error(), "offload.sg") {
			t.Errorf("gso=on sg=off: %v, want an error naming offload.gso only", err)
		}
		if len(got) == 0 || !strings.HasPrefix(got[0], "offload.sg=off:") {
			t.Errorf("gso=on sg=off: applied %q", got)
		}
		// A macvlan's TSO follows its parent's (fixed) in the kernels
		// seen so far: tso=off cannot be met there, and the error says why.
		parent, _ := netlink.LinkByName("wfof")
		if err := netlink.LinkAdd(&netlink.Macvlan{LinkAttrs: netlink.LinkAttrs{Name: "wfomv", ParentIndex: parent.Attrs().Index}, Mode: netlink.MACVLAN_MODE_BRIDGE}); err != nil {
			t.Fatal(err)
		}
		e, _ := ethtool.NewEthtool()
		st, _ := e.FeaturesWithState("wfomv")
		e.Close()
		_, err = setOffloads("wfomv", map[string]bool{"tso": false})
		if fixed(st["tx-tcp-segmentation"]) {
			if err == nil || !strings.Contains(err.Error(), "offload.tso=off on wfomv cannot be met") || !strings.Contains(err.Error(), "macvlan interfaces follow their parent's") {
				t.Errorf("tso=off on a macvlan: %v", err)
			}
		} else if err != nil {
			t.Errorf("tso=off on a macvlan whose TSO can change: %v", err)
		}
		// TSO needs checksumming.
		if _, err := setOffloads("wfof", map[string]bool{"tso": true, "tx": false, "sg": true}); err == nil || !strings.Contains(err.Error(), "offload.tso=on") {
			t.Errorf("tso=on tx=off: %v, want an error naming offload.tso", err)
		}
		// Side effects are reported: without checksumming the kernel drops TSO.
		veth(t, "wfod", "wfodp")
		got, err = setOffloads("wfod", map[string]bool{"tx": false})
		if err != nil || len(got) != 2 || !strings.HasPrefix(got[1], "also:") || !strings.Contains(got[1], "tx-tcp-segmentation=false") {
			t.Errorf("tx=off: %q %v, want the TSO features the kernel dropped reported after also:", got, err)
		}
	})
}

func TestOffloadsInSettings(t *testing.T) {
	s, err := Parse(map[string]string{"offload.tso": "off", "offload.gro": "on"}, map[string]string{"offload.tx": "0"})
	if err != nil {
		t.Fatal(err)
	}
	if s.String() != "offload.gro=on offload.tso=off offload.tx=off" {
		t.Fatalf("String() = %q", s.String())
	}
	if _, err := Parse(nil, map[string]string{"offload.ufo": "off"}); err == nil || !strings.Contains(err.Error(), "offload.lro, offload.rx, offload.sg, offload.tso, offload.tx") {
		t.Fatalf("unknown offload: %v", err)
	}
}

// An offload that cannot be met is an error, and the endpoint's other
// settings are applied all the same.
func TestUnmetOffloadKeepsTheRest(t *testing.T) {
	nstest.Run(t, func() {
		ns, path := sandbox(t, fmt.Sprintf("wftu%d", os.Getpid()))
		veth(t, "wftuh", "wftuc")
		l, _ := netlink.LinkByName("wftuc")
		moveIn(t, ns, "wftuc", "eth0")
		s := Settings{TxQueueLen: -1, Sysctls: map[string]string{"net.ipv4.conf.IFNAME.rp_filter": "2"}, Offloads: map[string]bool{"lro": true, "tso": false}}
		got, err := (Inside{Timeout: 2 * time.Second}).ApplyInside(path, Ident{SrcName: "wftuc", MAC: l.Attrs().HardwareAddr.String(), Index: l.Attrs().Index}, s, "")
		if err == nil || !strings.Contains(err.Error(), "offload.lro=on on eth0 cannot be met") {
			t.Fatalf("lro=on on a veth: %v", err)
		}
		if !strings.Contains(got, "net.ipv4.conf.eth0.rp_filter=2") || !strings.Contains(got, "offload.tso=off:tx-tcp-segmentation=false") {
			t.Fatalf("applied %q besides the error", got)
		}
		if v := readIn(t, ns, "net/ipv4/conf/eth0/rp_filter")[0]; v != "2" {
			t.Fatalf("rp_filter %s", v)
		}
	})
}
