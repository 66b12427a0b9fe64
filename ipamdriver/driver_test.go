package ipamdriver

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/docker/go-plugins-helpers/ipam"
	"github.com/sirupsen/logrus"

	"github.com/weft-net/weft/store"
)

type fixture struct {
	t    *testing.T
	path string
	st   *store.Store
	d    *Driver
	host []netip.Prefix
	cfg  Config
}

// newFixture opens a fresh store and a driver whose host prefixes are host.
func newFixture(t *testing.T, host ...string) *fixture {
	t.Helper()
	f := &fixture{t: t, path: filepath.Join(t.TempDir(), "weft.db")}
	for _, h := range host {
		f.host = append(f.host, netip.MustParsePrefix(h))
	}
	f.cfg = Config{HostPrefixes: func() ([]netip.Prefix, error) { return f.host, nil }}
	f.open()
	return f
}

func (f *fixture) open() {
	f.t.Helper()
	st, err := store.Open(f.path)
	if err != nil {
		f.t.Fatal(err)
	}
	f.st = st
	f.t.Cleanup(func() { _ = st.Close() })
	d, err := New(st, f.cfg)
	if err != nil {
		f.t.Fatal(err)
	}
	f.d = d
}

func (f *fixture) restart() {
	f.t.Helper()
	if err := f.st.Close(); err != nil {
		f.t.Fatal(err)
	}
	f.open()
}

func (f *fixture) pool(req ipam.RequestPoolRequest) *ipam.RequestPoolResponse {
	f.t.Helper()
	if req.AddressSpace == "" {
		req.AddressSpace = LocalAddressSpace
	}
	res, err := f.d.RequestPool(&req)
	if err != nil {
		f.t.Fatalf("RequestPool(%+v): %v", req, err)
	}
	return res
}

func (f *fixture) poolErr(req ipam.RequestPoolRequest, contains ...string) {
	f.t.Helper()
	if req.AddressSpace == "" {
		req.AddressSpace = LocalAddressSpace
	}
	before := f.d.PoolCount()
	res, err := f.d.RequestPool(&req)
	if err == nil {
		f.t.Fatalf("RequestPool(%+v) = %+v, want an error", req, res)
	}
	for _, s := range contains {
		if !strings.Contains(err.Error(), s) {
			f.t.Errorf("RequestPool(%+v) error %q does not contain %q", req, err, s)
		}
	}
	if n := f.d.PoolCount(); n != before {
		f.t.Errorf("failed RequestPool changed PoolCount from %d to %d", before, n)
	}
}

func (f *fixture) addr(poolID, address string, gateway bool) string {
	f.t.Helper()
	res, err := f.d.RequestAddress(addrReq(poolID, address, gateway))
	if err != nil {
		f.t.Fatalf("RequestAddress(%s, %q, gateway=%v): %v", poolID, address, gateway, err)
	}
	return res.Address
}

func (f *fixture) addrErr(poolID, address string, gateway bool) error {
	f.t.Helper()
	before := f.d.AddressCount(poolID)
	res, err := f.d.RequestAddress(addrReq(poolID, address, gateway))
	if err == nil {
		f.t.Fatalf("RequestAddress(%s, %q) = %+v, want an error", poolID, address, res)
	}
	if n := f.d.AddressCount(poolID); n != before {
		f.t.Errorf("failed RequestAddress changed AddressCount from %d to %d", before, n)
	}
	return err
}

func (f *fixture) release(poolID, address string) {
	f.t.Helper()
	if err := f.d.ReleaseAddress(&ipam.ReleaseAddressRequest{PoolID: poolID, Address: address}); err != nil {
		f.t.Fatalf("ReleaseAddress(%s, %s): %v", poolID, address, err)
	}
}

func addrReq(poolID, address string, gateway bool) *ipam.RequestAddressRequest {
	opts := map[string]string{"com.docker.network.ipam.serial": "true"}
	if gateway {
		opts["RequestAddressType"] = "com.docker.network.gateway"
	}
	return &ipam.RequestAddressRequest{PoolID: poolID, Address: address, Options: opts}
}

func wantErr(t *testing.T, err error, contains ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("want an error containing %q", contains)
	}
	for _, s := range contains {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error %q does not contain %q", err, s)
		}
	}
}

func TestCapabilitiesAndAddressSpaces(t *testing.T) {
	f := newFixture(t)
	c, err := f.d.GetCapabilities()
	if err != nil || c.RequiresMACAddress {
		t.Errorf("GetCapabilities = %+v, %v", c, err)
	}
	s, err := f.d.GetDefaultAddressSpaces()
	if err != nil || s.LocalDefaultAddressSpace != "weft-local" || s.GlobalDefaultAddressSpace != "weft-global" {
		t.Errorf("GetDefaultAddressSpaces = %+v, %v", s, err)
	}
	f.poolErr(ipam.RequestPoolRequest{AddressSpace: "default", Pool: "10.20.0.0/24"}, `"default"`, "weft-local")
	res := f.pool(ipam.RequestPoolRequest{AddressSpace: GlobalAddressSpace, Pool: "10.20.0.0/24"})
	if res.PoolID != "weft-global/10.20.0.0/24" {
		t.Errorf("PoolID = %q", res.PoolID)
	}
}

