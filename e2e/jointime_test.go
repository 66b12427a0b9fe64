package e2e

import (
	"fmt"
	"os"
	osexec "os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// engineVersion is the engine's version: major, minor and as it says it.
func engineVersion(t testing.TB) (int, int, string) {
	t.Helper()
	v := mustDocker(t, "version", "-f", "{{.Server.Version}}")
	var major, minor int
	if _, err := fmt.Sscanf(v, "%d.%d", &major, &minor); err != nil {
		t.Fatalf("engine version %q: %v", v, err)
	}
	return major, minor, v
}

// buildEthfeatures builds testdata/ethfeatures, static, for containers
// (busybox has no ethtool), and returns its path.
func buildEthfeatures(t *testing.T) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "ethfeatures")
	cmd := osexec.Command("go", "build", "-o", out, "./testdata/ethfeatures")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build testdata/ethfeatures: %v\n%s", err, b)
	}
	return out
}

// TestJoinTimeTuningFirstCommand: on Engine 28+ the container's namespace
// exists at Join, and weft sets sysctls and offloads before Docker moves the
// interface in, so the container's first command already sees them.
func TestJoinTimeTuningFirstCommand(t *testing.T) {
	major, _, v := engineVersion(t)
	if major < 28 {
		t.Skipf("[engine] Engine %s calls Join before the container's network namespace exists (it exists at Join from Engine 28), "+
			"so weft can only tune inside the container after it started; TestSysctlsAndOffloadsInsideContainer covers that", v)
	}
	probe := buildEthfeatures(t)
	_, err := os.Stat("/proc/sys/net/ipv6/conf/default/dad_transmits")
	ipv6 := err == nil
	// The container's first process prints what it finds, before anything
	// else runs in it.
	files := []string{"net/ipv4/conf/eth0/rp_filter", "net/ipv4/conf/eth0/arp_announce", "net/ipv4/tcp_keepalive_time"}
	want := []string{"2", "2", "601"}
	netOpts := []string{"-o", "sysctl.net.ipv4.conf.IFNAME.rp_filter=2", "-o", "sysctl.net.ipv4.tcp_keepalive_time=601", "-o", "offload.tso=off"}
	if ipv6 {
		files, want = append(files, "net/ipv6/conf/eth0/dad_transmits"), append(want, "4")
		netOpts = append(netOpts, "-o", "sysctl.net.ipv6.conf.IFNAME.dad_transmits=4")
	}
	want = append(want, "tx-tcp-segmentation=false")
	script := "cd /proc/sys && cat " + strings.Join(files, " ") + " && /ethfeatures eth0 tx-tcp-segmentation"
	firstCommand := func(network string) []string {
		t.Helper()
		return strings.Fields(mustDocker(t, "run", "--rm", "-v", probe+":/ethfeatures:ro", "--network", network, image, "sh", "-c", script))
	}

	// Control: without the options the container sees other values.
	ctrl := ipamNetwork(t)
	control := firstCommand(ctrl)
	if len(control) != len(want) {
		t.Fatalf("control run printed %v", control)
	}
	for i, w := range want {
		if control[i] == w {
			t.Fatalf("control: %s is %s without any option: the check would prove nothing", append(files, "tso")[i], w)
		}
	}

	n := ipamNetwork(t, netOpts...)
	spec := "name=" + n + ",driver-opt=sysctl.net.ipv4.conf.IFNAME.arp_announce=2"
	for i := 1; i <= 5; i++ {
		if got := firstCommand(spec); strings.Join(got, " ") != strings.Join(want, " ") {
			t.Fatalf("run %d: the container's first command read %v (%s), want %v; without the options: %v", i, got, strings.Join(files, " "), want, control)
		}
	}

	// The operational info says what was in place when the interface arrived.
	c := sleeper(t, "--network", spec)
	eventually(t, 15*time.Second, "operational info", func() error {
		in, _ := operInfo(t, c, n)["weft.tuning.inside"].(string)
		_, early, ok := strings.Cut(in, "; set before the move: ")
		if !strings.HasPrefix(in, "applied: ") || !ok {
			return fmt.Errorf("weft.tuning.inside = %q", in)
		}
		for _, w := range []string{"net.ipv4.conf.IFNAME.rp_filter=2", "net.ipv4.conf.IFNAME.arp_announce=2", "net.ipv4.tcp_keepalive_time=601", "tx-tcp-segmentation=false"} {
			if !strings.Contains(early, w) {
				return fmt.Errorf("weft.tuning.inside = %q: %s not set before the move", in, w)
			}
		}
		return nil
	})
	// The container's defaults were borrowed only for the move: an
	// interface that comes later gets the usual values.
	if got := mustDocker(t, "exec", c, "cat", "/proc/sys/net/ipv4/conf/default/rp_filter"); got != control[0] {
		t.Fatalf("the container's default rp_filter is %s after the move, want %s as without options", got, control[0])
	}
	mustDocker(t, "network", "connect", ctrl, c)
	if got := mustDocker(t, "exec", c, "cat", "/proc/sys/net/ipv4/conf/eth1/rp_filter", "/proc/sys/net/ipv4/conf/eth0/rp_filter"); strings.Join(strings.Fields(got), " ") != control[0]+" 2" {
		t.Fatalf("rp_filter of eth1 (connected later, untuned) and eth0: %q, want %s and 2", got, control[0])
	}
}

