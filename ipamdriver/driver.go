// Package ipamdriver is weft's IPAM driver (docker.ipamdriver/1.0): it hands
// out subnets and addresses and persists every change in weft's store before
// it answers, because Docker never replays IPAM calls after a restart.
//
// Only allocated addresses are kept (a map per pool plus a cursor), never a
// bitmap of the pool, so an IPv4 /8 or an IPv6 /64 costs no more than a /24.
package ipamdriver

import (
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"strings"
	"sync"

	"github.com/docker/go-plugins-helpers/ipam"
	"github.com/sirupsen/logrus"

	"github.com/weft-net/weft/store"
)

// Address spaces weft reports to Docker.
const (
	LocalAddressSpace  = "weft-local"
	GlobalAddressSpace = "weft-global"
)

// Store buckets. Address keys are PoolID + "|" + address so a pool's
// addresses can be listed and deleted by prefix; PoolIDs never contain '|'.
const (
	bucketPools = "ipam-pools"
	bucketAddrs = "ipam-addrs"
	keySep      = "|"
)

// Address kinds recorded with each allocation.
const (
	kindGateway = "gateway"
	kindStatic  = "static"
	kindAuto    = "auto"
)

// Option keys and values Docker sends.
const (
	optRequestAddressType = "RequestAddressType"
	gatewayAddressType    = "com.docker.network.gateway"
	dockerOptionPrefix    = "com.docker."
)

var _ ipam.Ipam = (*Driver)(nil)

// Config configures a Driver.
type Config struct {
	// DefaultPools are where subnets come from when --subnet is not given.
	// Empty means the DefaultPools constant.
	DefaultPools []PoolSpec
	// HostPrefixes lists prefixes in use on the host (routes and interface
	// addresses) so automatic subnets avoid them. Nil means
	// HostPrefixesNetlink.
	HostPrefixes func() ([]netip.Prefix, error)
	// Swarm is set for the swarm (SCOPE=global) instance: swarmkit on the
	// manager allocates in the global address space and each node asks
	// again, in the local space, for the subnet, gateway and addresses the
	// manager chose, and a restarted manager replays its allocations.
	Swarm bool
}

// Driver implements ipam.Ipam.
type Driver struct {
	st           *store.Store
	defaults     []PoolSpec
	hostPrefixes func() ([]netip.Prefix, error)
	swarm        bool

	mu    sync.Mutex // guards pools and everything inside them
	pools map[string]*pool
}

// poolRecord is the JSON stored in bucket "ipam-pools" under the PoolID.
type poolRecord struct {
	AddressSpace string `json:"addressSpace"`
	Pool         string `json:"pool"`
	SubPool      string `json:"subPool,omitempty"`
	// Auto is true when weft chose the subnet from DEFAULT_POOLS.
	Auto bool `json:"auto,omitempty"`
	// Cursor is the last automatically allocated address; persisted so a
	// restarted plugin keeps moving forward instead of reusing addresses
	// that were just released (stale ARP/neighbour caches elsewhere).
	Cursor string `json:"cursor,omitempty"`
}

// addrRecord is the JSON stored in bucket "ipam-addrs".
type addrRecord struct {
	Kind string `json:"kind"`
}

type pool struct {
	id     string
	rec    poolRecord
	prefix netip.Prefix
	sub    netip.Prefix // invalid when there is no --ip-range
	cursor netip.Addr   // invalid until the first automatic allocation
	addrs  map[netip.Addr]string
}

// rangePrefix is where automatic addresses come from.
func (p *pool) rangePrefix() netip.Prefix {
	if p.sub.IsValid() {
		return p.sub
	}
	return p.prefix
}

// nextFree scans forward from start (inclusive), wrapping once around the
// range. Every step lands either on a free address (and returns) or on an
// allocated or reserved one, so the loop runs at most len(addrs)+3 times:
// the cost depends on what is allocated, never on the size of the pool.
func (p *pool) nextFree(start netip.Addr) (netip.Addr, bool) {
	r := p.rangePrefix()
	first, last := r.Addr(), lastAddr(r)
	if !start.IsValid() || !r.Contains(start) {
		start = first
	}
	a := start
	for {
		if _, used := p.addrs[a]; !used && reservedReason(p.prefix, a) == "" {
			return a, true
		}
		if a == last {
			a = first
		} else {
			a = a.Next()
		}
		if a == start {
			return netip.Addr{}, false
		}
	}
}

