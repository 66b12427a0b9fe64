package firewall

import (
	"fmt"
	"strings"
	"sync"
)

// Fake is an in-memory IPTables for unit tests. Built-in chains exist from the start.
type Fake struct {
	mu     sync.Mutex
	chains map[string][]string // "table/chain" -> rules (without -A CHAIN)
}

// NewFake returns a Fake with the built-in filter and nat chains.
func NewFake() *Fake {
	f := &Fake{chains: map[string][]string{}}
	for _, c := range []string{"filter/INPUT", "filter/FORWARD", "filter/OUTPUT", "nat/PREROUTING", "nat/INPUT", "nat/OUTPUT", "nat/POSTROUTING", "raw/PREROUTING", "raw/OUTPUT"} {
		f.chains[c] = nil
	}
	return f
}

func key(table, chain string) string { return table + "/" + chain }

// ChainExists implements IPTables.
func (f *Fake) ChainExists(table, chain string) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	_, ok := f.chains[key(table, chain)]
	return ok, nil
}

// NewChain implements IPTables.
func (f *Fake) NewChain(table, chain string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.chains[key(table, chain)]; ok {
		return fmt.Errorf("chain %s/%s exists", table, chain)
	}
	f.chains[key(table, chain)] = nil
	return nil
}

// List implements IPTables, in `iptables -S` form.
func (f *Fake) List(table, chain string) ([]string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	rules, ok := f.chains[key(table, chain)]
	if !ok {
		return nil, fmt.Errorf("no chain %s/%s", table, chain)
	}
	out := []string{"-N " + chain}
	for _, r := range rules {
		out = append(out, "-A "+chain+" "+r)
	}
	return out, nil
}

// Insert implements IPTables (pos is 1-based).
func (f *Fake) Insert(table, chain string, pos int, spec ...string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	k := key(table, chain)
	rules, ok := f.chains[k]
	if !ok {
		return fmt.Errorf("no chain %s", k)
	}
	if pos < 1 || pos > len(rules)+1 {
		return fmt.Errorf("index %d out of range in %s", pos, k)
	}
	r := strings.Join(spec, " ")
	rules = append(rules[:pos-1], append([]string{r}, rules[pos-1:]...)...)
	f.chains[k] = rules
	return nil
}

// Append implements IPTables.
func (f *Fake) Append(table, chain string, spec ...string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	k := key(table, chain)
	if _, ok := f.chains[k]; !ok {
		return fmt.Errorf("no chain %s", k)
	}
	f.chains[k] = append(f.chains[k], strings.Join(spec, " "))
	return nil
}

// Delete implements IPTables: removes the first matching rule.
func (f *Fake) Delete(table, chain string, spec ...string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	k := key(table, chain)
	r := strings.Join(spec, " ")
	for i, x := range f.chains[k] {
		if x == r {
			f.chains[k] = append(f.chains[k][:i], f.chains[k][i+1:]...)
			return nil
		}
	}
	return fmt.Errorf("rule %q not in %s", r, k)
}

// ClearChain implements IPTables (creating the chain if missing, as go-iptables does).
func (f *Fake) ClearChain(table, chain string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.chains[key(table, chain)] = nil
	return nil
}

// DeleteChain implements IPTables.
func (f *Fake) DeleteChain(table, chain string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	k := key(table, chain)
	if len(f.chains[k]) > 0 {
		return fmt.Errorf("chain %s not empty", k)
	}
	delete(f.chains, k)
	return nil
}

// Dump prints every chain with its rules, sorted, for assertions.
func (f *Fake) Dump() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var keys []string
	for k := range f.chains {
		keys = append(keys, k)
	}
	sortStrings(keys)
	var b strings.Builder
	for _, k := range keys {
		b.WriteString(k + "\n")
		for _, r := range f.chains[k] {
			b.WriteString("  " + r + "\n")
		}
	}
	return b.String()
}
