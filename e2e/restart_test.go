package e2e

import (
	"fmt"
	"net/netip"
	"os"
	osexec "os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
)

func TestPluginDisableEnableKeepsContainers(t *testing.T) {
	n := ipamNetwork(t)
	a := sleeper(t, "--network", n)
	b := web(t, "--network", n, "-p", "18100:80")
	eventually(t, 5*time.Second, "published port", func() error { _, err := httpGet("127.0.0.1:18100"); return err })

	mustDocker(t, "plugin", "disable", "-f", plugin)
	mustDocker(t, "plugin", "enable", plugin)

	if !canPing(a, b) {
		t.Fatal("containers lost connectivity across a plugin restart")
	}
	wantPage(t, "published port after plugin restart", "127.0.0.1:18100", httpGet)
	// New containers get addresses no running container has.
	seen := map[string]string{ipOf(t, a, n): a, ipOf(t, b, n): b}
	for i := 0; i < 3; i++ {
		c := sleeper(t, "--network", n)
		ip := ipOf(t, c, n)
		if other, dup := seen[ip]; dup {
			t.Fatalf("new container %s got %s, already used by %s", c, ip, other)
		}
		seen[ip] = c
		if !canPing(c, a) {
			t.Fatalf("new container %s cannot reach %s", c, a)
		}
	}
}

// TestReconcileAfterHostReboot simulates a reboot while the plugin is away:
// the bridge and weft's chains vanish, and a stray weft link appears. At
// start the plugin must rebuild the first and remove the second.
func TestReconcileAfterHostReboot(t *testing.T) {
	o := newOutside(t)
	n := ipamNetwork(t)
	br := bridgeOf(t, n)
	gw := mustDocker(t, "network", "inspect", "-f", "{{(index .IPAM.Config 0).Gateway}}", n)

	brLink, err := netlink.LinkByName(br)
	if err != nil {
		t.Fatal(err)
	}
	brAlias := brLink.Attrs().Alias
	mustDocker(t, "plugin", "disable", "-f", plugin)
	enabled := false
	defer func() {
		if !enabled {
			_, _ = docker("plugin", "enable", plugin)
		}
	}()
	sh(t, "ip link del "+br)
	sh(t, `for x in iptables-nft ip6tables-nft; do $x -D FORWARD -j WEFT-FORWARD; $x -F WEFT-FORWARD; $x -X WEFT-FORWARD; done;
		for c in PREROUTING OUTPUT; do iptables-nft -t nat -D $c -m addrtype --dst-type LOCAL -j WEFT-DNAT; done;
		iptables-nft -t nat -D POSTROUTING -j WEFT-POSTROUTING;
		for c in WEFT-DNAT WEFT-POSTROUTING; do iptables-nft -t nat -F $c; iptables-nft -t nat -X $c; done; true`)
	if strings.Contains(weftRules(), "WEFT-FORWARD -o "+br) {
		t.Fatal("could not remove the rules for the simulation")
	}
	// A leftover from a crash: labelled by this plugin's store, owned by no
	// stored network. And a link labelled by another store (another
	// instance, or this one started on the wrong state directory): never ours.
	prefix := strings.TrimSuffix(brAlias, netID(t, n))
	if !strings.HasPrefix(prefix, "weft:local:") || strings.Count(prefix, ":") != 3 {
		t.Fatalf("bridge label %q is not weft:local:<instance>:<network>", brAlias)
	}
	for name, alias := range map[string]string{"weft-orphan0": prefix + "0123456789abcdef", "weft-foreign0": "weft:local:feedf00d:0123456789abcdef"} {
		if err := netlink.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name}}); err != nil {
			t.Fatal(err)
		}
		l, _ := netlink.LinkByName(name)
		_ = netlink.LinkSetAlias(l, alias)
		name := name
		t.Cleanup(func() { _ = osexec.Command("ip", "link", "del", name).Run() })
	}

	mustDocker(t, "plugin", "enable", plugin)
	enabled = true
	eventually(t, 10*time.Second, "bridge rebuilt with its gateway", func() error {
		l, err := netlink.LinkByName(br)
		if err != nil {
			return err
		}
		addrs, _ := netlink.AddrList(l, netlink.FAMILY_V4)
		for _, a := range addrs {
			if a.IP.String() == gw {
				return nil
			}
		}
		return fmt.Errorf("bridge addresses %v lack %s", addrs, gw)
	})
	eventually(t, 10*time.Second, "rules rebuilt", func() error {
		if !strings.Contains(weftRules(), "-A WEFT-FORWARD -o "+br+" -j DROP") {
			return fmt.Errorf("no rules for %s:\n%s", br, weftRules())
		}
		return nil
	})
	if _, err := netlink.LinkByName("weft-orphan0"); err == nil {
		t.Fatal("the leftover weft link was not removed")
	}
	if _, err := netlink.LinkByName("weft-foreign0"); err != nil {
		t.Fatal("a link labelled by another weft store was removed")
	}
	c := sleeper(t, "--network", n)
	if !canPing(c, o.peerIP) {
		t.Fatal("no egress after the rebuild")
	}
}