func (p *pool) addrKey(a netip.Addr) string { return p.id + keySep + a.String() }

func (p *pool) log() *logrus.Entry {
	return logrus.WithFields(logrus.Fields{"pool": p.id})
}

// New builds a Driver and loads all pools and addresses from st.
func New(st *store.Store, cfg Config) (*Driver, error) {
	if st == nil {
		return nil, errors.New("ipamdriver: nil store")
	}
	defaults := cfg.DefaultPools
	if len(defaults) == 0 {
		var err error
		if defaults, err = ParsePools(DefaultPools); err != nil {
			return nil, fmt.Errorf("ipamdriver: built-in default pools: %w", err)
		}
	}
	for _, s := range defaults {
		if err := s.validate(); err != nil {
			return nil, fmt.Errorf("ipamdriver: DEFAULT_POOLS entry %s: %w", s, err)
		}
	}
	hp := cfg.HostPrefixes
	if hp == nil {
		hp = HostPrefixesNetlink
	}
	d := &Driver{
		st:           st,
		defaults:     append([]PoolSpec(nil), defaults...),
		hostPrefixes: hp,
		swarm:        cfg.Swarm,
		pools:        map[string]*pool{},
	}
	if err := d.load(); err != nil {
		return nil, fmt.Errorf("ipamdriver: load state from %s: %w", st.Path(), err)
	}
	return d, nil
}

func (d *Driver) load() error {
	return d.st.View(func(tx *store.Tx) error {
		err := tx.ForEach(bucketPools, "", func(id string, raw []byte) error {
			var rec poolRecord
			if err := store.Decode(raw, &rec); err != nil {
				return fmt.Errorf("pool %s: %w", id, err)
			}
			p, err := poolFromRecord(id, rec)
			if err != nil {
				return fmt.Errorf("pool %s: %w", id, err)
			}
			d.pools[id] = p
			return nil
		})
		if err != nil {
			return err
		}
		return tx.ForEach(bucketAddrs, "", func(key string, raw []byte) error {
			i := strings.LastIndex(key, keySep)
			if i < 0 {
				return fmt.Errorf("address record %q: malformed key", key)
			}
			id, as := key[:i], key[i+1:]
			p, ok := d.pools[id]
			if !ok {
				// Pools and their addresses are deleted in one transaction,
				// so this needs manual tampering; ignoring it is harmless.
				logrus.WithFields(logrus.Fields{"pool": id, "address": as}).Warn("ipam: ignoring stored address of unknown pool")
				return nil
			}
			a, err := netip.ParseAddr(as)
			if err != nil {
				return fmt.Errorf("address record %q: %w", key, err)
			}
			var rec addrRecord
			if err := store.Decode(raw, &rec); err != nil {
				return fmt.Errorf("address record %q: %w", key, err)
			}
			p.addrs[a] = rec.Kind
			return nil
		})
	})
}

func poolFromRecord(id string, rec poolRecord) (*pool, error) {
	pfx, err := netip.ParsePrefix(rec.Pool)
	if err != nil {
		return nil, fmt.Errorf("bad subnet: %w", err)
	}
	p := &pool{id: id, rec: rec, prefix: pfx, addrs: map[netip.Addr]string{}}
	if rec.SubPool != "" {
		if p.sub, err = netip.ParsePrefix(rec.SubPool); err != nil {
			return nil, fmt.Errorf("bad ip range: %w", err)
		}
	}
	if rec.Cursor != "" {
		if c, err := netip.ParseAddr(rec.Cursor); err == nil {
			p.cursor = c
		} else {
			// Only costs address reuse order; not worth refusing to start.
			logrus.WithFields(logrus.Fields{"pool": id, "cursor": rec.Cursor}).Warn("ipam: ignoring unreadable cursor")
		}
	}
	return p, nil
}

// PoolCount is the number of pools (for tests and metrics).
func (d *Driver) PoolCount() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.pools)
}

