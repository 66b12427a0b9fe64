package tuning

// Offloads: the option names are ethtool(8)'s (`ethtool -K DEV tso off`),
// and each means what it means to ethtool: every kernel feature whose name
// matches the pattern ethtool keeps for it (off_flag_def in ethtool's
// common.c; `ethtool -K` switches all the features that match, and the
// summary line of `ethtool -k`, e.g. "tcp-segmentation-offload", is on
// while any of them is on). The patterns are matched against the feature
// names the kernel lists for the device, so a TSO bit a newer kernel adds
// (tx-tcp-accecn-segmentation) is switched with the others.

import (
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/safchain/ethtool"
	"github.com/vishvananda/netlink"
)

// offloadDef is one offload option: ethtool's summary line for it and the
// pattern of the kernel features it stands for (at most one '*').
type offloadDef struct{ long, pattern string }

// offloads are the offload.* options, from ethtool's off_flag_def. Left
// out: ufo (no kernel since 4.14 has UFO) and the flags ethtool only
// reads through ETHTOOL_GFLAGS (rxvlan, txvlan, ntuple, rxhash). gso is
// tx-generic-segmentation alone, as with `ethtool -K gso`: the tx-gso-*
// bits (partial, robust, list) are features of their own.
var offloads = map[string]offloadDef{
	"rx":  {"rx-checksumming", "rx-checksum"},
	"tx":  {"tx-checksumming", "tx-checksum-*"},
	"sg":  {"scatter-gather", "tx-scatter-gather*"},
	"tso": {"tcp-segmentation-offload", "tx-tcp*-segmentation"},
	"gso": {"generic-segmentation-offload", "tx-generic-segmentation"},
	"gro": {"generic-receive-offload", "rx-gro"},
	"lro": {"large-receive-offload", "rx-lro"},
}

// offloadNames lists the valid offload.* keys (for messages).
func offloadNames() []string {
	names := make([]string, 0, len(offloads))
	for n := range offloads {
		names = append(names, PrefixOffload+n)
	}
	sort.Strings(names)
	return names
}

// featureMatch is ethtool's pattern match: a '*' stands for any run of
// characters, possibly none ("tx-scatter-gather*" matches
// tx-scatter-gather itself).
func featureMatch(name, pattern string) bool {
	pre, post, wild := strings.Cut(pattern, "*")
	if !wild {
		return name == pattern
	}
	return len(name) >= len(pre)+len(post) && strings.HasPrefix(name, pre) && strings.HasSuffix(name, post)
}

// matchFeatures returns the features (kernel name -> index) that match
// pattern, in the kernel's order (which is ethtool's).
func matchFeatures(names map[string]uint, pattern string) []string {
	var m []string
	for n := range names {
		if featureMatch(n, pattern) {
			m = append(m, n)
		}
	}
	sort.Slice(m, func(i, j int) bool { return names[m[i]] < names[m[j]] })
	return m
}

// fixed: the device does not let the feature change (ethtool's "[fixed]").
func fixed(st ethtool.FeatureState) bool { return !st.Available || st.NeverChanged }

func onOffWord(on bool) string {
	if on {
		return "on"
	}
	return "off"
}

