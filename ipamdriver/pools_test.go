package ipamdriver

import (
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestParsePoolsGood(t *testing.T) {
	cases := []struct {
		in   string
		want []PoolSpec
	}{
		{DefaultPools, []PoolSpec{
			{netip.MustParsePrefix("10.201.0.0/16"), 24},
			{netip.MustParsePrefix("fd77:7765:6674::/48"), 64},
		}},
		{" 172.30.0.0/15:26 , fd00::/8:120 ", []PoolSpec{
			{netip.MustParsePrefix("172.30.0.0/15"), 26},
			{netip.MustParsePrefix("fd00::/8"), 120},
		}},
		{"10.0.0.0/8:/16", []PoolSpec{{netip.MustParsePrefix("10.0.0.0/8"), 16}}},
		{"10.0.0.0/24:24", []PoolSpec{{netip.MustParsePrefix("10.0.0.0/24"), 24}}},
	}
	for _, c := range cases {
		got, err := ParsePools(c.in)
		if err != nil {
			t.Errorf("ParsePools(%q): %v", c.in, err)
			continue
		}
		if !reflect.DeepEqual(got, c.want) {
			t.Errorf("ParsePools(%q) = %v, want %v", c.in, got, c.want)
		}
	}
	specs, _ := ParsePools(DefaultPools)
	if s := formatPools(specs); s != DefaultPools {
		t.Errorf("formatPools round trip = %q, want %q", s, DefaultPools)
	}
}

func TestParsePoolsBad(t *testing.T) {
	cases := []struct {
		in       string
		contains []string
	}{
		{"", []string{"DEFAULT_POOLS is empty"}},
		{"   ", []string{"DEFAULT_POOLS is empty"}},
		{"10.0.0.0/8:16,", []string{"DEFAULT_POOLS", "empty entry"}},
		{"10.0.0.0/8", []string{"DEFAULT_POOLS entry \"10.0.0.0/8\"", "PREFIX:SIZE"}},
		{"fd00::/48", []string{"DEFAULT_POOLS entry \"fd00::/48\"", "PREFIX:SIZE"}},
		{"10.0.0.0:24", []string{"DEFAULT_POOLS entry \"10.0.0.0:24\"", "PREFIX:SIZE"}},
		{"10.0.0.1/8:16", []string{"DEFAULT_POOLS entry \"10.0.0.1/8:16\"", "host bits", "10.0.0.0/8"}},
		{"10.0.0.0/16:8", []string{"DEFAULT_POOLS entry \"10.0.0.0/16:8\"", "between 16 and 30"}},
		{"10.0.0.0/16:31", []string{"DEFAULT_POOLS entry \"10.0.0.0/16:31\"", "between 16 and 30"}},
		{"fd00::/48:127", []string{"between 48 and 126"}},
		{"fd00::/48:abc", []string{"DEFAULT_POOLS entry \"fd00::/48:abc\"", "bad subnet size"}},
		{"10.0.0.0/33:24", []string{"DEFAULT_POOLS entry \"10.0.0.0/33:24\"", "bad prefix"}},
		{"10.201.0.0/16:24,bogus/1:2", []string{"DEFAULT_POOLS entry \"bogus/1:2\""}},
		{"::ffff:10.0.0.0/104:120", []string{"IPv4-mapped"}},
	}
	for _, c := range cases {
		got, err := ParsePools(c.in)
		if err == nil {
			t.Errorf("ParsePools(%q) = %v, want an error", c.in, got)
			continue
		}
		for _, s := range c.contains {
			if !strings.Contains(err.Error(), s) {
				t.Errorf("ParsePools(%q) error %q does not contain %q", c.in, err, s)
			}
		}
	}
}

func TestLastAddrAndReserved(t *testing.T) {
	cases := map[string]string{
		"10.20.0.0/24":   "10.20.0.255",
		"10.0.0.0/8":     "10.255.255.255",
		"10.20.0.4/30":   "10.20.0.7",
		"10.20.0.1/32":   "10.20.0.1",
		"fd00:1::/64":    "fd00:1::ffff:ffff:ffff:ffff",
		"fd00::/8":       "fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
		"fd00::1:0/113":  "fd00::1:7fff",
		"0.0.0.0/0":      "255.255.255.255",
		"fd00::abcd/128": "fd00::abcd",
	}
	for p, want := range cases {
		if got := lastAddr(netip.MustParsePrefix(p)); got.String() != want {
			t.Errorf("lastAddr(%s) = %s, want %s", p, got, want)
		}
	}
	res := []struct {
		pool, addr string
		reserved   bool
	}{
		{"10.20.0.0/24", "10.20.0.0", true},
		{"10.20.0.0/24", "10.20.0.255", true},
		{"10.20.0.0/24", "10.20.0.1", false},
		{"10.20.0.0/31", "10.20.0.0", false},
		{"10.20.0.0/31", "10.20.0.1", false},
		{"10.20.0.7/32", "10.20.0.7", false},
		{"fd00::/64", "fd00::", true},
		{"fd00::/64", "fd00::ffff:ffff:ffff:ffff", false},
		{"fd00::/127", "fd00::", false},
	}
	for _, r := range res {
		got := reservedReason(netip.MustParsePrefix(r.pool), netip.MustParseAddr(r.addr)) != ""
		if got != r.reserved {
			t.Errorf("reserved(%s, %s) = %v, want %v", r.pool, r.addr, got, r.reserved)
		}
	}
}

func TestChoosePoolJumpsOverLargeConflicts(t *testing.T) {
	// 2^47 candidate /64s are blocked; stepping one by one would never end.
	specs := []PoolSpec{{netip.MustParsePrefix("fd00::/16"), 64}}
	used := []netip.Prefix{netip.MustParsePrefix("fd00::/17"), netip.MustParsePrefix("fd00:8000::/64")}
	start := time.Now()
	got, ok := choosePool(specs, true, used, 0)
	if !ok || got.String() != "fd00:8000:0:1::/64" {
		t.Fatalf("choosePool = %v, %v; want fd00:8000:0:1::/64", got, ok)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("choosePool took %v", d)
	}
	// Whole base used: no candidate, and no endless loop at the end of the
	// address space.
	specs = []PoolSpec{{netip.MustParsePrefix("ffff::/16"), 64}}
	if got, ok := choosePool(specs, true, []netip.Prefix{netip.MustParsePrefix("ff00::/8")}, 0); ok {
		t.Fatalf("choosePool = %v, want none", got)
	}
}
