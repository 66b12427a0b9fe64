package e2e

import (
	"encoding/json"
	"fmt"
	osexec "os/exec"
	"strings"
	"testing"
	"time"

	"github.com/safchain/ethtool"
	"github.com/vishvananda/netlink"

	"github.com/weft-net/weft/tuning"
)

// iperf measures TCP throughput from the client container to the server
// container (reverse: server to client) with the host's iperf3 run in the
// containers' namespaces, in bits per second.
func iperf(t *testing.T, client, server, serverIP string, reverse bool, secs int) float64 {
	t.Helper()
	sh(t, fmt.Sprintf("nsenter -t %s -n iperf3 -s -1 -D -p 5299", pidOf(t, server)))
	time.Sleep(300 * time.Millisecond)
	args := fmt.Sprintf("nsenter -t %s -n iperf3 -c %s -p 5299 -t %d -J", pidOf(t, client), serverIP, secs)
	if reverse {
		args += " -R"
	}
	out := sh(t, args)
	var r struct {
		End struct {
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
	}
	if err := json.Unmarshal([]byte(out), &r); err != nil || r.End.SumReceived.BitsPerSecond == 0 {
		t.Fatalf("iperf3 output: %v\n%s", err, out)
	}
	return r.End.SumReceived.BitsPerSecond
}

func epIDOf(t *testing.T, c, net string) string {
	return mustDocker(t, "inspect", "-f", fmt.Sprintf(`{{(index .NetworkSettings.Networks %q).EndpointID}}`, net), c)
}

func tuningLinkOf(t *testing.T, c, net string) tuning.Link {
	id := epIDOf(t, c, net)
	return tuning.Link{Host: "wfh" + id[:12], IFB: "wfi" + id[:12]}
}

func TestRateLimitAccuracy(t *testing.T) {
	if _, err := osexec.LookPath("iperf3"); err != nil {
		t.Fatal("iperf3 missing (scripts/e2e-env.sh installs it)")
	}
	n := ipamNetwork(t)
	server := sleeper(t, "--network", n)
	other := sleeper(t, "--network", n)
	sip := ipOf(t, server, n)
	for _, mbit := range []int{10, 100, 1000} {
		t.Run(fmt.Sprintf("%dmbit", mbit), func(t *testing.T) {
			c := sleeper(t)
			rate := fmt.Sprintf("%dmbit", mbit)
			mustDocker(t, "network", "connect", "--driver-opt", "rate.egress="+rate, "--driver-opt", "rate.ingress="+rate, n, c)
			want := float64(mbit) * 1e6
			for _, dir := range []struct {
				name    string
				reverse bool
			}{{"egress (leaving the container)", false}, {"ingress (entering the container)", true}} {
				got := iperf(t, c, server, sip, dir.reverse, 4)
				ratio := got / want
				t.Logf("%s %s: asked %s, measured %.1f mbit/s (%.2f)", rate, dir.name, rate, got/1e6, ratio)
				if ratio < 0.90 || ratio > 1.10 {
					t.Errorf("%s %s: measured %.1f mbit/s, not within 10%% of %s", rate, dir.name, got/1e6, rate)
				}
			}
			link := tuningLinkOf(t, c, n)
			mustDocker(t, "network", "disconnect", n, c)
			if _, err := netlink.LinkByName(link.IFB); err == nil {
				t.Fatalf("IFB %s left after disconnect", link.IFB)
			}
		})
	}
	// An unshaped container on the same network is not limited.
	if got := iperf(t, other, server, sip, false, 2); got < 2e9 {
		t.Fatalf("an unshaped container got only %.0f mbit/s", got/1e6)
	}
}

func TestTuningDefaultsOverridesAndBadInput(t *testing.T) {
	n := ipamNetwork(t, "-o", "rate.egress=100mbit", "-o", "rate.ingress=50mbit", "-o", "txqueuelen=500")
	a := sleeper(t, "--network", n)
	in, out := tuning.Shaping(tuningLinkOf(t, a, n))
	if in != 50e6 || out != 100e6 {
		t.Fatalf("network defaults not applied: ingress %d egress %d", in, out)
	}
	if q := mustDocker(t, "exec", a, "cat", "/sys/class/net/eth0/tx_queue_len"); q != "500" {
		t.Fatalf("txqueuelen %s, want 500", q)
	}
	// An endpoint option overrides the network's default; MTU per endpoint.
	b := sleeper(t)
	mustDocker(t, "network", "connect", "--driver-opt", "rate.egress=10mbit", "--driver-opt", "mtu=1400", n, b)
	in, out = tuning.Shaping(tuningLinkOf(t, b, n))
	if in != 50e6 || out != 10e6 {
		t.Fatalf("override: ingress %d egress %d, want 50mbit and 10mbit", in, out)
	}
	if got, _ := operInfo(t, b, n)["weft.tuning"].(string); !strings.Contains(got, "rate.egress=10mbit") || !strings.Contains(got, "rate.ingress=50mbit") || !strings.Contains(got, "mtu=1400") {
		t.Fatalf("operational info weft.tuning = %q, want the effective egress 10mbit, ingress 50mbit, mtu 1400", got)
	}
	if mtu := mustDocker(t, "exec", b, "cat", "/sys/class/net/eth1/mtu"); mtu != "1400" {
		t.Fatalf("endpoint MTU %s", mtu)
	}
	// Newer clients pass endpoint options on docker run too.
	r := sleeper(t, "--network", "name="+n+",driver-opt=txqueuelen=777,driver-opt=rate.egress=20mbit")
	if q := mustDocker(t, "exec", r, "cat", "/sys/class/net/eth0/tx_queue_len"); q != "777" {
		t.Fatalf("docker run --network name=N,driver-opt=txqueuelen=777: txqueuelen %s", q)
	}
	if in, out := tuning.Shaping(tuningLinkOf(t, r, n)); in != 50e6 || out != 20e6 {
		t.Fatalf("docker run driver-opt: ingress %d egress %d, want 50mbit and 20mbit", in, out)
	}

	linksBefore := weftLinks()
	c := sleeper(t)
	l := newLAN(t, 44)
	mv := ipamNetwork(t, "-o", "type=macvlan", "-o", "parent="+l.parent, "--subnet", l.subnet)
	bad := []struct {
		args []string
		want []string
	}{
		{[]string{"network", "create", "-d", plugin, "-o", "rate.egress=fast"}, []string{`rate.egress="fast"`, "100mbit"}},
		{[]string{"network", "create", "-d", plugin, "-o", "rate.ingress=0mbit"}, []string{"rate.ingress", "at least 8kbit"}},
		{[]string{"network", "create", "-d", plugin, "-o", "rate.egress=-5mbit"}, []string{"rate.egress"}},
		{[]string{"network", "create", "-d", plugin, "-o", "rate.egress=1mbit", "-o", "rate.burst=5gb"}, []string{"rate.burst", "4gb"}},
		{[]string{"network", "create", "-d", plugin, "-o", "rate.burst=64kb"}, []string{"need rate.egress or rate.ingress"}},
		{[]string{"network", "create", "-d", plugin, "-o", "type=macvlan", "-o", "parent=" + l.parent, "-o", "rate.egress=1mbit", "-o", "rate.latency=0s"}, []string{"rate.latency"}},
		{[]string{"network", "create", "-d", plugin, "-o", "sysctl.kernel.panic=1"}, []string{"sysctl.kernel.panic", "only net.*"}},
		{[]string{"network", "connect", "--driver-opt", "rate.latency=forever", "--driver-opt", "rate.egress=1mbit", n, c}, []string{"rate.latency"}},
		{[]string{"network", "connect", "--driver-opt", "mtu=1600", n, c}, []string{"mtu=1600", "larger than the network's MTU 1500"}},
		{[]string{"network", "connect", "--driver-opt", "mtu=60", n, c}, []string{"mtu", "68 to 65535"}},
		{[]string{"network", "connect", "--driver-opt", "txqueuelen=lots", n, c}, []string{"txqueuelen"}},
		{[]string{"network", "connect", "--driver-opt", "offload.tso=maybe", n, c}, []string{"offload.tso", "on or off"}},
		{[]string{"network", "connect", "--driver-opt", "rate.ingress=1tbit", mv, c}, []string{"rate.ingress", "at most 400gbit"}},
	}
	for _, b := range bad {
		args := b.args
		name := ""
		if args[1] == "create" {
			name = uniq("bad")
			args = append(args, name)
		}
		out, err := docker(args...)
		if err == nil {
			if name != "" {
				_, _ = docker("network", "rm", name)
			}
			t.Errorf("accepted: docker %s", strings.Join(args, " "))
			continue
		}
		for _, w := range b.want {
			if !strings.Contains(out, w) {
				t.Errorf("docker %s: error does not mention %q:\n%s", strings.Join(args, " "), w, out)
			}
		}
	}
	if o := mustDocker(t, "exec", c, "ip", "-o", "link"); strings.Contains(o, "eth1") {
		t.Fatalf("a rejected connect left an interface: %s", o)
	}
	after := weftLinks()
	for _, l := range after {
		if strings.HasPrefix(l, "wfi") {
			found := false
			for _, x := range linksBefore {
				found = found || x == l
			}
			if !found {
				t.Fatalf("a rejected request left IFB %s", l)
			}
		}
	}
}

// TestSysctlsAndOffloadsInsideContainer: settings that only mean something
// inside the container's namespace are applied there after Docker moved
// the interface in, for a new container (namespace made after Join) and
// for `docker network connect` to a running one. Offload names mean what
// they mean to ethtool(8): its summary lines, read by the host's ethtool in
// the container's namespace, say what was asked.
func TestSysctlsAndOffloadsInsideContainer(t *testing.T) {
	if _, err := osexec.LookPath("ethtool"); err != nil {
		t.Fatal("ethtool missing (scripts/e2e-env.sh installs it)")
	}
	allOff := []string{"tso", "tx", "sg", "gso", "gro", "rx"}
	// Control: a veth in a container without options has these on (GRO
	// is off on a veth until asked: the second container asks it on).
	ctrl := sleeper(t, "--network", ipamNetwork(t))
	if got := ethtoolSummary(t, ctrl, "eth0"); got != "tso=on tx=on sg=on gso=on gro=off rx=on" {
		t.Fatalf("control: ethtool -k eth0 in a container without options: %s; the checks below would prove nothing", got)
	}
	opts := []string{"-o", "sysctl.net.ipv4.tcp_keepalive_time=600", "-o", "sysctl.net.ipv4.conf.IFNAME.rp_filter=2"}
	for _, o := range allOff {
		opts = append(opts, "-o", "offload."+o+"=off")
	}
	n := ipamNetwork(t, opts...)
	c := sleeper(t, "--network", n)
	eventually(t, 15*time.Second, "sysctls inside a new container", func() error {
		ka, _ := execIn(c, "cat", "/proc/sys/net/ipv4/tcp_keepalive_time")
		rp, _ := execIn(c, "cat", "/proc/sys/net/ipv4/conf/eth0/rp_filter")
		if ka != "600" || rp != "2" {
			return fmt.Errorf("tcp_keepalive_time=%s eth0 rp_filter=%s", ka, rp)
		}
		return nil
	})
	if tso := featureIn(t, c, "eth0", "tx-tcp-segmentation"); tso {
		t.Fatal("offload.tso=off but TSO is on inside the container")
	}
	// Every bit ethtool counts under a name is off, not just one (the
	// old code left tx-tcp6-segmentation and others on: ethtool said
	// "tcp-segmentation-offload: on").
	eventually(t, 15*time.Second, "ethtool -k in the container", func() error {
		if got := ethtoolSummary(t, c, "eth0"); got != "tso=off tx=off sg=off gso=off gro=off rx=off" {
			return fmt.Errorf("ethtool -k eth0 with offload.{%s}=off: %s", strings.Join(allOff, ","), got)
		}
		return nil
	})
	// What was applied is in the endpoint's operational info.
	eventually(t, 5*time.Second, "operational info", func() error {
		info := operInfo(t, c, n)
		in, _ := info["weft.tuning.inside"].(string)
		if !strings.HasPrefix(in, "applied: ") || !strings.Contains(in, "net.ipv4.tcp_keepalive_time=600") || !strings.Contains(in, "net.ipv4.conf.eth0.rp_filter=2") || !strings.Contains(in, "tx-tcp-segmentation=false") {
			return fmt.Errorf("weft.tuning.inside = %q", in)
		}
		if want, _ := info["weft.tuning"].(string); !strings.Contains(want, "sysctl.net.ipv4.conf.IFNAME.rp_filter=2") {
			return fmt.Errorf("weft.tuning = %q", want)
		}
		return nil
	})
	// The host keeps its own value.
	if hostKa := sh(t, "cat /proc/sys/net/ipv4/tcp_keepalive_time"); hostKa == "600" {
		t.Fatal("the host's sysctl changed")
	}
	// A running container connected with an endpoint override: IFNAME is eth1 there.
	r := sleeper(t)
	// TSO needs checksumming and scatter-gather, so those come back on
	// with it; GSO and rx checksumming stay off as the network says.
	mustDocker(t, "network", "connect", "--driver-opt", "sysctl.net.ipv4.conf.IFNAME.rp_filter=1", "--driver-opt", "offload.tso=on",
		"--driver-opt", "offload.tx=on", "--driver-opt", "offload.sg=on", "--driver-opt", "offload.gro=on", n, r)
	eventually(t, 15*time.Second, "sysctls after network connect", func() error {
		rp, _ := execIn(r, "cat", "/proc/sys/net/ipv4/conf/eth1/rp_filter")
		ka, _ := execIn(r, "cat", "/proc/sys/net/ipv4/tcp_keepalive_time")
		if rp != "1" || ka != "600" {
			return fmt.Errorf("eth1 rp_filter=%s tcp_keepalive_time=%s", rp, ka)
		}
		return nil
	})
	if !featureIn(t, r, "eth1", "tx-tcp-segmentation") {
		t.Fatal("endpoint offload.tso=on did not override the network's off")
	}
	eventually(t, 15*time.Second, "ethtool -k after network connect", func() error {
		if got := ethtoolSummary(t, r, "eth1"); got != "tso=on tx=on sg=on gso=off gro=on rx=off" {
			return fmt.Errorf("ethtool -k eth1 with the network's offloads off and tso, tx, sg, gro on for the endpoint: %s", got)
		}
		return nil
	})
	// Bad values are refused at connect time.
	fresh := sleeper(t)
	for _, bad := range []struct {
		args []string
		want string
	}{
		{[]string{"network", "connect", "--driver-opt", "sysctl.kernel.panic=1", n, fresh}, "only net.*"},
		{[]string{"network", "connect", "--driver-opt", "sysctl.net.ipv4/../../x=1", n, fresh}, "not a valid sysctl name"},
		{[]string{"network", "connect", "--driver-opt", "offload.tso=maybe", n, fresh}, "on or off"},
		{[]string{"network", "connect", "--driver-opt", "offload.warp=on", n, fresh}, "unknown offload"},
	} {
		out, err := docker(bad.args...)
		if err == nil || !strings.Contains(out, bad.want) {
			t.Errorf("docker %s: %v %s (want %q)", strings.Join(bad.args, " "), err, out, bad.want)
		}
	}
}

// ethtoolSummary runs the host's ethtool(8) -k in the container's network
// namespace and returns its summary lines of the offload options, as
// "tso=on tx=off ...".
func ethtoolSummary(t *testing.T, c, ifname string) string {
	t.Helper()
	out := sh(t, fmt.Sprintf("nsenter -t %s -n ethtool -k %s", pidOf(t, c), ifname))
	lines := map[string]string{}
	for _, l := range strings.Split(out, "\n") {
		if k, v, ok := strings.Cut(l, ": "); ok && !strings.HasPrefix(l, "\t") {
			lines[k] = v
		}
	}
	var got []string
	for _, o := range []struct{ opt, line string }{{"tso", "tcp-segmentation-offload"}, {"tx", "tx-checksumming"}, {"sg", "scatter-gather"},
		{"gso", "generic-segmentation-offload"}, {"gro", "generic-receive-offload"}, {"rx", "rx-checksumming"}} {
		v, ok := lines[o.line]
		if !ok {
			t.Fatalf("ethtool -k %s has no line %q:\n%s", ifname, o.line, out)
		}
		got = append(got, o.opt+"="+strings.TrimSuffix(v, " [fixed]"))
	}
	return strings.Join(got, " ")
}

// featureIn reads an ethtool feature of an interface inside a container.
func featureIn(t *testing.T, c, ifname, feature string) bool {
	t.Helper()
	var on bool
	if err := inNetns("/proc/"+pidOf(t, c)+"/ns/net", func() error {
		e, err := ethtool.NewEthtool()
		if err != nil {
			return err
		}
		defer e.Close()
		f, err := e.Features(ifname)
		if err != nil {
			return err
		}
		on = f[feature]
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return on
}

// TestMacvlanRateLimitInsideContainer: macvlan has no host-side device, so
// weft shapes inside the container's namespace; the rate must still hold.
func TestMacvlanRateLimitInsideContainer(t *testing.T) {
	l := newLAN(t, 46)
	n := l.network(t)
	server := sleeper(t, "--network", n)
	c := sleeper(t)
	mustDocker(t, "network", "connect", "--driver-opt", "rate.egress=100mbit", "--driver-opt", "rate.ingress=100mbit", n, c)
	// Shaping is applied asynchronously after the interface moved in.
	eventually(t, 15*time.Second, "shaping inside the container", func() error {
		out, _ := execIn(c, "tc", "qdisc", "show", "dev", "eth1")
		if !strings.Contains(out, "tbf") {
			return fmt.Errorf("no tbf on eth1: %s", out)
		}
		return nil
	})
	for _, dir := range []struct {
		name    string
		reverse bool
	}{{"egress", false}, {"ingress", true}} {
		got := iperf(t, c, server, ipOf(t, server, n), dir.reverse, 4)
		t.Logf("macvlan 100mbit %s: measured %.1f mbit/s", dir.name, got/1e6)
		if r := got / 100e6; r < 0.90 || r > 1.10 {
			t.Errorf("macvlan %s: measured %.1f mbit/s, not within 10%% of 100mbit", dir.name, got/1e6)
		}
	}
	// Disconnecting removes the IFB weft made inside the still-running container.
	if out := mustDocker(t, "exec", c, "ip", "-o", "link"); !strings.Contains(out, "wfi") {
		t.Fatalf("no IFB inside the shaped container: %s", out)
	}
	mustDocker(t, "network", "disconnect", n, c)
	if out := mustDocker(t, "exec", c, "ip", "-o", "link"); strings.Contains(out, "wfi") {
		t.Fatalf("IFB left inside the container after disconnect: %s", out)
	}
}