func TestRequestPoolExplicit(t *testing.T) {
	f := newFixture(t)
	res := f.pool(ipam.RequestPoolRequest{Pool: "10.20.0.0/24"})
	if res.PoolID != "weft-local/10.20.0.0/24" || res.Pool != "10.20.0.0/24" || res.Data == nil || len(res.Data) != 0 {
		t.Fatalf("RequestPool = %+v", res)
	}
	if f.d.PoolCount() != 1 {
		t.Fatalf("PoolCount = %d", f.d.PoolCount())
	}
	f.poolErr(ipam.RequestPoolRequest{Pool: "10.21.0.5/24"}, "--subnet", "host bits", "10.21.0.0/24")
	f.poolErr(ipam.RequestPoolRequest{Pool: "10.20.0.0/16"}, "10.20.0.0/16", "overlaps 10.20.0.0/24")
	f.poolErr(ipam.RequestPoolRequest{Pool: "10.20.0.128/25"}, "10.20.0.128/25", "overlaps 10.20.0.0/24")
	f.poolErr(ipam.RequestPoolRequest{Pool: "not-a-subnet"}, "invalid --subnet", "not-a-subnet")
	f.poolErr(ipam.RequestPoolRequest{Pool: "fd00::/64"}, "IPv6 subnet", "IPv4 pool")
	f.poolErr(ipam.RequestPoolRequest{Pool: "10.30.0.0/24", V6: true}, "IPv4 subnet", "IPv6 pool")

	v6 := f.pool(ipam.RequestPoolRequest{Pool: "fd00:1::/64", V6: true})
	if v6.PoolID != "weft-local/fd00:1::/64" || v6.Pool != "fd00:1::/64" {
		t.Fatalf("RequestPool v6 = %+v", v6)
	}
	if f.d.PoolCount() != 2 {
		t.Fatalf("PoolCount = %d", f.d.PoolCount())
	}
}

func TestRequestPoolOptions(t *testing.T) {
	f := newFixture(t)
	f.poolErr(ipam.RequestPoolRequest{Pool: "10.20.0.0/24", Options: map[string]string{"foo": "1", "bar": "2"}},
		"--ipam-opt bar, foo", "no --ipam-opt options")
	res := f.pool(ipam.RequestPoolRequest{Pool: "10.20.0.0/24", Options: map[string]string{"com.docker.network.ipam.serial": "true"}})
	if res.Pool != "10.20.0.0/24" {
		t.Fatalf("Pool = %q", res.Pool)
	}
}

func TestIPRange(t *testing.T) {
	f := newFixture(t)
	f.poolErr(ipam.RequestPoolRequest{Pool: "10.20.0.0/24", SubPool: "10.21.0.0/25"}, "--ip-range 10.21.0.0/25", "not inside --subnet 10.20.0.0/24")
	f.poolErr(ipam.RequestPoolRequest{Pool: "10.20.0.0/24", SubPool: "10.20.0.0/23"}, "not inside")
	f.poolErr(ipam.RequestPoolRequest{Pool: "10.20.0.0/24", SubPool: "10.20.0.129/25"}, "--ip-range", "10.20.0.128/25")
	f.poolErr(ipam.RequestPoolRequest{SubPool: "10.20.0.128/25"}, "--ip-range", "needs --subnet")

	res := f.pool(ipam.RequestPoolRequest{Pool: "10.20.0.0/24", SubPool: "10.20.0.128/25"})
	if res.PoolID != "weft-local/10.20.0.0/24/10.20.0.128/25" || res.Pool != "10.20.0.0/24" {
		t.Fatalf("RequestPool = %+v", res)
	}
	id := res.PoolID
	if got := f.addr(id, "", true); got != "10.20.0.128/24" {
		t.Errorf("gateway = %s, want 10.20.0.128/24", got)
	}
	if got := f.addr(id, "", false); got != "10.20.0.129/24" {
		t.Errorf("auto = %s, want 10.20.0.129/24", got)
	}
	// Static addresses may be anywhere in --subnet, not only in --ip-range.
	if got := f.addr(id, "10.20.0.5", false); got != "10.20.0.5/24" {
		t.Errorf("static = %s, want 10.20.0.5/24", got)
	}

	// A range at the top of the subnet never yields the broadcast address.
	res = f.pool(ipam.RequestPoolRequest{Pool: "10.30.0.0/24", SubPool: "10.30.0.252/30"})
	var got []string
	for range 3 {
		got = append(got, f.addr(res.PoolID, "", false))
	}
	if strings.Join(got, " ") != "10.30.0.252/24 10.30.0.253/24 10.30.0.254/24" {
		t.Errorf("range addresses = %v", got)
	}
	wantErr(t, f.addrErr(res.PoolID, "", false), "address pool 10.30.0.252/30 is exhausted: no free address left (3 in use", "--ip-range")
}