// AddressCount is the number of allocated addresses in a pool, including the
// gateway and auxiliary addresses; 0 for an unknown pool.
func (d *Driver) AddressCount(poolID string) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	if p, ok := d.pools[poolID]; ok {
		return len(p.addrs)
	}
	return 0
}

// GetCapabilities implements ipam.Ipam.
func (d *Driver) GetCapabilities() (*ipam.CapabilitiesResponse, error) {
	return &ipam.CapabilitiesResponse{RequiresMACAddress: false}, nil
}

// GetDefaultAddressSpaces implements ipam.Ipam.
func (d *Driver) GetDefaultAddressSpaces() (*ipam.AddressSpacesResponse, error) {
	return &ipam.AddressSpacesResponse{
		LocalDefaultAddressSpace:  LocalAddressSpace,
		GlobalDefaultAddressSpace: GlobalAddressSpace,
	}, nil
}

// RequestPool implements ipam.Ipam: it registers --subnet (and --ip-range),
// or picks a free subnet from the default pools when --subnet is absent or
// is 0.0.0.0/N or ::/N (Docker 29: any free /N). Docker 29 sends no Exclude
// list to a remote IPAM driver: its proxy retries an automatic request
// itself while holding the overlapping pools, which weft then avoids.
func (d *Driver) RequestPool(req *ipam.RequestPoolRequest) (*ipam.RequestPoolResponse, error) {
	if req == nil {
		return nil, errors.New("empty pool request")
	}
	if req.AddressSpace != LocalAddressSpace && req.AddressSpace != GlobalAddressSpace {
		return nil, fmt.Errorf("address space %q is not one of weft's (%q, %q): weft's IPAM only serves its own address spaces", req.AddressSpace, LocalAddressSpace, GlobalAddressSpace)
	}
	if err := checkPoolOptions(req.Options); err != nil {
		return nil, err
	}
	if req.Pool == "" && req.SubPool != "" {
		return nil, fmt.Errorf("--ip-range %s needs --subnet: an address range can only be given inside an explicit subnet", req.SubPool)
	}

	var pfx, sub netip.Prefix
	var err error
	if req.AddressSpace == GlobalAddressSpace && !req.V6 {
		// The swarm manager asks for every pool with V6 false (swarmkit in
		// Docker 20.10); the subnet itself tells the family.
		if p, err := netip.ParsePrefix(req.Pool); err == nil && p.Addr().Is6() && !p.Addr().Is4In6() {
			req.V6 = true
		}
	}
	// auto: weft chooses the subnet from the default pools. Docker 29 reads
	// --subnet 0.0.0.0/N (or ::/N) as "any free /N": it passes the prefix
	// on to a remote IPAM driver as given. autoSize 0 is each pool's size.
	auto, autoSize := req.Pool == "", 0
	if p, err := netip.ParsePrefix(req.Pool); err == nil && p.Addr().IsUnspecified() {
		if p.Addr().Is6() != req.V6 {
			return nil, fmt.Errorf("invalid --subnet %s: it asks for an %s subnet but Docker asked for an %s pool", req.Pool, family(p.Addr().Is6()), family(req.V6))
		}
		if req.SubPool != "" {
			return nil, fmt.Errorf("--ip-range %s needs an explicit --subnet, not %s (any free subnet): an address range can only be given inside a known subnet", req.SubPool, req.Pool)
		}
		auto, autoSize = true, p.Bits()
	}
	if !auto {
		if pfx, err = parseSubnet("--subnet", req.Pool, req.V6); err != nil {
			return nil, err
		}
	}
	if req.SubPool != "" {
		if sub, err = parseSubnet("--ip-range", req.SubPool, req.V6); err != nil {
			return nil, err
		}
		if sub.Bits() < pfx.Bits() || !pfx.Contains(sub.Addr()) {
			return nil, fmt.Errorf("--ip-range %s is not inside --subnet %s", sub, pfx)
		}
	}
	var host []netip.Prefix
	if auto {
		// Read outside the lock: a netlink dump must not stall address
		// requests, and host routes do not depend on our state.
		if host, err = d.hostPrefixes(); err != nil {
			return nil, fmt.Errorf("cannot choose a free subnet because reading the host's routes and addresses failed (pass --subnet to choose one yourself): %w", err)
		}
	}

	d.mu.Lock()
	defer d.mu.Unlock()

	if auto {
		used := make([]netip.Prefix, 0, len(d.pools)+len(host))
		for _, p := range d.pools {
			used = append(used, p.prefix)
		}
		for _, h := range host {
			// A /0 would block everything; it is a default route, not a
			// subnet in use.
			if h.IsValid() && h.Bits() > 0 {
				used = append(used, h.Masked())
			}
		}
		var ok bool
		if pfx, ok = choosePool(d.defaults, req.V6, used, autoSize); !ok {
			return nil, d.noFreeSubnetError(req.V6, autoSize)
		}
	} else {
		for _, p := range d.sortedPools() {
			if d.swarm && p.rec.AddressSpace == req.AddressSpace && p.prefix == pfx && p.sub == sub {
				// The swarm manager's allocator asks again for what it
				// already holds when it starts (or a new leader takes over).
				return &ipam.RequestPoolResponse{PoolID: p.id, Pool: pfx.String(), Data: map[string]string{}}, nil
			}
			// The manager (global address space) and this node (local
			// space) each hold a swarm network's subnet.
			if d.swarm && p.rec.AddressSpace != req.AddressSpace {
				continue
			}
			if p.prefix.Overlaps(pfx) {
				return nil, fmt.Errorf("--subnet %s overlaps %s, which weft already uses for another network: choose a different --subnet", pfx, p.prefix)
			}
		}
	}

	id := req.AddressSpace + "/" + pfx.String()
	if sub.IsValid() {
		id += "/" + sub.String()
	}
	rec := poolRecord{AddressSpace: req.AddressSpace, Pool: pfx.String(), Auto: auto}
	if sub.IsValid() {
		rec.SubPool = sub.String()
	}
	if err := d.st.Update(func(tx *store.Tx) error { return tx.Put(bucketPools, id, rec) }); err != nil {
		return nil, fmt.Errorf("cannot save subnet %s in weft's state store: %w", pfx, err)
	}
	p := &pool{id: id, rec: rec, prefix: pfx, sub: sub, addrs: map[netip.Addr]string{}}
	d.pools[id] = p
	p.log().WithFields(logrus.Fields{"subnet": pfx.String(), "ipRange": rec.SubPool, "auto": rec.Auto}).Info("ipam: pool created")
	return &ipam.RequestPoolResponse{PoolID: id, Pool: pfx.String(), Data: map[string]string{}}, nil
}

