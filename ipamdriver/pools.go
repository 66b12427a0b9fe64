package ipamdriver

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// DefaultPools is the default value of the DEFAULT_POOLS setting: where weft
// carves subnets for networks created without --subnet.
const DefaultPools = "10.201.0.0/16:24,fd77:7765:6674::/48:64"

// PoolSpec is one default pool: subnets of /Size are carved out of Base.
type PoolSpec struct {
	Base netip.Prefix
	Size int
}

// String gives the entry in the DEFAULT_POOLS format, e.g. "10.201.0.0/16:24".
func (s PoolSpec) String() string {
	return s.Base.String() + ":" + strconv.Itoa(s.Size)
}

// Largest subnet sizes worth carving: a smaller subnet leaves no room for a
// gateway plus at least one container.
const (
	maxSizeV4 = 30
	maxSizeV6 = 126
)

// ParsePools parses the DEFAULT_POOLS setting: comma-separated PREFIX:SIZE
// entries such as "10.201.0.0/16:24,fd77:7765:6674::/48:64".
func ParsePools(s string) ([]PoolSpec, error) {
	if strings.TrimSpace(s) == "" {
		return nil, fmt.Errorf("DEFAULT_POOLS is empty: set it to comma-separated PREFIX:SIZE entries, e.g. %q", DefaultPools)
	}
	var specs []PoolSpec
	for _, raw := range strings.Split(s, ",") {
		entry := strings.TrimSpace(raw)
		if entry == "" {
			return nil, fmt.Errorf("DEFAULT_POOLS %q has an empty entry (stray comma?)", s)
		}
		spec, err := parsePoolEntry(entry)
		if err != nil {
			return nil, fmt.Errorf("DEFAULT_POOLS entry %q: %w", entry, err)
		}
		specs = append(specs, spec)
	}
	return specs, nil
}

func parsePoolEntry(entry string) (PoolSpec, error) {
	// IPv6 prefixes contain colons themselves, so the size separator is the
	// last ':' that comes after the '/'.
	slash := strings.Index(entry, "/")
	colon := strings.LastIndex(entry, ":")
	if slash < 0 || colon < slash {
		return PoolSpec{}, errors.New("want PREFIX:SIZE, e.g. 10.201.0.0/16:24")
	}
	base, err := netip.ParsePrefix(entry[:colon])
	if err != nil {
		return PoolSpec{}, fmt.Errorf("bad prefix %q: %w", entry[:colon], err)
	}
	size, err := strconv.Atoi(strings.TrimPrefix(entry[colon+1:], "/"))
	if err != nil {
		return PoolSpec{}, fmt.Errorf("bad subnet size %q: want a prefix length such as 24", entry[colon+1:])
	}
	spec := PoolSpec{Base: base, Size: size}
	if err := spec.validate(); err != nil {
		return PoolSpec{}, err
	}
	return spec, nil
}

// validate also guards PoolSpecs built in code rather than parsed.
func (s PoolSpec) validate() error {
	if !s.Base.IsValid() {
		return errors.New("missing prefix")
	}
	if s.Base.Addr().Is4In6() {
		return fmt.Errorf("prefix %s is an IPv4-mapped IPv6 prefix: write it as plain IPv4 or IPv6", s.Base)
	}
	if s.Base.Addr().Zone() != "" {
		return fmt.Errorf("prefix %s must not have a zone", s.Base)
	}
	if m := s.Base.Masked(); m != s.Base {
		return fmt.Errorf("prefix %s has host bits set: use %s", s.Base, m)
	}
	maxSize := maxSizeV4
	if s.Base.Addr().Is6() {
		maxSize = maxSizeV6
	}
	if s.Size < s.Base.Bits() || s.Size > maxSize {
		return fmt.Errorf("subnet size %d must be between %d and %d: not shorter than the prefix, and leaving room for a gateway and a container", s.Size, s.Base.Bits(), maxSize)
	}
	return nil
}

func formatPools(specs []PoolSpec) string {
	parts := make([]string, len(specs))
	for i, s := range specs {
		parts[i] = s.String()
	}
	return strings.Join(parts, ",")
}

// choosePool returns the first candidate subnet of the default pools of the
// requested family that overlaps neither a weft pool nor a host prefix.
// size > 0 asks for subnets of that length instead of each pool's own
// (Docker 29's --subnet 0.0.0.0/N); pools too small for it are skipped.
// Candidates are not enumerated one by one: on a conflict the scan jumps past
// the conflicting prefix, so the cost depends on the number of prefixes in
// use, not on how many candidates a big base (say an IPv6 /32 of /64s) holds.
func choosePool(specs []PoolSpec, v6 bool, used []netip.Prefix, size int) (netip.Prefix, bool) {
	for _, spec := range specs {
		if spec.Base.Addr().Is6() != v6 {
			continue
		}
		if size > 0 {
			if !fits(spec, size) {
				continue
			}
			spec.Size = size
		}
		cand := netip.PrefixFrom(spec.Base.Addr(), spec.Size)
		for spec.Base.Contains(cand.Addr()) {
			conflict, found := firstOverlap(cand, used)
			if !found {
				return cand, true
			}
			end := lastAddr(cand)
			if ce := lastAddr(conflict); ce.Compare(end) > 0 {
				end = ce
			}
			// end+1 is aligned to /Size: either end is cand's own last
			// address, or conflict is a larger, hence aligned, prefix.
			next := end.Next()
			if !next.IsValid() {
				break // ran off the end of the address space
			}
			cand = netip.PrefixFrom(next, spec.Size)
		}
	}
	return netip.Prefix{}, false
}

// fits reports whether subnets of length size can be carved from spec's base.
func fits(spec PoolSpec, size int) bool {
	return size >= spec.Base.Bits() && size <= spec.Base.Addr().BitLen()
}

func firstOverlap(p netip.Prefix, used []netip.Prefix) (netip.Prefix, bool) {
	for _, u := range used {
		if u.Overlaps(p) {
			return u, true
		}
	}
	return netip.Prefix{}, false
}