func TestGateway(t *testing.T) {
	f := newFixture(t)
	id := f.pool(ipam.RequestPoolRequest{Pool: "10.20.0.0/24"}).PoolID
	if got := f.addr(id, "", true); got != "10.20.0.1/24" {
		t.Fatalf("auto gateway = %s", got)
	}
	if got := f.addr(id, "", false); got != "10.20.0.2/24" {
		t.Fatalf("first container = %s", got)
	}
	wantErr(t, f.addrErr(id, "10.20.0.1", false), "address 10.20.0.1 is already in use on network pool 10.20.0.0/24", "gateway")
	if kind := f.d.pools[id].addrs[netip.MustParseAddr("10.20.0.1")]; kind != kindGateway {
		t.Errorf("kind of .1 = %q", kind)
	}

	id2 := f.pool(ipam.RequestPoolRequest{Pool: "10.21.0.0/24"}).PoolID
	if got := f.addr(id2, "10.21.0.254", true); got != "10.21.0.254/24" {
		t.Fatalf("explicit gateway = %s", got)
	}
	if kind := f.d.pools[id2].addrs[netip.MustParseAddr("10.21.0.254")]; kind != kindGateway {
		t.Errorf("kind of .254 = %q", kind)
	}
	wantErr(t, f.addrErr(id2, "10.22.0.1", true), "10.22.0.1", "outside", "--gateway")
	wantErr(t, f.addrErr(id2, "10.21.0.255", true), "broadcast address", "--gateway")
	// The explicit gateway did not move the cursor: containers start low.
	if got := f.addr(id2, "", false); got != "10.21.0.1/24" {
		t.Errorf("first container = %s", got)
	}
}

func TestStaticAddressErrors(t *testing.T) {
	f := newFixture(t)
	id := f.pool(ipam.RequestPoolRequest{Pool: "10.20.0.0/24"}).PoolID
	if got := f.addr(id, "10.20.0.5", false); got != "10.20.0.5/24" {
		t.Fatalf("static = %s", got)
	}
	if kind := f.d.pools[id].addrs[netip.MustParseAddr("10.20.0.5")]; kind != kindStatic {
		t.Errorf("kind = %q", kind)
	}
	err := f.addrErr(id, "10.20.0.5", false)
	if err.Error() != "address 10.20.0.5 is already in use on network pool 10.20.0.0/24" {
		t.Errorf("in-use error = %q", err)
	}
	wantErr(t, f.addrErr(id, "10.20.1.5", false), "address 10.20.1.5 is outside the network's subnet 10.20.0.0/24", "--ip")
	wantErr(t, f.addrErr(id, "fd00::5", false), "outside")
	wantErr(t, f.addrErr(id, "10.20.0.0", false), "network address", "10.20.0.0/24")
	wantErr(t, f.addrErr(id, "10.20.0.255", false), "broadcast address")
	wantErr(t, f.addrErr(id, "10.20.0.300", false), "--ip", "not an IP address")
	// The 4-in-6 spelling is the same address.
	wantErr(t, f.addrErr(id, "::ffff:10.20.0.5", false), "already in use")

	_, err = f.d.RequestAddress(addrReq("weft-local/10.99.0.0/24", "", false))
	wantErr(t, err, "unknown address pool", "weft-local/10.99.0.0/24")

	// /31 and /32 have no network or broadcast address.
	id31 := f.pool(ipam.RequestPoolRequest{Pool: "10.40.0.0/31"}).PoolID
	if a, b := f.addr(id31, "", false), f.addr(id31, "", false); a != "10.40.0.0/31" || b != "10.40.0.1/31" {
		t.Errorf("/31 addresses = %s %s", a, b)
	}
	wantErr(t, f.addrErr(id31, "", false), "address pool 10.40.0.0/31 is exhausted")
}

