package firewall

import (
	"fmt"
	"strings"
	"sync"

	"github.com/sirupsen/logrus"
)

// IPTables is the part of go-iptables weft uses: the seam where tests put a fake.
type IPTables interface {
	ChainExists(table, chain string) (bool, error)
	NewChain(table, chain string) error
	List(table, chain string) ([]string, error)
	Insert(table, chain string, pos int, rulespec ...string) error
	Append(table, chain string, rulespec ...string) error
	Delete(table, chain string, rulespec ...string) error
	ClearChain(table, chain string) error
	DeleteChain(table, chain string) error
}

// Firewall keeps weft's chains in both families equal to Render(nets).
type Firewall struct {
	mu      sync.Mutex
	tables  map[Family]IPTables
	applied map[Family]string // Format() of the last ruleset known to be in the kernel
	// Ops counts kernel changes, so tests can check that a repeated Sync is a no-op.
	Ops int
}

// New returns a Firewall over the given iptables handles; v6 may be nil
// (IPv6 rules are then skipped).
func New(v4, v6 IPTables) *Firewall {
	f := &Firewall{tables: map[Family]IPTables{}, applied: map[Family]string{}}
	if v4 != nil {
		f.tables[IPv4] = v4
	}
	if v6 != nil {
		f.tables[IPv6] = v6
	}
	return f
}

// Sync brings the kernel to the rules for nets; bridges are the host's
// other bridges (see Render). With no networks it removes weft's hooks and
// chains altogether.
func (f *Firewall) Sync(nets []Network, bridges []string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, fam := range []Family{IPv4, IPv6} {
		ipt, ok := f.tables[fam]
		if !ok {
			continue
		}
		rs := Render(fam, nets, bridges)
		if len(nets) == 0 {
			if err := f.remove(fam, ipt, rs); err != nil {
				return err
			}
			delete(f.applied, fam)
			continue
		}
		want := rs.Format()
		if f.applied[fam] != want {
			delete(f.applied, fam)
			if err := f.applyChains(fam, ipt, rs); err != nil {
				return err
			}
			f.applied[fam] = want
		}
		// Jumps are checked every time: Docker and users edit the
		// built-in chains behind our back.
		if err := f.applyHooks(fam, ipt); err != nil {
			return err
		}
	}
	return nil
}

// Forget drops the cache of what is in the kernel, so the next Sync checks every rule.
func (f *Firewall) Forget() {
	f.mu.Lock()
	f.applied = map[Family]string{}
	f.mu.Unlock()
}

func (f *Firewall) applyChains(fam Family, ipt IPTables, rs Ruleset) error {
	for table, chains := range rs {
		for chain, rules := range chains {
			if err := f.ensureChain(ipt, table, chain); err != nil {
				return fmt.Errorf("firewall: IPv%d %s/%s: %w", fam, table, chain, err)
			}
			if err := f.syncChain(ipt, table, chain, rules); err != nil {
				return fmt.Errorf("firewall: IPv%d %s/%s: %w", fam, table, chain, err)
			}
		}
	}
	return nil
}

func (f *Firewall) applyHooks(fam Family, ipt IPTables) error {
	for _, h := range Hooks(fam) {
		var err error
		if h.Table == "filter" && h.Chain == "FORWARD" {
			err = f.ensureForwardHook(ipt, h.Rule)
		} else {
			err = f.ensureHook(ipt, h)
		}
		if err != nil {
			return fmt.Errorf("firewall: IPv%d hook %s/%s: %w", fam, h.Table, h.Chain, err)
		}
	}
	return nil
}

// ensureForwardHook puts the jump to WEFT-FORWARD inside DOCKER-USER before
// its first unconditional RETURN when FORWARD jumps to DOCKER-USER, or
// else at the top of FORWARD, and removes it from the other place.
//
// A DOCKER-USER chain that FORWARD does not reach is not a home: Docker's
// nftables backend keeps none and leaves the one an earlier iptables run
// made, and `iptables -F` empties FORWARD but keeps DOCKER-USER. A jump
// there would never run.
func (f *Firewall) ensureForwardHook(ipt IPTables, jump Rule) error {
	want := join(jump)
	reached, err := forwardReachesDockerUser(ipt)
	if err != nil {
		return err
	}
	home, other := "FORWARD", dockerUser
	if reached {
		home, other = dockerUser, "FORWARD"
	}
	if ok, err := ipt.ChainExists("filter", other); err != nil {
		return err
	} else if ok {
		// A jump left in the other place (before dockerd made its chain,
		// or before a flush or a switch of Docker's firewall backend).
		if err := f.deleteAll(ipt, "filter", other, jump); err != nil {
			return err
		}
	}
	rules, err := listRules(ipt, "filter", home)
	if err != nil {
		return err
	}
	pos, ret := -1, -1
	for i, r := range rules {
		if r == want && pos < 0 {
			pos = i
		}
		if r == "-j RETURN" && ret < 0 {
			ret = i
		}
	}
	target := 0 // FORWARD: the very top
	if home == dockerUser {
		target = len(rules)
		if ret >= 0 {
			target = ret
		}
	}
	ok := pos >= 0
	if home == dockerUser {
		ok = ok && (ret < 0 || pos < ret)
	} else {
		ok = ok && pos == 0
	}
	if ok {
		return nil
	}
	if pos >= 0 {
		if err := f.deleteAll(ipt, "filter", home, jump); err != nil {
			return err
		}
		if pos < target {
			target--
		}
	}
	f.Ops++
	logrus.WithField("chain", home).Debug("firewall: placing the jump to WEFT-FORWARD")
	return ipt.Insert("filter", home, target+1, jump...)
}