// TestDockerdRestart restarts the dockerd the harness started (the same
// binary, PATH and arguments, from /run/weft-e2e): a container with a
// restart policy comes back connected, on the same network.
func TestDockerdRestart(t *testing.T) {
	pidFile := "/run/weft-e2e/dockerd.pid"
	raw, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatalf("dockerd was not started by scripts/e2e-env.sh (%v): the suite must own the dockerd it restarts", err)
	}
	path, err1 := os.ReadFile("/run/weft-e2e/dockerd.env")
	args, err2 := os.ReadFile("/run/weft-e2e/dockerd.args")
	if err1 != nil || err2 != nil {
		t.Fatalf("how the harness started dockerd is not recorded: %v %v", err1, err2)
	}
	n := ipamNetwork(t)
	a := run(t, "--restart", "always", "--network", n, image, "sleep", "3600")
	b := run(t, "--restart", "always", "--network", n, image, "sleep", "3600")
	if !canPing(a, b) {
		t.Fatal("no connectivity before the restart")
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(raw)))
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
		t.Fatalf("stop dockerd %d: %v", pid, err)
	}
	for i := 0; i < 150 && syscall.Kill(pid, 0) == nil; i++ {
		time.Sleep(200 * time.Millisecond)
	}
	logf, err := os.OpenFile("/run/weft-e2e/dockerd.log", os.O_APPEND|os.O_WRONLY|os.O_CREATE, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	envPath := strings.TrimSpace(string(path))
	cmd := osexec.Command("dockerd", strings.Fields(string(args))...)
	if p, err := lookPathIn("dockerd", envPath); err == nil {
		cmd.Path = p
	}
	cmd.Env = append(os.Environ(), "PATH="+envPath)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start dockerd: %v", err)
	}
	_ = os.WriteFile(pidFile, []byte(strconv.Itoa(cmd.Process.Pid)), 0o644)
	go func() { _ = cmd.Wait() }()
	eventually(t, 60*time.Second, "dockerd answers", func() error { _, err := docker("version"); return err })
	eventually(t, 60*time.Second, "containers restarted", func() error {
		for _, c := range []string{a, b} {
			if s, _ := docker("inspect", "-f", "{{.State.Running}}", c); s != "true" {
				return fmt.Errorf("%s running=%s", c, s)
			}
		}
		return nil
	})
	eventually(t, 20*time.Second, "connectivity after the restart", func() error {
		if !canPing(a, b) {
			return fmt.Errorf("%s cannot ping %s", a, b)
		}
		return nil
	})
	subnet := netip.MustParsePrefix(mustDocker(t, "network", "inspect", "-f", "{{(index .IPAM.Config 0).Subnet}}", n))
	ipA, ipB := ipOf(t, a, n), ipOf(t, b, n)
	if ipA == ipB || !subnet.Contains(netip.MustParseAddr(ipA)) || !subnet.Contains(netip.MustParseAddr(ipB)) {
		t.Fatalf("addresses after restart %s %s (subnet %s)", ipA, ipB, subnet)
	}
}

func TestFiftyConcurrentRuns(t *testing.T) {
	n := ipamNetwork(t)
	const count = 50
	names := make([]string, count)
	errs := make([]error, count)
	var wg sync.WaitGroup
	for i := 0; i < count; i++ {
		names[i] = uniq("par")
		name := names[i]
		t.Cleanup(func() { _, _ = docker("rm", "-f", name) })
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			out, err := docker("run", "-d", "--name", names[i], "--network", n, image, "sleep", "3600")
			if err != nil {
				errs[i] = fmt.Errorf("%v: %s", err, out)
			}
		}(i)
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("run %d: %v", i, err)
		}
	}
	ips := map[string]bool{}
	var list []string
	for _, c := range names {
		ip := ipOf(t, c, n)
		if ips[ip] {
			t.Fatalf("duplicate address %s", ip)
		}
		ips[ip] = true
		list = append(list, ip)
	}
	// One prober reaches every one of them.
	prober := sleeper(t, "--network", n)
	script := fmt.Sprintf("fail=0; for ip in %s; do ping -c1 -W2 $ip >/dev/null || { echo unreachable $ip; fail=1; }; done; exit $fail", strings.Join(list, " "))
	if out, err := execIn(prober, "sh", "-c", script); err != nil {
		t.Fatalf("not all 50 reachable: %v\n%s", err, out)
	}
}

// lookPathIn finds an executable in the PATH value path.
func lookPathIn(name, path string) (string, error) {
	for _, dir := range filepath.SplitList(path) {
		p := filepath.Join(dir, name)
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s not in %s", name, path)
}