func TestIPv6(t *testing.T) {
	f := newFixture(t)
	id := f.pool(ipam.RequestPoolRequest{Pool: "fd00:1::/64", V6: true}).PoolID
	if got := f.addr(id, "", true); got != "fd00:1::1/64" {
		t.Errorf("gateway = %s", got)
	}
	if got := f.addr(id, "", false); got != "fd00:1::2/64" {
		t.Errorf("auto = %s", got)
	}
	if got := f.addr(id, "fd00:1::ffff:ffff:ffff:ffff", false); got != "fd00:1::ffff:ffff:ffff:ffff/64" {
		t.Errorf("static last address = %s", got)
	}
	if got := f.addr(id, "fd00:1::abcd:1", false); got != "fd00:1::abcd:1/64" {
		t.Errorf("static = %s", got)
	}
	wantErr(t, f.addrErr(id, "fd00:1::", false), "subnet-router anycast", "--ip6")
	wantErr(t, f.addrErr(id, "fd00:2::1", false), "outside", "--ip6")
	wantErr(t, f.addrErr(id, "fd00:1::abcd:1", false), "address fd00:1::abcd:1 is already in use on network pool fd00:1::/64")

	// Small IPv6 range: wraps and exhausts without the anycast address.
	id2 := f.pool(ipam.RequestPoolRequest{Pool: "fd00:3::/126", V6: true}).PoolID
	var got []string
	for range 3 {
		got = append(got, f.addr(id2, "", false))
	}
	if strings.Join(got, " ") != "fd00:3::1/126 fd00:3::2/126 fd00:3::3/126" {
		t.Errorf("/126 addresses = %v", got)
	}
	wantErr(t, f.addrErr(id2, "", false), "address pool fd00:3::/126 is exhausted")
	f.release(id2, "fd00:3::2")
	if a := f.addr(id2, "", false); a != "fd00:3::2/126" {
		t.Errorf("after release = %s", a)
	}
}

func heapInUse() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse
}

func TestLargePoolsAllocateQuicklyWithLittleMemory(t *testing.T) {
	f := newFixture(t)
	cases := []struct {
		pool  string
		v6    bool
		n     int
		first string
		last  string
	}{
		{"10.0.0.0/8", false, 10000, "10.0.0.1/8", "10.0.39.16/8"},
		{"fd00:9::/64", true, 2000, "fd00:9::1/64", "fd00:9::7d0/64"},
	}
	for _, c := range cases {
		id := f.pool(ipam.RequestPoolRequest{Pool: c.pool, V6: c.v6}).PoolID
		before := heapInUse()
		start := time.Now()
		var first, last string
		for i := range c.n {
			last = f.addr(id, "", false)
			if i == 0 {
				first = last
			}
		}
		elapsed := time.Since(start)
		grown := int64(heapInUse()) - int64(before)
		t.Logf("%s: %d addresses in %v, heap grew %d KiB", c.pool, c.n, elapsed, grown/1024)
		if first != c.first || last != c.last {
			t.Errorf("%s: first %s last %s, want %s and %s", c.pool, first, last, c.first, c.last)
		}
		if f.d.AddressCount(id) != c.n {
			t.Errorf("%s: AddressCount = %d, want %d", c.pool, f.d.AddressCount(id), c.n)
		}
		// A byte or even a bit per address of a /8 would be 16 or 2 MiB;
		// the map of allocated addresses is well under 2 MiB here.
		if grown > 2<<20 {
			t.Errorf("%s: heap grew by %d bytes for %d addresses", c.pool, grown, c.n)
		}
		if elapsed > 60*time.Second {
			t.Errorf("%s: %d allocations took %v", c.pool, c.n, elapsed)
		}
	}
	// A static address far away does not slow the scan down.
	id := "weft-local/fd00:9::/64"
	if got := f.addr(id, "fd00:9::ffff:ffff:ffff:fffe", false); got != "fd00:9::ffff:ffff:ffff:fffe/64" {
		t.Fatalf("static = %s", got)
	}
}

func TestAllocationCostIndependentOfPoolSize(t *testing.T) {
	// With the cursor at the top of a huge pool, the next allocation wraps
	// to the bottom instead of walking the space: it must return at once.
	f := newFixture(t)
	id := f.pool(ipam.RequestPoolRequest{Pool: "fd00:8::/64", V6: true}).PoolID
	f.addr(id, "fd00:8::ffff:ffff:ffff:ffff", false)
	f.d.pools[id].cursor = netip.MustParseAddr("fd00:8::ffff:ffff:ffff:fffe")
	start := time.Now()
	if got := f.addr(id, "", false); got != "fd00:8::1/64" {
		t.Errorf("after wrap = %s, want fd00:8::1/64", got)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("wrap took %v", d)
	}
}