func checkPoolOptions(opts map[string]string) error {
	var bad []string
	for k := range opts {
		// Docker adds its own com.docker.* keys; they need no handling here.
		// The swarm manager reuses one options map for a network's pools and
		// its gateway requests, so a second pool (IPv6) arrives carrying the
		// RequestAddressType of the first pool's gateway.
		if !strings.HasPrefix(k, dockerOptionPrefix) && k != optRequestAddressType {
			bad = append(bad, k)
		}
	}
	if len(bad) == 0 {
		return nil
	}
	sort.Strings(bad)
	return fmt.Errorf("unknown --ipam-opt %s: weft's IPAM driver has no --ipam-opt options yet, remove it", strings.Join(bad, ", "))
}

func (d *Driver) noFreeSubnetError(v6 bool, size int) error {
	var fam []PoolSpec
	for _, s := range d.defaults {
		if s.Base.Addr().Is6() == v6 {
			fam = append(fam, s)
		}
	}
	if len(fam) == 0 {
		return fmt.Errorf("no %s default pool is configured (DEFAULT_POOLS=%s): pass --subnet, or add an %s entry to the plugin's DEFAULT_POOLS setting", family(v6), formatPools(d.defaults), family(v6))
	}
	what := "subnet"
	if size > 0 {
		var fit bool
		for _, s := range fam {
			fit = fit || fits(s, size)
		}
		if !fit {
			return fmt.Errorf("--subnet %s: no %s default pool can hold a /%d (DEFAULT_POOLS=%s): ask for a longer prefix, pass a real --subnet, or add a larger pool to the plugin's DEFAULT_POOLS setting", unspecified(v6, size), family(v6), size, formatPools(d.defaults))
		}
		what = fmt.Sprintf("/%d subnet", size)
	}
	return fmt.Errorf("no free %s %s left in the default pools %s: every candidate overlaps another weft network or a route or address on the host; pass --subnet to choose one, or widen the plugin's DEFAULT_POOLS setting", family(v6), what, formatPools(fam))
}