// forwardReachesDockerUser reports whether DOCKER-USER exists and the
// built-in FORWARD chain jumps to it unconditionally.
func forwardReachesDockerUser(ipt IPTables) (bool, error) {
	ok, err := ipt.ChainExists("filter", dockerUser)
	if err != nil || !ok {
		return false, err
	}
	rules, err := listRules(ipt, "filter", "FORWARD")
	if err != nil {
		return false, err
	}
	for _, r := range rules {
		if r == "-j "+dockerUser {
			return true, nil
		}
	}
	return false, nil
}

func (f *Firewall) deleteAll(ipt IPTables, table, chain string, r Rule) error {
	rules, err := listRules(ipt, table, chain)
	if err != nil {
		return err
	}
	for _, x := range rules {
		if x == join(r) {
			if err := ipt.Delete(table, chain, r...); err != nil {
				return err
			}
			f.Ops++
		}
	}
	return nil
}

func (f *Firewall) remove(fam Family, ipt IPTables, rs Ruleset) error {
	if ok, _ := ipt.ChainExists("filter", dockerUser); ok {
		if err := f.deleteAll(ipt, "filter", dockerUser, Rule{"-j", ChainForward}); err != nil {
			return fmt.Errorf("firewall: IPv%d remove hook from %s: %w", fam, dockerUser, err)
		}
	}
	for _, h := range Hooks(fam) {
		rules, err := listRules(ipt, h.Table, h.Chain)
		if err != nil {
			return fmt.Errorf("firewall: IPv%d list %s/%s: %w", fam, h.Table, h.Chain, err)
		}
		for _, r := range rules {
			if r == join(h.Rule) {
				if err := ipt.Delete(h.Table, h.Chain, h.Rule...); err != nil {
					return fmt.Errorf("firewall: IPv%d remove hook %s/%s: %w", fam, h.Table, h.Chain, err)
				}
				f.Ops++
			}
		}
	}
	for table, chains := range rs {
		for chain := range chains {
			ok, err := ipt.ChainExists(table, chain)
			if err != nil || !ok {
				continue // a table this kernel lacks has no weft chain either
			}
			if err := ipt.ClearChain(table, chain); err != nil {
				return fmt.Errorf("firewall: IPv%d clear %s/%s: %w", fam, table, chain, err)
			}
			if err := ipt.DeleteChain(table, chain); err != nil {
				return fmt.Errorf("firewall: IPv%d delete %s/%s: %w", fam, table, chain, err)
			}
			f.Ops++
		}
	}
	return nil
}

func (f *Firewall) ensureChain(ipt IPTables, table, chain string) error {
	ok, err := ipt.ChainExists(table, chain)
	if err != nil {
		return err
	}
	if ok {
		return nil
	}
	f.Ops++
	return ipt.NewChain(table, chain)
}

// listRules returns a chain's rules without the "-A CHAIN " prefix.
func listRules(ipt IPTables, table, chain string) ([]string, error) {
	lines, err := ipt.List(table, chain)
	if err != nil {
		return nil, err
	}
	prefix := "-A " + chain + " "
	var out []string
	for _, l := range lines {
		if strings.HasPrefix(l, prefix) {
			out = append(out, strings.TrimPrefix(l, prefix))
		}
	}
	return out, nil
}

// syncChain edits a chain in place so that it holds exactly want, without
// flushing it: the rules that stay are never absent, not even briefly.
func (f *Firewall) syncChain(ipt IPTables, table, chain string, want []Rule) error {
	cur, err := listRules(ipt, table, chain)
	if err != nil {
		return err
	}
	wantStr := make([]string, len(want))
	wantCount := map[string]int{}
	for i, r := range want {
		wantStr[i] = join(r)
		wantCount[wantStr[i]]++
	}
	if equal(cur, wantStr) {
		return nil
	}
	// 1. Delete what is not wanted (or wanted fewer times).
	var kept []string
	seen := map[string]int{}
	for _, c := range cur {
		seen[c]++
		if seen[c] > wantCount[c] {
			if err := ipt.Delete(table, chain, strings.Fields(c)...); err != nil {
				return err
			}
			f.Ops++
			continue
		}
		kept = append(kept, c)
	}
	// 2. If what is left is in the wanted order, insert the missing rules in
	// place; otherwise rebuild the chain.
	if !subsequence(kept, wantStr) {
		if err := ipt.ClearChain(table, chain); err != nil {
			return err
		}
		f.Ops++
		for _, r := range want {
			if err := ipt.Append(table, chain, r...); err != nil {
				return err
			}
			f.Ops++
		}
		return nil
	}
	k := 0
	for i, w := range wantStr {
		if k < len(kept) && kept[k] == w {
			k++
			continue
		}
		if err := ipt.Insert(table, chain, i+1, want[i]...); err != nil {
			return err
		}
		f.Ops++
	}
	return nil
}

func (f *Firewall) ensureHook(ipt IPTables, h Hook) error {
	rules, err := listRules(ipt, h.Table, h.Chain)
	if err != nil {
		return err
	}
	want := join(h.Rule)
	for _, r := range rules {
		if r == want {
			return nil
		}
	}
	f.Ops++
	logrus.WithFields(logrus.Fields{"table": h.Table, "chain": h.Chain}).Debug("firewall: installing jump to weft chain")
	return ipt.Insert(h.Table, h.Chain, 1, h.Rule...)
}

func equal(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// subsequence reports whether a appears in b in the same order.
func subsequence(a, b []string) bool {
	j := 0
	for _, x := range b {
		if j < len(a) && a[j] == x {
			j++
		}
	}
	return j == len(a)
}