func TestAutoPool(t *testing.T) {
	f := newFixture(t, "0.0.0.0/0", "::/0", "10.201.0.0/24", "10.201.1.128/25", "fd77:7765:6674:1::/64", "192.0.2.0/24")
	next := func(v6 bool) string {
		t.Helper()
		return f.pool(ipam.RequestPoolRequest{V6: v6}).Pool
	}
	if p := next(false); p != "10.201.2.0/24" {
		t.Errorf("first auto pool = %s, want 10.201.2.0/24 (skipping host prefixes)", p)
	}
	if p := next(false); p != "10.201.3.0/24" {
		t.Errorf("second auto pool = %s, want 10.201.3.0/24 (skipping the weft pool)", p)
	}
	f.pool(ipam.RequestPoolRequest{Pool: "10.201.4.0/22"})
	if p := next(false); p != "10.201.8.0/24" {
		t.Errorf("auto pool after explicit /22 = %s, want 10.201.8.0/24", p)
	}
	if p := next(true); p != "fd77:7765:6674::/64" {
		t.Errorf("first IPv6 auto pool = %s", p)
	}
	if p := next(true); p != "fd77:7765:6674:2::/64" {
		t.Errorf("second IPv6 auto pool = %s, want fd77:7765:6674:2::/64", p)
	}
	if f.d.PoolCount() != 6 {
		t.Errorf("PoolCount = %d", f.d.PoolCount())
	}
	// Host prefixes are read on every request, not cached.
	f.host = append(f.host, netip.MustParsePrefix("10.201.9.0/24"))
	if p := next(false); p != "10.201.10.0/24" {
		t.Errorf("auto pool after new host route = %s, want 10.201.10.0/24", p)
	}
	if rec := f.d.pools["weft-local/10.201.10.0/24"].rec; !rec.Auto {
		t.Errorf("auto pool record = %+v", rec)
	}
}

func TestAutoPoolExhaustedAndErrors(t *testing.T) {
	f := newFixture(t, "10.99.0.0/24")
	f.cfg.DefaultPools = []PoolSpec{{netip.MustParsePrefix("10.99.0.0/23"), 24}}
	f.restart()
	if p := f.pool(ipam.RequestPoolRequest{}).Pool; p != "10.99.1.0/24" {
		t.Fatalf("auto pool = %s", p)
	}
	f.poolErr(ipam.RequestPoolRequest{}, "no free IPv4 subnet", "10.99.0.0/23:24", "--subnet", "DEFAULT_POOLS")
	f.poolErr(ipam.RequestPoolRequest{V6: true}, "no IPv6 default pool", "--subnet", "DEFAULT_POOLS")

	f.cfg.HostPrefixes = func() ([]netip.Prefix, error) { return nil, errors.New("netlink broke") }
	f.restart()
	f.poolErr(ipam.RequestPoolRequest{}, "netlink broke", "--subnet")
	// An explicit subnet does not need the host's routes.
	f.pool(ipam.RequestPoolRequest{Pool: "10.50.0.0/24"})
}

