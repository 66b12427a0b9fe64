package tuning

import (
	"strings"
	"testing"
	"time"
)

func TestParseRate(t *testing.T) {
	for in, want := range map[string]uint64{"10mbit": 10e6, "1.5gbit": 1.5e9, "500kbps": 4e6, "100MBIT": 100e6, "8kbit": 8000} {
		got, err := ParseRate(in)
		if err != nil || got != want {
			t.Errorf("%s: %d %v, want %d", in, got, err, want)
		}
	}
	for _, bad := range []string{"fast", "", "-5mbit", "0mbit", "10", "10 furlongs", "1bit", "999gbit"} {
		if _, err := ParseRate(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]uint64{"32kb": 32768, "1mb": 1 << 20, "1500": 1500, "2g": 2 << 30} {
		got, err := ParseSize(in)
		if err != nil || got != want {
			t.Errorf("%s: %d %v", in, got, err)
		}
	}
	for _, bad := range []string{"5gb", "x", "0", "-1kb", "1tb"} {
		if _, err := ParseSize(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestParseMergesAndValidates(t *testing.T) {
	s, err := Parse(map[string]string{"rate.egress": "100mbit", "rate.ingress": "50mbit", "txqueuelen": "500"},
		map[string]string{"rate.egress": "10mbit", "mtu": "1400"})
	if err != nil {
		t.Fatal(err)
	}
	if s.RateEgress != 10e6 || s.RateIngress != 50e6 || s.MTU != 1400 || s.TxQueueLen != 500 {
		t.Fatalf("merge: %+v", s)
	}
	if got := s.String(); !strings.Contains(got, "rate.egress=10mbit") || !strings.Contains(got, "rate.ingress=50mbit") {
		t.Fatalf("String: %s", got)
	}
	// The network-level mtu belongs to the type, not to tuning.
	if s, _ := Parse(map[string]string{"mtu": "1400"}, nil); s.MTU != 0 {
		t.Fatal("network mtu taken as an endpoint MTU")
	}
	bad := []struct {
		net, ep map[string]string
		want    string
	}{
		{nil, map[string]string{"rate.egress": "fast"}, `--driver-opt rate.egress="fast"`},
		{map[string]string{"rate.ingress": "0mbit"}, nil, `option rate.ingress="0mbit"`},
		{nil, map[string]string{"rate.egress": "-1mbit"}, "rate.egress"},
		{nil, map[string]string{"rate.egress": "1mbit", "rate.burst": "5gb"}, "4gb"},
		{nil, map[string]string{"rate.egress": "1mbit", "rate.latency": "forever"}, "rate.latency"},
		{nil, map[string]string{"rate.burst": "32kb"}, "need rate.egress or rate.ingress"},
		{nil, map[string]string{"mtu": "67"}, "68 to 65535"},
		{nil, map[string]string{"txqueuelen": "-3"}, "txqueuelen"},
	}
	for _, b := range bad {
		if _, err := Parse(b.net, b.ep); err == nil || !strings.Contains(err.Error(), b.want) {
			t.Errorf("%v %v: got %v, want mention of %q", b.net, b.ep, err, b.want)
		}
	}
}

func TestBurstDefaults(t *testing.T) {
	s := Settings{RateEgress: 10e6}
	if b := s.burst(10e6); b != 64*1024 {
		t.Fatalf("10mbit burst %d, want the 64 KiB floor", b)
	}
	if b := s.burst(1e9); b != 1e9/8/100 {
		t.Fatalf("1gbit burst %d, want 10ms worth", b)
	}
	if s.latency() != 25*time.Millisecond {
		t.Fatal("default latency")
	}
}
