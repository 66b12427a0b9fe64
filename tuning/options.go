// Package tuning applies per-endpoint settings: MTU, txqueuelen and tc rate
// limits. Network options (-o) are defaults; endpoint options
// (--driver-opt) override them. Every network type goes through Apply and
// Remove, so there is one implementation, not one per type.
package tuning

import (
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Option names. Rates use tc units.
const (
	OptMTU         = "mtu"
	OptTxQueueLen  = "txqueuelen"
	OptRateEgress  = "rate.egress"  // traffic leaving the container
	OptRateIngress = "rate.ingress" // traffic entering the container
	OptRateBurst   = "rate.burst"
	OptRateLatency = "rate.latency"
)

// NetworkKeys are the tuning options a network accepts as defaults (mtu is
// the type's own option at network level).
func NetworkKeys() []string {
	return []string{OptTxQueueLen, OptRateEgress, OptRateIngress, OptRateBurst, OptRateLatency}
}

// EndpointKeys are the tuning options --driver-opt accepts.
func EndpointKeys() []string {
	return []string{OptMTU, OptTxQueueLen, OptRateEgress, OptRateIngress, OptRateBurst, OptRateLatency}
}

// Settings is the effective tuning of one endpoint.
type Settings struct {
	MTU         int           // 0: the network's
	TxQueueLen  int           // -1: unchanged
	RateEgress  uint64        // bits per second, 0: unlimited
	RateIngress uint64        // bits per second, 0: unlimited
	Burst       uint64        // bytes, 0: automatic
	Latency     time.Duration // 0: 25ms
	// Applied inside the container's namespace (see inside.go).
	Sysctls  map[string]string // net.* key (may hold IFNAME) -> value
	Offloads map[string]bool   // offload option (tso, gso, ...: see offload.go) -> on
}

// HasInside reports whether anything must be done inside the container.
func (s Settings) HasInside() bool { return len(s.Sysctls) > 0 || len(s.Offloads) > 0 }

// Shaped reports whether any rate limit is set.
func (s Settings) Shaped() bool { return s.RateEgress > 0 || s.RateIngress > 0 }

// String shows the effective settings, for logs and docker inspect.
func (s Settings) String() string {
	var p []string
	if s.MTU > 0 {
		p = append(p, fmt.Sprintf("mtu=%d", s.MTU))
	}
	if s.TxQueueLen >= 0 {
		p = append(p, fmt.Sprintf("txqueuelen=%d", s.TxQueueLen))
	}
	if s.RateEgress > 0 {
		p = append(p, "rate.egress="+FormatRate(s.RateEgress))
	}
	if s.RateIngress > 0 {
		p = append(p, "rate.ingress="+FormatRate(s.RateIngress))
	}
	if s.Shaped() {
		p = append(p, fmt.Sprintf("rate.burst=%db", s.burst(max(s.RateEgress, s.RateIngress))), "rate.latency="+s.latency().String())
	}
	var inside []string
	for k, v := range s.Sysctls {
		inside = append(inside, PrefixSysctl+k+"="+v)
	}
	for o, on := range s.Offloads {
		inside = append(inside, PrefixOffload+o+"="+onOffWord(on))
	}
	sort.Strings(inside)
	p = append(p, inside...)
	return strings.Join(p, " ")
}

const maxBurst = math.MaxUint32 // tc keeps burst in 32 bits

// Parse merges network defaults and endpoint overrides and validates them.
// Keys of other kinds in the maps are ignored (callers check unknown keys).
func Parse(network, endpoint map[string]string) (Settings, error) {
	s := Settings{TxQueueLen: -1}
	get := func(k string) (string, string, bool) {
		if v, ok := endpoint[k]; ok {
			return v, "--driver-opt " + k, true
		}
		if v, ok := network[k]; ok && k != OptMTU {
			return v, "option " + k, true
		}
		return "", "", false
	}
	var err error
	if v, what, ok := get(OptMTU); ok {
		n, e := strconv.Atoi(v)
		if e != nil || n < 68 || n > 65535 {
			return s, fmt.Errorf("%s=%q: the MTU must be a number from 68 to 65535", what, v)
		}
		s.MTU = n
	}
	if v, what, ok := get(OptTxQueueLen); ok {
		n, e := strconv.Atoi(v)
		if e != nil || n < 0 || n > 1000000 {
			return s, fmt.Errorf("%s=%q: want a queue length from 0 to 1000000 packets", what, v)
		}
		s.TxQueueLen = n
	}
	for _, r := range []struct {
		key string
		dst *uint64
	}{{OptRateEgress, &s.RateEgress}, {OptRateIngress, &s.RateIngress}} {
		if v, what, ok := get(r.key); ok {
			if *r.dst, err = ParseRate(v); err != nil {
				return s, fmt.Errorf("%s=%q: %w", what, v, err)
			}
		}
	}
	if v, what, ok := get(OptRateBurst); ok {
		if s.Burst, err = ParseSize(v); err != nil {
			return s, fmt.Errorf("%s=%q: %w", what, v, err)
		}
	}
	if v, what, ok := get(OptRateLatency); ok {
		d, e := time.ParseDuration(v)
		if e != nil || d <= 0 || d > 10*time.Second {
			return s, fmt.Errorf("%s=%q: want a duration from 1ms to 10s, e.g. 25ms", what, v)
		}
		s.Latency = d
	}
	if (s.Burst > 0 || s.Latency > 0) && !s.Shaped() {
		return s, fmt.Errorf("rate.burst and rate.latency need rate.egress or rate.ingress")
	}
	if err := parseInside(&s, network, endpoint); err != nil {
		return s, err
	}
	return s, nil
}

var rateUnits = map[string]float64{
	"bit": 1, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9, "tbit": 1e12,
	"bps": 8, "kbps": 8e3, "mbps": 8e6, "gbps": 8e9, "tbps": 8e12,
}

// ParseRate reads a tc rate ("100mbit", "1.5gbit", "500kbps") as bits per second.
func ParseRate(v string) (uint64, error) {
	num, unit := splitUnit(strings.ToLower(strings.TrimSpace(v)))
	mul, ok := rateUnits[unit]
	f, err := strconv.ParseFloat(num, 64)
	if !ok || err != nil || num == "" {
		return 0, fmt.Errorf("want a rate like 100mbit (units: bit, kbit, mbit, gbit, tbit; bps, kbps, mbps, gbps for bytes per second)")
	}
	bits := f * mul
	if bits < 8000 || math.IsInf(bits, 0) || math.IsNaN(bits) {
		return 0, fmt.Errorf("the rate must be at least 8kbit")
	}
	if bits > 400e9 {
		return 0, fmt.Errorf("the rate must be at most 400gbit")
	}
	return uint64(bits), nil
}

var sizeUnits = map[string]float64{"": 1, "b": 1, "k": 1024, "kb": 1024, "m": 1 << 20, "mb": 1 << 20, "g": 1 << 30, "gb": 1 << 30}

// ParseSize reads a tc size ("32kb", "1mb") as bytes, at most 4 GB.
func ParseSize(v string) (uint64, error) {
	num, unit := splitUnit(strings.ToLower(strings.TrimSpace(v)))
	mul, ok := sizeUnits[unit]
	f, err := strconv.ParseFloat(num, 64)
	if !ok || err != nil || num == "" {
		return 0, fmt.Errorf("want a size like 64kb (units: b, kb, mb, gb)")
	}
	b := f * mul
	if b < 1 {
		return 0, fmt.Errorf("the burst must be at least 1 byte")
	}
	if b > maxBurst {
		return 0, fmt.Errorf("the burst must be below 4gb (tc keeps it in 32 bits)")
	}
	return uint64(b), nil
}

func splitUnit(s string) (string, string) {
	i := strings.IndexFunc(s, func(r rune) bool { return (r < '0' || r > '9') && r != '.' && r != '-' && r != '+' })
	if i < 0 {
		return s, ""
	}
	return s[:i], s[i:]
}

// FormatRate prints bits per second in the largest exact-ish tc unit.
func FormatRate(bits uint64) string {
	units := []struct {
		n string
		v uint64
	}{{"gbit", 1e9}, {"mbit", 1e6}, {"kbit", 1e3}}
	for _, u := range units {
		if bits >= u.v && bits%u.v == 0 {
			return fmt.Sprintf("%d%s", bits/u.v, u.n)
		}
	}
	return fmt.Sprintf("%dbit", bits)
}

// burst is the token bucket size: the user's, else enough for 10ms at the
// rate (HZ-independent accuracy) and never below 64 KiB, so that GSO
// packets of a veth pass whole.
func (s Settings) burst(rate uint64) uint64 {
	if s.Burst > 0 {
		return s.Burst
	}
	return max(rate/8/100, 64*1024)
}

func (s Settings) latency() time.Duration {
	if s.Latency > 0 {
		return s.Latency
	}
	return 25 * time.Millisecond
}

// Sorted returns keys in a stable order (for messages).
func Sorted(keys []string) []string {
	k := append([]string(nil), keys...)
	sort.Strings(k)
	return k
}