func TestNewRejectsBadDefaultPools(t *testing.T) {
	st, err := store.Open(filepath.Join(t.TempDir(), "weft.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	_, err = New(st, Config{DefaultPools: []PoolSpec{{netip.MustParsePrefix("10.1.2.3/16"), 24}}})
	wantErr(t, err, "DEFAULT_POOLS", "host bits")
	if _, err := New(nil, Config{}); err == nil {
		t.Error("New(nil) succeeded")
	}
	d, err := New(st, Config{})
	if err != nil {
		t.Fatal(err)
	}
	if formatPools(d.defaults) != DefaultPools {
		t.Errorf("defaults = %s", formatPools(d.defaults))
	}
}

func TestExhaustionReleaseAndReuse(t *testing.T) {
	f := newFixture(t)
	id := f.pool(ipam.RequestPoolRequest{Pool: "10.20.0.0/30"}).PoolID
	if got := f.addr(id, "", true); got != "10.20.0.1/30" {
		t.Fatalf("gateway = %s", got)
	}
	if got := f.addr(id, "", false); got != "10.20.0.2/30" {
		t.Fatalf("auto = %s", got)
	}
	err := f.addrErr(id, "", false)
	if !strings.HasPrefix(err.Error(), "address pool 10.20.0.0/30 is exhausted: no free address left (2 in use") {
		t.Errorf("exhausted error = %q", err)
	}
	f.release(id, "10.20.0.2")
	if n := f.d.AddressCount(id); n != 1 {
		t.Errorf("AddressCount after release = %d", n)
	}
	if got := f.addr(id, "", false); got != "10.20.0.2/30" {
		t.Errorf("reused = %s", got)
	}
	// Releasing what is not allocated, or in an unknown pool, is fine.
	f.release(id, "10.20.0.3")
	f.release("weft-local/10.99.0.0/24", "10.99.0.7")
	if err := f.d.ReleaseAddress(&ipam.ReleaseAddressRequest{PoolID: id, Address: "bogus"}); err == nil {
		t.Error("releasing a non-address succeeded")
	}
	if n := f.d.AddressCount(id); n != 2 {
		t.Errorf("AddressCount = %d", n)
	}

	// The cursor moves forward: a just-released address is not reused
	// while later ones are free.
	id2 := f.pool(ipam.RequestPoolRequest{Pool: "10.20.1.0/29"}).PoolID
	f.addr(id2, "", false) // .1
	f.addr(id2, "", false) // .2
	f.release(id2, "10.20.1.1")
	if got := f.addr(id2, "", false); got != "10.20.1.3/29" {
		t.Errorf("after release = %s, want 10.20.1.3/29", got)
	}

	if err := f.d.ReleasePool(&ipam.ReleasePoolRequest{PoolID: id}); err != nil {
		t.Fatal(err)
	}
	if f.d.PoolCount() != 1 || f.d.AddressCount(id) != 0 {
		t.Errorf("after ReleasePool: PoolCount %d AddressCount %d", f.d.PoolCount(), f.d.AddressCount(id))
	}
	if err := f.d.ReleasePool(&ipam.ReleasePoolRequest{PoolID: id}); err != nil {
		t.Errorf("second ReleasePool: %v", err)
	}
	// The subnet is free again.
	f.pool(ipam.RequestPoolRequest{Pool: "10.20.0.0/30"})
}

func TestConcurrentRequestAddress(t *testing.T) {
	f := newFixture(t)
	id := f.pool(ipam.RequestPoolRequest{Pool: "10.20.0.0/24"}).PoolID
	const n = 50
	var wg sync.WaitGroup
	results := make([]string, n)
	errs := make([]error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res, err := f.d.RequestAddress(addrReq(id, "", false))
			if err == nil {
				results[i] = res.Address
			}
			errs[i] = err
		}()
	}
	wg.Wait()
	seen := map[string]bool{}
	for i, a := range results {
		if errs[i] != nil {
			t.Fatalf("goroutine %d: %v", i, errs[i])
		}
		if seen[a] {
			t.Errorf("address %s handed out twice", a)
		}
		seen[a] = true
	}
	if len(seen) != n || f.d.AddressCount(id) != n {
		t.Errorf("unique %d, AddressCount %d, want %d", len(seen), f.d.AddressCount(id), n)
	}
	for i := 1; i <= n; i++ {
		if a := fmt.Sprintf("10.20.0.%d/24", i); !seen[a] {
			t.Errorf("missing %s", a)
		}
	}
}

func TestRestartKeepsState(t *testing.T) {
	f := newFixture(t)
	id := f.pool(ipam.RequestPoolRequest{Pool: "10.20.0.0/24"}).PoolID
	id6 := f.pool(ipam.RequestPoolRequest{Pool: "fd00:1::/64", V6: true}).PoolID
	idAuto := f.pool(ipam.RequestPoolRequest{}).PoolID
	f.addr(id, "", true)            // .1 gateway
	f.addr(id, "10.20.0.50", false) // static
	for range 3 {
		f.addr(id, "", false) // .2 .3 .4
	}
	f.release(id, "10.20.0.3")
	f.addr(id6, "", false)

	f.restart()

	if n := f.d.PoolCount(); n != 3 {
		t.Fatalf("PoolCount after restart = %d", n)
	}
	if n := f.d.AddressCount(id); n != 4 {
		t.Errorf("AddressCount after restart = %d, want 4", n)
	}
	if n := f.d.AddressCount(id6); n != 1 {
		t.Errorf("IPv6 AddressCount after restart = %d, want 1", n)
	}
	if kind := f.d.pools[id].addrs[netip.MustParseAddr("10.20.0.1")]; kind != kindGateway {
		t.Errorf("gateway kind after restart = %q", kind)
	}
	if got := f.addr(id, "", false); got != "10.20.0.5/24" {
		t.Errorf("next auto after restart = %s, want 10.20.0.5/24 (cursor kept)", got)
	}
	if got := f.addr(id6, "", false); got != "fd00:1::2/64" {
		t.Errorf("next IPv6 auto after restart = %s", got)
	}
	wantErr(t, f.addrErr(id, "10.20.0.50", false), "already in use")
	wantErr(t, f.addrErr(id, "10.20.0.1", false), "already in use")
	f.poolErr(ipam.RequestPoolRequest{Pool: "10.20.0.0/24"}, "overlaps")
	if p := f.pool(ipam.RequestPoolRequest{}).Pool; p != "10.201.1.0/24" {
		t.Errorf("auto pool after restart = %s, want 10.201.1.0/24", p)
	}

	if err := f.d.ReleasePool(&ipam.ReleasePoolRequest{PoolID: id}); err != nil {
		t.Fatal(err)
	}
	f.restart()
	if n := f.d.PoolCount(); n != 3 {
		t.Errorf("PoolCount after release and restart = %d", n)
	}
	var left int
	if err := f.st.View(func(tx *store.Tx) error { left = tx.Count(bucketAddrs, id+"|"); return nil }); err != nil {
		t.Fatal(err)
	}
	if left != 0 {
		t.Errorf("%d address records of the released pool left in the store", left)
	}
	if _, ok := f.d.pools[idAuto]; !ok {
		t.Errorf("auto pool %s lost", idAuto)
	}
}

func TestStoreFailureLeavesMemoryUnchanged(t *testing.T) {
	f := newFixture(t)
	id := f.pool(ipam.RequestPoolRequest{Pool: "10.20.0.0/24"}).PoolID
	f.addr(id, "", true)
	f.addr(id, "", false)
	p := f.d.pools[id]
	cursor, rec := p.cursor, p.rec
	if err := f.st.Close(); err != nil {
		t.Fatal(err)
	}

	wantErr(t, f.addrErr(id, "", false), "state store")
	wantErr(t, f.addrErr(id, "10.20.0.9", false), "state store")
	wantErr(t, f.addrErr(id, "", true), "state store")
	if p.cursor != cursor || p.rec != rec {
		t.Errorf("cursor changed from %s to %s", cursor, p.cursor)
	}
	if _, ok := p.addrs[netip.MustParseAddr("10.20.0.9")]; ok {
		t.Error("failed static address is marked allocated")
	}
	err := f.d.ReleaseAddress(&ipam.ReleaseAddressRequest{PoolID: id, Address: "10.20.0.2"})
	wantErr(t, err, "state store")
	if n := f.d.AddressCount(id); n != 2 {
		t.Errorf("AddressCount after failed release = %d, want 2", n)
	}
	wantErr(t, f.d.ReleasePool(&ipam.ReleasePoolRequest{PoolID: id}), "state store")
	if n := f.d.PoolCount(); n != 1 {
		t.Errorf("PoolCount after failed ReleasePool = %d", n)
	}
	f.poolErr(ipam.RequestPoolRequest{Pool: "10.30.0.0/24"}, "state store")
	f.poolErr(ipam.RequestPoolRequest{}, "state store")
	if _, ok := f.d.pools["weft-local/10.30.0.0/24"]; ok {
		t.Error("failed pool is registered")
	}
}

func TestMain(m *testing.M) {
	// Keep test output readable; run with -v and edit here to see the logs.
	logrus.SetLevel(logrus.WarnLevel)
	os.Exit(m.Run())
}

// TestSwarmInstanceServesManagerAndNode: on a swarm manager that also runs
// tasks, swarmkit (global address space) and the node's libnetwork (local
// space) both ask the swarm instance for the same subnet, gateway and
// addresses, and a restarted manager asks again for what it holds.
func TestSwarmInstanceServesManagerAndNode(t *testing.T) {
	f := newFixture(t)
	f.cfg.Swarm = true
	f.restart()
	mgr := f.pool(ipam.RequestPoolRequest{AddressSpace: GlobalAddressSpace, Pool: "10.30.0.0/24"})
	node := f.pool(ipam.RequestPoolRequest{AddressSpace: LocalAddressSpace, Pool: "10.30.0.0/24"})
	if mgr.PoolID == node.PoolID {
		t.Fatalf("manager and node share pool %s", mgr.PoolID)
	}
	if again := f.pool(ipam.RequestPoolRequest{AddressSpace: GlobalAddressSpace, Pool: "10.30.0.0/24"}); again.PoolID != mgr.PoolID {
		t.Errorf("replayed manager request got %s, want %s", again.PoolID, mgr.PoolID)
	}
	if _, err := f.d.RequestPool(&ipam.RequestPoolRequest{AddressSpace: GlobalAddressSpace, Pool: "10.30.0.0/25"}); err == nil || !strings.Contains(err.Error(), "overlaps") {
		t.Errorf("an overlapping swarm subnet: %v", err)
	}
	a, err := f.d.RequestAddress(&ipam.RequestAddressRequest{PoolID: mgr.PoolID})
	if err != nil {
		t.Fatal(err)
	}
	b, err := f.d.RequestAddress(&ipam.RequestAddressRequest{PoolID: mgr.PoolID})
	if err != nil || b.Address == a.Address {
		t.Fatalf("second automatic address %v (%v), first %s", b, err, a.Address)
	}
	ip := strings.Split(a.Address, "/")[0]
	for _, pool := range []string{node.PoolID, mgr.PoolID} { // the node's copy, then the manager's replay
		if got, err := f.d.RequestAddress(&ipam.RequestAddressRequest{PoolID: pool, Address: ip}); err != nil || got.Address != a.Address {
			t.Errorf("pool %s: asking for %s again: %v %v", pool, ip, got, err)
		}
	}
	// A local instance keeps refusing both.
	l := newFixture(t)
	l.pool(ipam.RequestPoolRequest{Pool: "10.31.0.0/24"})
	if _, err := l.d.RequestPool(&ipam.RequestPoolRequest{AddressSpace: LocalAddressSpace, Pool: "10.31.0.0/24"}); err == nil {
		t.Error("local instance accepted the same subnet twice")
	}
}

// The swarm manager passes an IPv6 pool request the options map of the
// IPv4 pool's gateway request; that key is not the user's --ipam-opt.
func TestPoolToleratesSwarmGatewayOption(t *testing.T) {
	f := newFixture(t)
	// ... and with V6 false: swarmkit never sets it.
	r := f.pool(ipam.RequestPoolRequest{AddressSpace: GlobalAddressSpace, Pool: "fd00:41::/64",
		Options: map[string]string{"RequestAddressType": "com.docker.network.gateway"}})
	if r.Pool != "fd00:41::/64" {
		t.Fatalf("pool %v", r)
	}
	f.poolErr(ipam.RequestPoolRequest{AddressSpace: LocalAddressSpace, Pool: "fd00:42::/64"}, "it is an IPv6 subnet but Docker asked for an IPv4 pool")
	f.poolErr(ipam.RequestPoolRequest{AddressSpace: GlobalAddressSpace, Pool: "10.42.0.0/24",
		Options: map[string]string{"color": "blue"}}, "unknown --ipam-opt color")
}

// A node of a swarm asking for an IPv6 address itself: the manager gave
// none, and another node would hand out the same one. Refused, clearly;
// gateways (each node's own) and given addresses are fine.
func TestSwarmNodeRefusesOwnIPv6Choice(t *testing.T) {
	f := newFixture(t)
	f.cfg.Swarm = true
	f.restart()
	p := f.pool(ipam.RequestPoolRequest{AddressSpace: LocalAddressSpace, Pool: "fd00:41::/64", V6: true})
	if _, err := f.d.RequestAddress(addrReq(p.PoolID, "", true)); err != nil {
		t.Fatalf("gateway: %v", err)
	}
	if _, err := f.d.RequestAddress(addrReq(p.PoolID, "fd00:41::9", false)); err != nil {
		t.Fatalf("an address from the manager: %v", err)
	}
	_, err := f.d.RequestAddress(addrReq(p.PoolID, "", false))
	wantErr(t, err, "gave this container no IPv6 address", "without --ipv6")
	p4 := f.pool(ipam.RequestPoolRequest{AddressSpace: LocalAddressSpace, Pool: "10.41.0.0/24"})
	if _, err := f.d.RequestAddress(addrReq(p4.PoolID, "", false)); err != nil {
		t.Fatalf("IPv4 stays as it was: %v", err)
	}
}

// Docker 29 passes --subnet 0.0.0.0/N and ::/N to a remote IPAM driver as
// given, meaning "any free /N from the default pools".
func TestUnspecifiedSubnetMeansAnyFree(t *testing.T) {
	f := newFixture(t, "0.0.0.0/0", "10.201.0.0/24")
	pool := func(req ipam.RequestPoolRequest, want string) string {
		t.Helper()
		res := f.pool(req)
		if res.Pool != want {
			t.Errorf("RequestPool(%+v) = %s, want %s", req, res.Pool, want)
		}
		if rec := f.d.pools[res.PoolID].rec; !rec.Auto {
			t.Errorf("pool %s not recorded as chosen by weft: %+v", res.Pool, rec)
		}
		return res.PoolID
	}
	first := pool(ipam.RequestPoolRequest{Pool: "0.0.0.0/24"}, "10.201.1.0/24")
	pool(ipam.RequestPoolRequest{Pool: "0.0.0.0/26"}, "10.201.2.0/26")
	pool(ipam.RequestPoolRequest{Pool: "0.0.0.0/0"}, "10.201.3.0/24") // /0: the pool's own size
	pool(ipam.RequestPoolRequest{Pool: "::/64", V6: true}, "fd77:7765:6674::/64")
	pool(ipam.RequestPoolRequest{Pool: "::/56", V6: true}, "fd77:7765:6674:100::/56")

	// A freed subnet is found again.
	if err := f.d.ReleasePool(&ipam.ReleasePoolRequest{PoolID: first}); err != nil {
		t.Fatal(err)
	}
	pool(ipam.RequestPoolRequest{Pool: "0.0.0.0/24"}, "10.201.1.0/24")

	f.poolErr(ipam.RequestPoolRequest{Pool: "0.0.0.0/8"}, "--subnet 0.0.0.0/8", "no IPv4 default pool can hold a /8", "DEFAULT_POOLS=10.201.0.0/16:24")
	f.poolErr(ipam.RequestPoolRequest{Pool: "::/32", V6: true}, "--subnet ::/32", "no IPv6 default pool can hold a /32")
	f.poolErr(ipam.RequestPoolRequest{Pool: "::/64"}, "--subnet ::/64", "IPv6 subnet", "IPv4 pool")
	f.poolErr(ipam.RequestPoolRequest{Pool: "0.0.0.0/24", SubPool: "10.201.9.0/25"}, "--ip-range", "explicit --subnet")

	// Exhausted for that size, while the pool's own size has nothing to do with it.
	f.cfg.DefaultPools = []PoolSpec{{netip.MustParsePrefix("10.99.0.0/23"), 24}}
	f.restart()
	pool(ipam.RequestPoolRequest{Pool: "0.0.0.0/23"}, "10.99.0.0/23")
	f.poolErr(ipam.RequestPoolRequest{Pool: "0.0.0.0/25"}, "no free IPv4 /25 subnet left", "10.99.0.0/23:24")
}