// TestJoinTimeIfname: com.docker.network.endpoint.ifname names the
// container's interface on engines that honour a remote driver's DstName
// (29.8+), and weft's tuning follows the interface under that name.
func TestJoinTimeIfname(t *testing.T) {
	major, minor, v := engineVersion(t)
	honours := major > 29 || (major == 29 && minor >= 8)
	n := ipamNetwork(t, "-o", "sysctl.net.ipv4.conf.IFNAME.rp_filter=2")
	spec := "name=" + n + ",driver-opt=com.docker.network.endpoint.ifname=wan0"

	t.Run("honoured", func(t *testing.T) {
		if !honours {
			t.Skipf("[engine] Engine %s ignores InterfaceName.DstName in a remote driver's Join answer (honoured from 29.8): "+
				"the interface gets a DstPrefix name; subtest ignored checks that", v)
		}
		// Made before the container, so that it is removed after it.
		l := newLAN(t, 58)
		mv := l.network(t, "-o", "sysctl.net.ipv4.conf.IFNAME.arp_ignore=1")
		out := mustDocker(t, "run", "--rm", "--network", spec, image, "sh", "-c",
			"ip -o link show wan0 && cat /proc/sys/net/ipv4/conf/wan0/rp_filter && if ip link show eth0 2>/dev/null; then echo eth0 exists; fi")
		lines := strings.Split(out, "\n")
		if !strings.Contains(lines[0], "wan0") || lines[len(lines)-1] != "2" || strings.Contains(out, "eth0 exists") {
			t.Fatalf("first command in a container with ifname=wan0 (want wan0 with rp_filter 2, no eth0):\n%s", out)
		}
		c := sleeper(t, "--network", spec)
		mustDocker(t, "exec", c, "ip", "link", "show", "wan0")
		eventually(t, 15*time.Second, "tuning on wan0", func() error {
			if in, _ := operInfo(t, c, n)["weft.tuning.inside"].(string); !strings.HasPrefix(in, "applied: ") || !strings.Contains(in, "net.ipv4.conf.wan0.rp_filter=2") {
				return fmt.Errorf("weft.tuning.inside = %q", in)
			}
			return nil
		})
		// docker network connect, and a type without a veth (macvlan).
		mustDocker(t, "network", "connect", "--driver-opt", "com.docker.network.endpoint.ifname=lan1", mv, c)
		eventually(t, 15*time.Second, "tuning on lan1", func() error {
			if out, err := execIn(c, "cat", "/proc/sys/net/ipv4/conf/lan1/arp_ignore"); err != nil || out != "1" {
				return fmt.Errorf("lan1 arp_ignore: %v %s", err, out)
			}
			return nil
		})
	})

	t.Run("ignored", func(t *testing.T) {
		if honours {
			t.Skipf("Engine %s honours the option; subtest honoured checks it", v)
		}
		// Accepted, and the engine names the interface as usual; the
		// tuning finds it under that name.
		c := sleeper(t, "--network", spec)
		if out := mustDocker(t, "exec", c, "ip", "-o", "link"); strings.Contains(out, "wan0") || !strings.Contains(out, "eth0") {
			t.Fatalf("Engine %s: links %s", v, out)
		}
		eventually(t, 15*time.Second, "tuning on eth0", func() error {
			if in, _ := operInfo(t, c, n)["weft.tuning.inside"].(string); !strings.Contains(in, "net.ipv4.conf.eth0.rp_filter=2") {
				return fmt.Errorf("weft.tuning.inside = %q", in)
			}
			return nil
		})
	})

	// A name the kernel would refuse fails up front, on every engine.
	c := sleeper(t)
	out, err := docker("network", "connect", "--driver-opt", "com.docker.network.endpoint.ifname=much-too-long-name", n, c)
	if err == nil || !strings.Contains(out, "com.docker.network.endpoint.ifname") || !strings.Contains(out, "1 to 15") {
		t.Fatalf("ifname much-too-long-name: %v %s", err, out)
	}
}
