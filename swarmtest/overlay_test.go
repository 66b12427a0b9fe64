package swarmtest

import (
	"fmt"
	"net"
	"os"
	osexec "os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

const (
	underlayBridge = "wfswbr"
	// The lab bridge's port towards host 2: frames forwarded between ports
	// never reach a socket on the bridge device itself.
	underlayPort = "wfswh2"
	vxlanPort    = 4800
	wgPort       = 51830
)

func netOpt(t *testing.T, name, key string) string {
	t.Helper()
	return mustHost(t, 1, "network", "inspect", "-f", fmt.Sprintf("{{index .Options %q}}", key), name)
}

func taskOn(t *testing.T, ts []task, host int) task {
	t.Helper()
	for _, x := range ts {
		if x.host == host {
			return x
		}
	}
	t.Fatalf("no task on host %d in %v", host, ts)
	return task{}
}

// endpointOf returns the endpoint ID and MAC of a container on a network.
func endpointOf(t *testing.T, x task, network string) (string, net.HardwareAddr) {
	t.Helper()
	out := mustHost(t, x.host, "inspect", "-f", fmt.Sprintf(`{{(index .NetworkSettings.Networks %q).EndpointID}} {{(index .NetworkSettings.Networks %q).MacAddress}}`, network, network), x.id)
	f := strings.Fields(out)
	if len(f) != 2 {
		t.Fatalf("endpoint of %s on %s: %q", x.id, network, out)
	}
	mac, err := net.ParseMAC(f[1])
	if err != nil {
		t.Fatalf("MAC of %s: %v", x.id, err)
	}
	return f[0], mac
}

// sendMarker sends a unique text over TCP from one task to another and
// checks it arrived: the traffic that the underlay captures look for.
func sendMarker(t *testing.T, from, to task, marker string) {
	t.Helper()
	mustHost(t, to.host, "exec", "-d", to.id, "sh", "-c", "nc -l -p 9999 > /tmp/got")
	time.Sleep(300 * time.Millisecond)
	waitFor(t, 20*time.Second, "marker delivered", func() error {
		_, _ = hostDocker(from.host, "exec", from.id, "sh", "-c", fmt.Sprintf("echo %s | nc -w 2 %s 9999", marker, to.ip))
		got, _ := hostDocker(to.host, "exec", to.id, "cat", "/tmp/got")
		if !strings.Contains(got, marker) {
			return fmt.Errorf("task %s got %q", to.ip, got)
		}
		return nil
	})
}

// hostLogHas looks for a line of host n's dockerd log holding all parts.
func hostLogHas(n int, parts ...string) error {
	b, err := os.ReadFile(fmt.Sprintf("/var/lib/weft-swarm/h%d/dockerd.log", n))
	if err != nil {
		return err
	}
	for _, l := range strings.Split(string(b), "\n") {
		ok := true
		for _, p := range parts {
			ok = ok && strings.Contains(l, p)
		}
		if ok {
			return nil
		}
	}
	return fmt.Errorf("no line in host %d's log has %q", n, parts)
}

func inHost(n int, args ...string) string {
	out, _ := osexec.Command("ip", append([]string{"netns", "exec", fmt.Sprintf("wfsw-h%d", n)}, args...)...).CombinedOutput()
	return string(out)
}

// fdbTargets lists the VTEPs host n's VXLAN devices forward to.
func fdbTargets(n int) string {
	var dsts []string
	for _, l := range strings.Split(inHost(n, "bridge", "fdb", "show"), "\n") {
		if strings.Contains(l, " dev wfvx") && strings.Contains(l, " dst ") {
			f := strings.Fields(l)
			for i := range f {
				if f[i] == "dst" && i+1 < len(f) {
					dsts = append(dsts, f[i+1])
				}
			}
		}
	}
	return strings.Join(dsts, " ")
}

// hostClean checks host n has nothing of weft's swarm networks left:
// networks, links, chains, routes, rules.
func hostClean(n int) error {
	if l := weftLinks(n); len(l) > 0 {
		return fmt.Errorf("weft links left: %v", l)
	}
	if out, _ := hostDocker(n, "network", "ls", "-q", "--filter", "driver="+plugin); out != "" {
		return fmt.Errorf("networks left: %s", out)
	}
	if out := inHost(n, "iptables-save") + inHost(n, "ip6tables-save"); strings.Contains(out, "WEFT") {
		return fmt.Errorf("weft chains left in host %d", n)
	}
	if out := inHost(n, "ip", "-6", "route", "show", "type", "blackhole"); strings.Contains(out, "fd77:7765:6677") {
		return fmt.Errorf("fail-closed route left: %s", out)
	}
	// Encrypted networks' policy rules (priorities 4800, 4801) and routes.
	for _, l := range strings.Split(inHost(n, "ip", "rule"), "\n") {
		if strings.HasPrefix(l, "4800:") || strings.HasPrefix(l, "4801:") {
			return fmt.Errorf("policy rule left: %s", l)
		}
	}
	if out := strings.TrimSpace(inHost(n, "ip", "route", "show", "table", "all")); strings.Contains(out, "wfwg0") || strings.Contains(out, "wfoh") {
		return fmt.Errorf("routes left: %s", out)
	}
	return nil
}

func removeAndCheckClean(t *testing.T, svcs []string, nets []string) {
	t.Helper()
	for _, s := range svcs {
		mustHost(t, 1, "service", "rm", s)
	}
	for _, n := range nets {
		waitFor(t, 60*time.Second, "network rm "+n, func() error {
			if out, err := hostDocker(1, "network", "rm", n); err != nil && !strings.Contains(out, "not found") {
				return fmt.Errorf("%s", out)
			}
			return nil
		})
	}
	for h := 1; h <= hosts; h++ {
		h := h
		waitFor(t, 45*time.Second, fmt.Sprintf("host %d clean", h), func() error { return hostClean(h) })
	}
}

func TestSwarmOverlayAcrossHosts(t *testing.T) {
	n := swarmNetwork(t, "--attachable", "-o", "type=overlay", "--subnet", "10.30.0.0/24")
	// sleep as PID 1 ignores SIGTERM: a short grace period keeps rescheduling quick.
	svc := service(t, "--replicas", "6", "--stop-grace-period", "1s", "--network", n)
	ts := waitTasks(t, svc, 6)
	spreadOverAllHosts(t, ts)
	allReachAll(t, ts)

	// Underlay MTU 1500 minus VXLAN's 50.
	if mtu := mustHost(t, 2, "exec", taskOn(t, ts, 2).id, "cat", "/sys/class/net/eth0/mtu"); mtu != "1450" {
		t.Errorf("container MTU %s, want 1450", mtu)
	}
	// Egress through docker_gwbridge: the lab bridge is outside the overlay.
	if !ping(taskOn(t, ts, 3), "198.19.7.254") {
		t.Errorf("a task cannot reach the underlay's gateway through docker_gwbridge")
	}
	// Forwarding comes from the control plane: learning is off, ARP is
	// proxied, and host 1 forwards to the other hosts' VTEPs.
	dev := inHost(1, "ip", "-d", "link", "show", "type", "vxlan")
	if !strings.Contains(dev, "nolearning") || !strings.Contains(dev, "proxy") || !strings.Contains(dev, "dstport 4800") {
		t.Errorf("VXLAN device is not set up for control-plane forwarding:\n%s", dev)
	}
	waitFor(t, 10*time.Second, "FDB entries for both workers on host 1", func() error {
		if d := fdbTargets(1); !strings.Contains(d, "198.19.7.2") || !strings.Contains(d, "198.19.7.3") {
			return fmt.Errorf("host 1 forwards to %q", d)
		}
		return nil
	})

	// A firewall reload that flushes weft's chain: the rules come back.
	if out, err := osexec.Command("ip", "netns", "exec", "wfsw-h2", "iptables", "-F", "WEFTS-FORWARD").CombinedOutput(); err != nil {
		t.Fatalf("flush: %v %s", err, out)
	}
	waitFor(t, 45*time.Second, "WEFTS-FORWARD restored on host 2", func() error {
		if out := inHost(2, "iptables", "-S", "WEFTS-FORWARD"); !strings.Contains(out, "wfov+") {
			return fmt.Errorf("chain: %s", out)
		}
		return nil
	})

	// docker run on the attachable overlay, on a worker.
	c := uniq("run")
	mustHost(t, 3, "run", "-d", "--name", c, "--network", n, image, "sleep", "3600")
	t.Cleanup(func() { _, _ = hostDocker(3, "rm", "-f", c) })
	if !ping(task{host: 3, id: c}, taskOn(t, ts, 1).ip) || !ping(task{host: 3, id: c}, taskOn(t, ts, 2).ip) {
		t.Fatalf("a container started with docker run cannot reach tasks on the other hosts")
	}
	mustHost(t, 3, "rm", "-f", c)

	// Scale down and up.
	mustHost(t, 1, "service", "scale", "-d", svc+"=2")
	waitTasks(t, svc, 2)
	mustHost(t, 1, "service", "scale", "-d", svc+"=6")
	allReachAll(t, waitTasks(t, svc, 6))

	// Plugin restart on a worker: tasks there keep working, and it
	// rebuilds its forwarding entries from its store and the gossip.
	mustHost(t, 2, "plugin", "disable", "-f", plugin)
	mustHost(t, 2, "plugin", "enable", plugin)
	waitFor(t, 30*time.Second, "traffic after the plugin restart", func() error {
		ts := tasksOf(t, svc)
		for _, a := range ts {
			for _, b := range ts {
				if a.id != b.id && !ping(a, b.ip) {
					return fmt.Errorf("host %d (%s) cannot reach host %d (%s)", a.host, a.ip, b.host, b.ip)
				}
			}
		}
		return nil
	})

	// Node leave: the others drop its entries; its tasks move.
	mustHost(t, 3, "swarm", "leave")
	waitFor(t, 60*time.Second, "host 3's entries gone", func() error {
		for _, h := range []int{1, 2} {
			if d := fdbTargets(h); strings.Contains(d, "198.19.7.3") {
				return fmt.Errorf("host %d still forwards to host 3: %q", h, d)
			}
		}
		return nil
	})
	ts = waitTasks(t, svc, 6)
	allReachAll(t, ts)
	// Rejoin: new tasks land on it and converge.
	old := mustHost(t, 1, "node", "ls", "-q", "--filter", "name=wfsw-h3")
	token := mustHost(t, 1, "swarm", "join-token", "-q", "worker")
	mustHost(t, 3, "swarm", "join", "--token", token, "198.19.7.1:2377")
	for _, id := range strings.Fields(old) {
		_, _ = hostDocker(1, "node", "rm", "--force", id)
	}
	waitFor(t, 60*time.Second, "host 3 ready with the plugin", func() error {
		out, _ := hostDocker(1, "node", "ls", "--filter", "name=wfsw-h3", "--format", "{{.Status}}")
		if out != "Ready" {
			return fmt.Errorf("host 3 is %q", out)
		}
		return nil
	})
	// A forced update reschedules every task, spread over the nodes again;
	// without -d the CLI returns once the rolling update has converged.
	onThree := false
	for try := 0; try < 3 && !onThree; try++ {
		mustHost(t, 1, "service", "update", "--force", "--update-parallelism", "0", svc)
		for _, x := range waitTasks(t, svc, 6) {
			onThree = onThree || x.host == 3
		}
	}
	if !onThree {
		t.Fatalf("no task landed on the rejoined host 3")
	}
	allReachAll(t, waitTasks(t, svc, 6))

	removeAndCheckClean(t, []string{svc}, []string{n})
}

func TestSwarmEncryptedOverlay(t *testing.T) {
	plain := swarmNetwork(t, "--attachable", "-o", "type=overlay", "--subnet", "10.32.0.0/24")
	enc := swarmNetwork(t, "--attachable", "-o", "type=overlay", "-o", "encrypted", "--subnet", "10.33.0.0/24")
	sp := service(t, "--mode", "global", "--network", plain)
	se := service(t, "--mode", "global", "--network", enc)
	tp := waitTasks(t, sp, hosts)
	te := waitTasks(t, se, hosts)
	allReachAll(t, te)

	if got := netOpt(t, enc, "weft.encryption"); got != "wireguard" {
		t.Errorf("network option weft.encryption = %q, want wireguard", got)
	}
	waitFor(t, 10*time.Second, "backend in the log", func() error {
		return hostLogHas(2, "encryption tunnel up", "wireguard-go (userspace)")
	})
	// Routed through WireGuard over IPv4: 60 bytes below 1500.
	if mtu := mustHost(t, 2, "exec", taskOn(t, te, 2).id, "cat", "/sys/class/net/eth0/mtu"); mtu != "1440" {
		t.Errorf("encrypted container MTU %s, want 1440", mtu)
	}
	encVNI, _ := strconv.Atoi(netOpt(t, enc, "weft.vni"))
	plainVNI, _ := strconv.Atoi(netOpt(t, plain, "weft.vni"))

	// The underlay sees the plain network's payload, and not the encrypted one's.
	stop := capture(t, "", underlayPort)
	sendMarker(t, taskOn(t, tp, 1), taskOn(t, tp, 2), "weft-plain-marker-7c1d")
	sendMarker(t, taskOn(t, te, 1), taskOn(t, te, 2), "weft-secret-marker-93ab")
	frames := stop()
	if countWith(frames, []byte("weft-plain-marker-7c1d")) == 0 {
		t.Fatalf("the capture on %s saw no plain overlay payload (%d frames): it cannot tell anything", underlayPort, len(frames))
	}
	if n := countWith(frames, []byte("weft-secret-marker-93ab")); n > 0 {
		t.Errorf("the encrypted network's payload crossed the underlay in clear %d times", n)
	}
	wg, vxEnc := 0, 0
	for _, f := range frames {
		dport, p, ok := udpInfo(f)
		if !ok {
			continue
		}
		if dport == wgPort {
			wg++
		}
		if dport == vxlanPort {
			if vni, ok := vxlanVNI(p); ok && vni == encVNI {
				vxEnc++
			}
		}
	}
	if wg == 0 {
		t.Errorf("no WireGuard packets on the underlay: where did the encrypted traffic go?")
	}
	if vxEnc > 0 {
		t.Errorf("%d cleartext VXLAN packets of the encrypted network (VNI %d) on the underlay", vxEnc, encVNI)
	}

	// Crafted cleartext VXLAN aimed at a task: delivered on the plain
	// network (so the packet is right), dropped on the encrypted one, over
	// IPv4 to the host and over IPv6 to its tunnel address.
	pTask, eTask := taskOn(t, tp, 2), taskOn(t, te, 2)
	pEP, pMAC := endpointOf(t, pTask, plain)
	eEP, eMAC := endpointOf(t, eTask, enc)
	src := net.ParseIP("10.32.0.250")
	pCap := capture(t, "wfsw-h2", "wfoh"+pEP[:11])
	sendUDP(t, "udp4", fmt.Sprintf("198.19.7.2:%d", vxlanPort), craftVXLAN(plainVNI, pMAC, src, net.ParseIP(pTask.ip), []byte("crafted-plain-5e")), 5)
	time.Sleep(500 * time.Millisecond)
	if countWith(pCap(), []byte("crafted-plain-5e")) == 0 {
		t.Fatalf("a crafted VXLAN packet for the plain network was not delivered: the crafted-packet check cannot tell anything")
	}
	eCap := capture(t, "wfsw-h2", "wfoh"+eEP[:11])
	sendUDP(t, "udp4", fmt.Sprintf("198.19.7.2:%d", vxlanPort), craftVXLAN(encVNI, eMAC, src, net.ParseIP(eTask.ip), []byte("crafted-enc4-5e")), 5)
	// IPv6 straight at host 2's tunnel address, as a neighbour on the
	// underlay could send it.
	tunAddr := "fd77:7765:6677::c613:702"
	h2MAC := strings.TrimSpace(inHost(2, "cat", "/sys/class/net/eth0/address"))
	for _, c := range [][]string{
		{"-6", "route", "replace", tunAddr + "/128", "dev", underlayBridge},
		{"-6", "neigh", "replace", tunAddr, "lladdr", h2MAC, "dev", underlayBridge, "nud", "permanent"},
	} {
		if out, err := osexec.Command("ip", c...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v %s", c, err, out)
		}
	}
	t.Cleanup(func() {
		_ = osexec.Command("ip", "-6", "neigh", "del", tunAddr, "dev", underlayBridge).Run()
		_ = osexec.Command("ip", "-6", "route", "del", tunAddr+"/128", "dev", underlayBridge).Run()
	})
	guardBefore := guardDrops(2)
	sendUDP(t, "udp6", fmt.Sprintf("[%s]:%d", tunAddr, vxlanPort), craftVXLAN(encVNI, eMAC, src, net.ParseIP(eTask.ip), []byte("crafted-enc6-5e")), 5)
	time.Sleep(500 * time.Millisecond)
	got := eCap()
	if n := countWith(got, []byte("crafted-enc4-5e")); n > 0 {
		t.Errorf("crafted cleartext IPv4 VXLAN reached the encrypted network's task %d times", n)
	}
	if n := countWith(got, []byte("crafted-enc6-5e")); n > 0 {
		t.Errorf("crafted cleartext IPv6 VXLAN reached the encrypted network's task %d times", n)
	}
	if after := guardDrops(2); after < guardBefore+5 {
		t.Errorf("the guard dropped %d crafted IPv6 packets, want 5: did they reach host 2 at all?", after-guardBefore)
	}
	// Plain IP straight at the container, routed to host 2 over the
	// underlay: only what comes out of the tunnel reaches it.
	route := []string{"route", "replace", eTask.ip + "/32", "via", "198.19.7.2"}
	if out, err := osexec.Command("ip", route...).CombinedOutput(); err != nil {
		t.Fatalf("ip %v: %v %s", route, err, out)
	}
	t.Cleanup(func() { _ = osexec.Command("ip", "route", "del", eTask.ip+"/32").Run() })
	eCap = capture(t, "wfsw-h2", "wfoh"+eEP[:11])
	sendUDP(t, "udp4", eTask.ip+":9", []byte("crafted-direct-5e"), 5)
	time.Sleep(500 * time.Millisecond)
	if n := countWith(eCap(), []byte("crafted-direct-5e")); n > 0 {
		t.Errorf("plain IP from the underlay reached the encrypted network's task %d times", n)
	}

	// Fail closed: with the plugin (and so the userspace tunnel) stopped on
	// host 2, its encrypted traffic stops rather than leaving in clear;
	// after the restart it flows again.
	e2ip := taskOn(t, te, 2).ip
	if rt := inHost(1, "ip", "route", "show", "table", strconv.Itoa(encVNI)); !strings.Contains(rt, e2ip+" dev wfwg0") {
		t.Fatalf("host 1 has no route to host 2's task %s through the tunnel:\n%s", e2ip, rt)
	}
	mustHost(t, 2, "plugin", "disable", "-f", plugin)
	// Host 2's plugin is gone from the gossip: the other nodes drop its
	// routes (and its WireGuard peer, which goes with them).
	waitFor(t, 30*time.Second, "host 2's routes gone from host 1", func() error {
		if rt := inHost(1, "ip", "route", "show", "table", strconv.Itoa(encVNI)); strings.Contains(rt, e2ip+" ") {
			return fmt.Errorf("still there:\n%s", rt)
		}
		return nil
	})
	stop = capture(t, "", underlayPort)
	_, _ = hostDocker(2, "exec", taskOn(t, te, 2).id, "sh", "-c", "echo weft-closed-marker-41 | nc -w 2 "+taskOn(t, te, 1).ip+" 9999")
	ok := ping(taskOn(t, te, 2), taskOn(t, te, 1).ip)
	frames = stop()
	if ok {
		t.Errorf("encrypted traffic flowed with host 2's tunnel down")
	}
	if n := countWith(frames, []byte("weft-closed-marker-41")); n > 0 {
		t.Errorf("with the tunnel down, the payload crossed the underlay in clear %d times", n)
	}
	mustHost(t, 2, "plugin", "enable", plugin)
	waitFor(t, 45*time.Second, "encrypted traffic after the plugin restart", func() error {
		for _, a := range te {
			for _, b := range te {
				if a.id != b.id && !ping(a, b.ip) {
					return fmt.Errorf("host %d cannot reach host %d", a.host, b.host)
				}
			}
		}
		return nil
	})

	removeAndCheckClean(t, []string{sp, se}, []string{plain, enc})
}

// guardDrops reads the packet counter of the cleartext-VXLAN guard on host n.
func guardDrops(n int) int {
	out := inHost(n, "ip6tables", "-t", "raw", "-L", "WEFTS-GUARD", "-v", "-x", "-n")
	for _, l := range strings.Split(out, "\n") {
		f := strings.Fields(l)
		if len(f) > 2 && f[2] == "DROP" {
			v, _ := strconv.Atoi(f[0])
			return v
		}
	}
	return -1
}

// TestSwarmManagerRestart: a restarted manager re-allocates every network
// with the options weft returned before; weft keeps the VNI and the key,
// tasks it then schedules join the same overlay, and a new network gets the
// same cluster key.
func TestSwarmManagerRestart(t *testing.T) {
	n := swarmNetwork(t, "--attachable", "-o", "type=overlay", "-o", "encrypted", "--subnet", "10.34.0.0/24")
	svc := service(t, "--replicas", "3", "--stop-grace-period", "1s", "--constraint", "node.role==worker", "--network", n)
	allReachAll(t, waitTasks(t, svc, 3))
	key, vni := netOpt(t, n, "weft.gossip_key"), netOpt(t, n, "weft.vni")
	logFile := "/var/lib/weft-swarm/h1/dockerd.log"
	before, err := os.Stat(logFile)
	if err != nil {
		t.Fatal(err)
	}
	if out, err := osexec.Command("../scripts/swarm-lab.sh", "restart", "1").CombinedOutput(); err != nil {
		t.Fatalf("restart the manager: %v\n%s", err, out)
	}
	waitFor(t, 60*time.Second, "the manager is back", func() error {
		_, err := hostDocker(1, "node", "ls", "-q")
		return err
	})
	if k, v := netOpt(t, n, "weft.gossip_key"), netOpt(t, n, "weft.vni"); k != key || v != vni {
		t.Errorf("after the restart: VNI %s (was %s), key changed: %v", v, vni, k != key)
	}
	mustHost(t, 1, "service", "scale", "-d", svc+"=5")
	allReachAll(t, waitTasks(t, svc, 5))
	n2 := swarmNetwork(t, "-o", "type=overlay", "--subnet", "10.35.0.0/24")
	if k := netOpt(t, n2, "weft.gossip_key"); k != key {
		t.Errorf("a network created after the restart has another cluster key")
	}
	b, _ := os.ReadFile(logFile)
	if tail := string(b[min(int(before.Size()), len(b)):]); strings.Contains(tail, "Failed allocation") {
		for _, l := range strings.Split(tail, "\n") {
			if strings.Contains(l, "Failed allocation") {
				t.Errorf("after the restart: %s", l)
			}
		}
	}
	removeAndCheckClean(t, []string{svc}, []string{n, n2})
}

// TestSwarmInternalOverlay: --internal keeps containers off docker_gwbridge
// (no default route, no way out) while they still reach each other.
func TestSwarmInternalOverlay(t *testing.T) {
	n := swarmNetwork(t, "--attachable", "--internal", "-o", "type=overlay", "--subnet", "10.36.0.0/24")
	var cs []task
	for _, h := range []int{2, 3} {
		c := uniq("int")
		mustHost(t, h, "run", "-d", "--name", c, "--network", n, image, "sleep", "3600")
		h := h
		t.Cleanup(func() { _, _ = hostDocker(h, "rm", "-f", c) })
		ip := mustHost(t, h, "exec", c, "sh", "-c", "ip -4 -o addr show eth0 | awk '{print $4}' | cut -d/ -f1")
		cs = append(cs, task{host: h, id: c, ip: ip})
	}
	if !ping(cs[0], cs[1].ip) {
		t.Fatalf("containers on an internal overlay cannot reach each other across hosts")
	}
	if routes := mustHost(t, 2, "exec", cs[0].id, "ip", "route"); strings.Contains(routes, "default") {
		t.Errorf("a container on an internal overlay has a default route:\n%s", routes)
	}
	if ping(cs[0], "198.19.7.254") {
		t.Errorf("a container on an internal overlay reaches the underlay")
	}
	for _, c := range cs {
		mustHost(t, c.host, "rm", "-f", c.id)
	}
	removeAndCheckClean(t, nil, []string{n})
}

// TestSwarmIPv6ChosenOnNodeRefused: Docker 20.10's swarm manager does not
// always assign a task an IPv6 address (never for `docker run` attachments),
// and each node picking its own would pick the same ones. weft refuses that
// with an explanation; what does run has unique IPv6 addresses.
func TestSwarmIPv6ChosenOnNodeRefused(t *testing.T) {
	n := swarmNetwork(t, "--ipv6", "-o", "type=overlay", "--subnet", "10.37.0.0/24", "--subnet", "fd00:37::/64")
	svc := service(t, "--replicas", "3", "--network", n)
	var running []task
	var ps string
	waitFor(t, 60*time.Second, "every task running or refused", func() error {
		ps, _ = hostDocker(1, "service", "ps", "--no-trunc", "--format", "{{.CurrentState}} {{.Error}}", svc)
		running = tasksOf(t, svc)
		if len(running) < 3 && !strings.Contains(ps, "create the network without --ipv6") {
			return fmt.Errorf("%d running; service ps:\n%s", len(running), ps)
		}
		return nil
	})
	for _, l := range strings.Split(ps, "\n") {
		if strings.Contains(l, "Rejected") || strings.Contains(l, "Failed") {
			if !strings.Contains(l, "create the network without --ipv6") {
				t.Errorf("a task failed for another reason: %s", l)
			}
		}
	}
	seen := map[string]int{}
	for _, x := range running {
		ip6 := mustHost(t, x.host, "exec", x.id, "sh", "-c", "ip -6 -o addr show eth0 scope global | awk '{print $4}'")
		if o, dup := seen[ip6]; dup && ip6 != "" {
			t.Errorf("IPv6 address %s on host %d and host %d", ip6, o, x.host)
		}
		seen[ip6] = x.host
	}
	t.Logf("%d tasks running with unique IPv6 addresses; refusals seen: %v", len(running), strings.Contains(ps, "without --ipv6"))
	removeAndCheckClean(t, []string{svc}, []string{n})
}