// unspecified is the --subnet form that asks for any free /size.
func unspecified(v6 bool, size int) string {
	if v6 {
		return fmt.Sprintf("::/%d", size)
	}
	return fmt.Sprintf("0.0.0.0/%d", size)
}

// sortedPools gives a deterministic order for error messages.
func (d *Driver) sortedPools() []*pool {
	ps := make([]*pool, 0, len(d.pools))
	for _, p := range d.pools {
		ps = append(ps, p)
	}
	sort.Slice(ps, func(i, j int) bool { return ps[i].id < ps[j].id })
	return ps
}

// ReleasePool implements ipam.Ipam: the pool and all its addresses go.
func (d *Driver) ReleasePool(req *ipam.ReleasePoolRequest) error {
	if req == nil {
		return errors.New("empty release pool request")
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	p, ok := d.pools[req.PoolID]
	if !ok {
		// Already gone (e.g. a retried call): the caller's goal is met.
		logrus.WithField("pool", req.PoolID).Debug("ipam: release of unknown pool ignored")
		return nil
	}
	err := d.st.Update(func(tx *store.Tx) error {
		if err := tx.DeletePrefix(bucketAddrs, p.id+keySep); err != nil {
			return err
		}
		return tx.Delete(bucketPools, p.id)
	})
	if err != nil {
		return fmt.Errorf("cannot remove subnet %s from weft's state store: %w", p.prefix, err)
	}
	delete(d.pools, p.id)
	p.log().WithField("addresses", len(p.addrs)).Info("ipam: pool released")
	return nil
}

// RequestAddress implements ipam.Ipam: a given address (--ip, --ip6,
// --gateway, --aux-address) is checked and reserved, otherwise the next free
// one is chosen.
func (d *Driver) RequestAddress(req *ipam.RequestAddressRequest) (*ipam.RequestAddressResponse, error) {
	if req == nil {
		return nil, errors.New("empty address request")
	}
	gateway := req.Options[optRequestAddressType] == gatewayAddressType
	for k := range req.Options {
		if k != optRequestAddressType && !strings.HasPrefix(k, dockerOptionPrefix) {
			// Users cannot set address options, so this is Docker talking;
			// not worth failing a container start over.
			logrus.WithFields(logrus.Fields{"pool": req.PoolID, "option": k}).Debug("ipam: ignoring unknown address option")
		}
	}

	d.mu.Lock()
	locked := true
	defer func() {
		if locked {
			d.mu.Unlock()
		}
	}()
	p, ok := d.pools[req.PoolID]
	if !ok {
		return nil, fmt.Errorf("unknown address pool %q: weft has no record of it (was weft's state reset? recreate the network)", req.PoolID)
	}

	var a netip.Addr
	var kind string
	if req.Address != "" {
		kind = kindStatic
		if gateway {
			kind = kindGateway
		}
		var err error
		if a, err = d.checkStatic(p, req.Address, kind); err != nil {
			return nil, err
		}
	} else {
		if d.swarm && !gateway && p.rec.AddressSpace == LocalAddressSpace && p.prefix.Addr().Is6() {
			// Every task's address comes from the manager (global space). A
			// node asking for one itself means the manager assigned none,
			// which Docker 20.10's swarm does for IPv6 now and then (and
			// always for docker run attachments); each node would hand out
			// the same ones.
			return nil, fmt.Errorf("weft's swarm IPAM: the swarm manager gave this container no IPv6 address on %s (Docker 20.10's swarm does not always assign one), and one chosen on this node could be another node's too; create the network without --ipv6", p.prefix)
		}
		start := p.rangePrefix().Addr() // a gateway gets the first free address
		kind = kindGateway
		if !gateway {
			kind = kindAuto
			start = netip.Addr{}
			if p.cursor.IsValid() {
				start = p.cursor.Next() // nextFree wraps if this left the range
			}
		}
		var ok bool
		if a, ok = p.nextFree(start); !ok {
			return nil, p.exhaustedError()
		}
	}

	rec := p.rec
	if kind == kindAuto {
		rec.Cursor = a.String()
	}
	// Reserve in memory, then commit without holding the lock so that
	// concurrent requests share fsyncs; undo the reservation if the commit
	// fails. The reply goes out only after the commit.
	prevRec, prevCursor := p.rec, p.cursor
	changedRec := rec != p.rec
	p.addrs[a] = kind
	if kind == kindAuto {
		p.rec, p.cursor = rec, a
	}
	d.mu.Unlock()
	locked = false
	err := d.st.Update(func(tx *store.Tx) error {
		if err := tx.Put(bucketAddrs, p.addrKey(a), addrRecord{Kind: kind}); err != nil {
			return err
		}
		if changedRec {
			return tx.Put(bucketPools, p.id, rec)
		}
		return nil
	})
	if err != nil {
		d.mu.Lock()
		delete(p.addrs, a)
		if kind == kindAuto && p.cursor == a {
			p.rec, p.cursor = prevRec, prevCursor
		}
		d.mu.Unlock()
		return nil, fmt.Errorf("cannot save address %s in weft's state store: %w", a, err)
	}
	p.log().WithFields(logrus.Fields{"address": a.String(), "kind": kind}).Debug("ipam: address allocated")
	return &ipam.RequestAddressResponse{
		Address: netip.PrefixFrom(a, p.prefix.Bits()).String(),
		Data:    map[string]string{},
	}, nil
}

// checkStatic validates a user-chosen address.
func (d *Driver) checkStatic(p *pool, s, kind string) (netip.Addr, error) {
	flag := "--ip (or --aux-address)"
	if p.prefix.Addr().Is6() {
		flag = "--ip6 (or --aux-address)"
	}
	if kind == kindGateway {
		flag = "--gateway"
	}
	a, err := parseAddr(s)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("invalid %s: %w", flag, err)
	}
	if !p.prefix.Contains(a) {
		return netip.Addr{}, fmt.Errorf("address %s is outside the network's subnet %s: %s must be inside --subnet", a, p.prefix, flag)
	}
	if why := reservedReason(p.prefix, a); why != "" {
		return netip.Addr{}, fmt.Errorf("address %s is %s of subnet %s and cannot be assigned: choose another %s", a, why, p.prefix, flag)
	}
	if k, used := p.addrs[a]; used && !d.swarm {
		msg := fmt.Sprintf("address %s is already in use on network pool %s", a, p.prefix)
		if k == kindGateway {
			msg += " (it is the network's gateway)"
		}
		return netip.Addr{}, errors.New(msg)
	}
	return a, nil
}