// setOffloads switches the offloads asked (option name -> on) on dev, in
// the calling thread's namespace, in one request, and reads back every
// feature of each option. It returns one entry per option that holds:
// offload.NAME=on|off:feature=bool,... with "(fixed)" after a feature the
// device does not let change, and, if switching them changed other
// features too (the kernel drops TSO without checksumming, GSO without
// scatter-gather), also:feature=bool,... The request of an option is not
// met, and is an error naming it, when a feature of it is not at the
// asked value afterwards, except a fixed feature that stays off under
// "on" while another feature of the option is on: ethtool's summary line
// then reads on, as asked, and `ethtool -K` does the same.
func setOffloads(dev string, want map[string]bool) ([]string, error) {
	e, err := ethtool.NewEthtool()
	if err != nil {
		return nil, fmt.Errorf("ethtool: %w", err)
	}
	defer e.Close()
	names, err := e.FeatureNames(dev)
	if err != nil {
		return nil, fmt.Errorf("offloads of %s: %w", dev, err)
	}
	before, err := e.FeaturesWithState(dev)
	if err != nil {
		return nil, fmt.Errorf("read offloads of %s: %w", dev, err)
	}
	opts := sortedKeys(want)
	feats := map[string][]string{}
	asked := map[string]bool{}
	change := map[string]bool{}
	for _, o := range opts {
		def, ok := offloads[o]
		if !ok {
			return nil, fmt.Errorf("%s%s: unknown offload; valid: %s", PrefixOffload, o, strings.Join(offloadNames(), ", "))
		}
		m := matchFeatures(names, def.pattern)
		if len(m) == 0 {
			return nil, fmt.Errorf("%s%s: the kernel lists no feature %s for %s", PrefixOffload, o, def.pattern, dev)
		}
		feats[o] = m
		for _, f := range m {
			asked[f] = true
			// As ethtool -K: every changeable feature of the option is
			// requested, also one already at the value (so that a
			// feature another one held back stays as asked).
			if !fixed(before[f]) {
				change[f] = want[o]
			}
		}
	}
	if len(change) > 0 {
		if err := e.Change(dev, change); err != nil {
			return nil, fmt.Errorf("offloads on %s: %w", dev, err)
		}
	}
	after, err := e.FeaturesWithState(dev)
	if err != nil {
		return nil, fmt.Errorf("read offloads of %s: %w", dev, err)
	}
	kind, follows := "", false
	if l, err := netlink.LinkByName(dev); err == nil {
		switch kind = l.Type(); kind {
		case "macvlan", "ipvlan", "macvtap", "ipvtap":
			follows = true
		}
	}
	var applied []string
	var errs []error
	for _, o := range opts {
		v := want[o]
		var bits, stuck []string
		anyOn := false
		for _, f := range feats[o] {
			st := after[f]
			anyOn = anyOn || st.Active
			b := fmt.Sprintf("%s=%v", f, st.Active)
			if fixed(st) {
				b += "(fixed)"
			}
			bits = append(bits, b)
			if st.Active == v || (v && fixed(st)) {
				continue
			}
			why := "fixed by the device"
			switch {
			case follows && fixed(st):
				why = "fixed: " + kind + " interfaces follow their parent's"
			case follows:
				why = kind + " interfaces take it from their parent, or a feature it depends on keeps it " + onOffWord(st.Active)
			case !fixed(st):
				why = "the device or a feature it depends on keeps it " + onOffWord(st.Active)
			}
			stuck = append(stuck, fmt.Sprintf("%s stays %s (%s)", f, onOffWord(st.Active), why))
		}
		if v && !anyOn && len(stuck) == 0 {
			stuck = append(stuck, "the device has every feature of it fixed off")
		}
		if len(stuck) > 0 {
			errs = append(errs, fmt.Errorf("%s%s=%s on %s cannot be met: %s", PrefixOffload, o, onOffWord(v), dev, strings.Join(stuck, "; ")))
			continue
		}
		applied = append(applied, fmt.Sprintf("%s%s=%s:%s", PrefixOffload, o, onOffWord(v), strings.Join(bits, ",")))
	}
	var changed []string
	for f := range after {
		if !asked[f] && after[f].Active != before[f].Active {
			changed = append(changed, f)
		}
	}
	if len(changed) > 0 {
		sort.Slice(changed, func(i, j int) bool { return names[changed[i]] < names[changed[j]] })
		also := make([]string, len(changed))
		for i, f := range changed {
			also[i] = fmt.Sprintf("%s=%v", f, after[f].Active)
		}
		applied = append(applied, "also:"+strings.Join(also, ","))
	}
	return applied, errors.Join(errs...)
}
