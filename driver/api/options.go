package api

import (
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"strings"
)

// CheckKeys rejects any key of opts not in allowed, suggesting the closest
// valid key, so a typo fails loudly instead of being silently ignored.
func CheckKeys(what string, opts map[string]string, allowed []string) error {
	var unknown []string
	ok := map[string]bool{}
	for _, a := range allowed {
		ok[a] = true
	}
	for k := range opts {
		if !ok[k] {
			unknown = append(unknown, k)
		}
	}
	if len(unknown) == 0 {
		return nil
	}
	sort.Strings(unknown)
	k := unknown[0]
	msg := fmt.Sprintf("unknown %s %q", what, k)
	if s := Closest(k, allowed); s != "" {
		msg += fmt.Sprintf(" (did you mean %q?)", s)
	}
	if len(allowed) == 0 {
		return fmt.Errorf("%s: none are accepted here", msg)
	}
	valid := append([]string(nil), allowed...)
	sort.Strings(valid)
	return fmt.Errorf("%s; accepted: %s", msg, strings.Join(valid, ", "))
}

// Closest returns the candidate nearest to s by edit distance, or "" if none is close.
func Closest(s string, candidates []string) string {
	best, bestD := "", 1<<30
	for _, c := range candidates {
		d := editDistance(strings.ToLower(s), strings.ToLower(c))
		// A suffix match also counts as close: "mtu" vs "com.docker.network.driver.mtu".
		if strings.HasSuffix(c, "."+s) {
			d = 1
		}
		if d < bestD {
			best, bestD = c, d
		}
	}
	if bestD > len(s)/2+2 {
		return ""
	}
	return best
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// Bool parses a boolean option the way Docker does (strconv.ParseBool).
func Bool(opts map[string]string, key string, def bool) (bool, error) {
	v, ok := opts[key]
	if !ok || v == "" {
		return def, nil
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		return def, fmt.Errorf("option %s=%q: want true or false", key, v)
	}
	return b, nil
}

// MTU parses an MTU option: 68 (the IPv4 minimum) to 65535.
func MTU(opts map[string]string, keys ...string) (int, error) {
	for _, k := range keys {
		v, ok := opts[k]
		if !ok || v == "" {
			continue
		}
		n, err := strconv.Atoi(v)
		if err != nil || n < 68 || n > 65535 {
			return 0, fmt.Errorf("option %s=%q: the MTU must be a number from 68 to 65535", k, v)
		}
		return n, nil
	}
	return 0, nil
}

var ifNameRE = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]{0,14}$`)

// IfName checks an interface name: 1 to 15 of letters, digits, '_', '.',
// '-', not starting with '.' or '-'. Stricter than the kernel on purpose:
// '+' is an iptables wildcard and '%d' a kernel name template.
func IfName(key, name string) error {
	if !ifNameRE.MatchString(name) {
		return fmt.Errorf("option %s=%q: an interface name is 1 to 15 letters, digits, '_', '.' or '-', not starting with '.' or '-'", key, name)
	}
	return nil
}