func (p *pool) exhaustedError() error {
	r := p.rangePrefix()
	n := 0
	for a := range p.addrs {
		if r.Contains(a) {
			n++
		}
	}
	what := "--subnet"
	if p.sub.IsValid() {
		what = "--ip-range"
	}
	return fmt.Errorf("address pool %s is exhausted: no free address left (%d in use; remove containers or recreate the network with a larger %s)", r, n, what)
}

// ReleaseAddress implements ipam.Ipam.
func (d *Driver) ReleaseAddress(req *ipam.ReleaseAddressRequest) error {
	if req == nil {
		return errors.New("empty release address request")
	}
	a, err := parseAddr(req.Address)
	if err != nil {
		return fmt.Errorf("cannot release address: %w", err)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	log := logrus.WithFields(logrus.Fields{"pool": req.PoolID, "address": a.String()})
	p, ok := d.pools[req.PoolID]
	if !ok {
		// Same reasoning as below: nothing to free is not a failure.
		log.Debug("ipam: release in unknown pool ignored")
		return nil
	}
	if _, ok := p.addrs[a]; !ok {
		// dockerd re-releases addresses while cleaning up stale sandboxes
		// after a restart; failing would block that cleanup.
		log.Debug("ipam: release of unallocated address ignored")
		return nil
	}
	if err := d.st.Update(func(tx *store.Tx) error { return tx.Delete(bucketAddrs, p.addrKey(a)) }); err != nil {
		return fmt.Errorf("cannot remove address %s from weft's state store: %w", a, err)
	}
	delete(p.addrs, a)
	log.Debug("ipam: address released")
	return nil
}
