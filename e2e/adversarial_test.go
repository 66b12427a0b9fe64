package e2e

// Adversarial isolation tests (issue "Isolation that holds"): each runs
// under both filter FORWARD policies, and each checks a control path so
// that "unreachable" means "blocked by weft", not "broken test".

import (
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// getFrom fetches a page from inside container c with busybox nc.
func getFrom(c string) func(addr string) (string, error) {
	return func(addr string) (string, error) {
		host, port, _ := net.SplitHostPort(addr)
		return execIn(c, "sh", "-c", fmt.Sprintf("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 %s %s", host, port))
	}
}

// dualWeb runs a web server answering on 80 (to be published) and on 81
// (never published), on the given docker run options.
func dualWeb(t *testing.T, opts ...string) string {
	return run(t, append(opts, image, "sh", "-c", "httpd -p 81 -h /www && exec httpd -f -p 80 -h /www")...)
}

// saveIptables saves the IPv4 iptables (nft) tables and restores them when
// the test ends: Docker re-creates its chains only when dockerd starts.
func saveIptables(t *testing.T) {
	t.Helper()
	f := filepath.Join(t.TempDir(), "rules")
	sh(t, "iptables-nft-save > "+f)
	t.Cleanup(func() {
		if out, err := exec("sh", "-c", "iptables-nft-restore < "+f); err != nil {
			t.Errorf("restore iptables: %v %s", err, out)
		}
	})
}

// weftHooksPresent checks that every jump into weft's chains is in place
// and reached, and weft's chains are filled.
func weftHooksPresent() error {
	fwd, _ := exec("iptables-nft", "-S", "FORWARD")
	user, _ := exec("iptables-nft", "-S", "DOCKER-USER")
	if !strings.Contains(fwd, "-A FORWARD -j WEFT-FORWARD") && !(strings.Contains(fwd, "-j DOCKER-USER") && strings.Contains(user, "-j WEFT-FORWARD")) {
		return fmt.Errorf("no reached jump to WEFT-FORWARD:\n%s\n%s", fwd, user)
	}
	for _, c := range []struct{ table, chain, jump string }{
		{"raw", "PREROUTING", "WEFT-PREROUTING"},
		{"nat", "PREROUTING", "WEFT-DNAT"},
		{"nat", "POSTROUTING", "WEFT-POSTROUTING"},
		{"filter", "WEFT-FORWARD", "ACCEPT"},
		{"raw", "WEFT-PREROUTING", "DROP"},
	} {
		if out, _ := exec("iptables-nft", "-t", c.table, "-S", c.chain); !strings.Contains(out, "-j "+c.jump) {
			return fmt.Errorf("%s/%s has no -j %s:\n%s", c.table, c.chain, c.jump, out)
		}
	}
	return nil
}

// Requirement 1: after a flush of the host's tables, weft's watchdog
// restores a working, isolating path within its check interval (10 s).
func TestAdversarialFlushRepair(t *testing.T) {
	o := newOutside(t)
	n := ipamNetwork(t)
	w := web(t, "--network", n, "-p", "18680:80")
	wip := ipOf(t, w, n)
	subnet := mustDocker(t, "network", "inspect", "-f", "{{(index .IPAM.Config 0).Subnet}}", n)
	// A LAN router's view: the weft subnet is routed through this host.
	sh(t, fmt.Sprintf("ip -n %s route add %s via %s", o.ns, subnet, o.hostIP))
	eventually(t, 10*time.Second, "published port from the LAN", func() error { _, err := o.get(o.hostIP + ":18680"); return err })

	flushes := []struct{ name, cmd string }{
		{"filter-all", "iptables-nft -F"},
		{"FORWARD", "iptables-nft -F FORWARD"},
		{"DOCKER-USER", "iptables-nft -F DOCKER-USER"},
		{"nat-all", "iptables-nft -t nat -F"},
		{"raw-all", "iptables-nft -t raw -F"},
	}
	for _, pol := range policies {
		t.Run("policy="+pol, func(t *testing.T) {
			forwardPolicy(t, pol)
			for _, f := range flushes {
				t.Run(f.name, func(t *testing.T) {
					if f.name == "DOCKER-USER" {
						if _, err := exec("iptables-nft", "-S", "DOCKER-USER"); err != nil {
							t.Skip("no DOCKER-USER chain with this engine's firewall backend")
						}
					}
					saveIptables(t)
					sh(t, f.cmd)
					start := time.Now()
					eventually(t, 15*time.Second, "isolation and the published port after "+f.cmd, func() error {
						if body, err := o.get(wip + ":80"); err == nil && strings.Contains(body, page) {
							return fmt.Errorf("a LAN neighbour reaches the unpublished %s:80", wip)
						}
						if _, err := o.get(o.hostIP + ":18680"); err != nil {
							return fmt.Errorf("published port: %v", err)
						}
						return weftHooksPresent()
					})
					t.Logf("repaired %s after %s", time.Since(start).Round(time.Second), f.cmd)
				})
			}
		})
	}
}

// labBridge is a plain Linux bridge with a namespace behind it, standing in
// for a libvirt or CNI bridge, and a TCP listener in that namespace.
type labBridge struct {
	br, ns, addr string
	conns        chan string
}

func newLabBridge(t *testing.T, br, prefix string) *labBridge {
	t.Helper()
	l := &labBridge{br: br, ns: uniq("lab"), addr: prefix + ".2", conns: make(chan string, 16)}
	peer := "wfe2elabp0"
	_ = exec2("ip", "link", "del", br)
	_ = exec2("ip", "link", "del", peer)
	t.Cleanup(func() {
		_ = exec2("ip", "link", "del", peer)
		_ = exec2("ip", "link", "del", br)
		_ = exec2("ip", "netns", "del", l.ns)
	})
	sh(t, fmt.Sprintf(`ip netns add %[1]s && ip link add %[2]s type bridge && ip addr add %[3]s.1/24 dev %[2]s && ip link set %[2]s up &&
		ip link add %[4]s type veth peer name eth0 netns %[1]s && ip link set %[4]s master %[2]s up &&
		ip -n %[1]s addr add %[3]s.2/24 dev eth0 && ip -n %[1]s link set eth0 up && ip -n %[1]s link set lo up &&
		ip -n %[1]s route add default via %[3]s.1`, l.ns, br, prefix, peer))
	var ln net.Listener
	if err := inNetns(filepath.Join("/var/run/netns", l.ns), func() (err error) {
		ln, err = net.Listen("tcp4", l.addr+":8099")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			l.conns <- c.RemoteAddr().String()
			c.Close()
		}
	}()
	return l
}

func exec2(name string, args ...string) error { _, err := exec(name, args...); return err }

// reached reports whether a connection from container c arrives in the lab namespace.
func (l *labBridge) reached(c string) (string, bool) {
	for len(l.conns) > 0 {
		<-l.conns
	}
	_, _ = execIn(c, "sh", "-c", fmt.Sprintf("echo x | nc -w 3 %s 8099", l.addr))
	select {
	case from := <-l.conns:
		return from, true
	case <-time.After(time.Second):
		return "", false
	}
}

// Requirement 2: a weft container opens no connection into another local
// bridge (docker0, a Docker network with a custom bridge name, a plain
// bridge made after weft's rules), except to ports published there; the
// host's FORWARD policy changes nothing.
func TestAdversarialEgressToLocalBridges(t *testing.T) {
	n := ipamNetwork(t)
	gw := mustDocker(t, "network", "inspect", "-f", "{{(index .IPAM.Config 0).Gateway}}", n)
	wc := web(t, "--network", n, "-p", "18681:80")
	wcIP := ipOf(t, wc, n)

	d0 := dualWeb(t, "-p", "18682:80")
	d0IP := ipOf(t, d0, "bridge")
	dockerGW := mustDocker(t, "network", "inspect", "-f", "{{(index .IPAM.Config 0).Gateway}}", "bridge")

	dn := uniq("dcustom")
	mustDocker(t, "network", "create", "-d", "bridge", "--subnet", "10.95.0.0/24", "-o", "com.docker.network.bridge.name=wfe2ecustom0", dn)
	t.Cleanup(func() { _, _ = docker("network", "rm", dn) })
	dc := dualWeb(t, "--network", dn)
	dcIP := ipOf(t, dc, dn)

	// A bridge weft has never heard of, made now: the netlink notification
	// must wall it off well before the 10 s periodic check.
	lab := newLabBridge(t, "wfe2elab0", "10.94.0")
	made := time.Now()
	eventually(t, 5*time.Second, "DROP rule for the new bridge", func() error {
		if r := sh(t, "iptables-nft -S WEFT-FORWARD"); !strings.Contains(r, "-o wfe2elab0 -j DROP") {
			return fmt.Errorf("not yet:\n%s", r)
		}
		return nil
	})
	t.Logf("new bridge walled off after %s", time.Since(made).Round(100*time.Millisecond))
	if _, err := httpGetTCP(lab.addr + ":8099"); err != nil {
		t.Fatalf("control: the host cannot reach the lab namespace: %v", err)
	}
	eventually(t, 10*time.Second, "web servers up", func() error {
		if _, err := execIn(d0, "sh", "-c", "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 2 127.0.0.1 81"); err != nil {
			return err
		}
		_, err := execIn(dc, "sh", "-c", "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 2 127.0.0.1 81")
		return err
	})

	for _, pol := range policies {
		t.Run("policy="+pol, func(t *testing.T) {
			forwardPolicy(t, pol)
			from := getFrom(wc)
			// Controls: a port Docker published (DNAT) is reachable and
			// answers; a docker0 container reaching weft's published port
			// gets its replies back through the weft bridge's egress.
			wantPage(t, "weft -> docker0 container's published port", gw+":18682", from)
			wantPage(t, "docker0 -> weft published port (replies)", dockerGW+":18681", getFrom(d0))
			// Unpublished ports of other bridges: closed.
			wantNoPage(t, "weft -> docker0 container, unpublished port", d0IP+":81", from)
			wantNoPage(t, "weft -> docker0 container, published container port without DNAT", d0IP+":80", from)
			wantNoPage(t, "weft -> custom-named Docker bridge, unpublished port", dcIP+":81", from)
			if src, ok := lab.reached(wc); ok {
				t.Errorf("weft -> plain bridge %s: a weft container reached %s:8099 (seen from %s)", lab.br, lab.addr, src)
			}
			// The other way round stays closed too.
			wantNoPage(t, "docker0 -> weft container, unpublished", wcIP+":80", getFrom(d0))
		})
	}
	// The bridge goes: its rule goes.
	sh(t, "ip link del wfe2elab0")
	eventually(t, 5*time.Second, "DROP rule for the removed bridge gone", func() error {
		if r := sh(t, "iptables-nft -S WEFT-FORWARD"); strings.Contains(r, "wfe2elab0") {
			return fmt.Errorf("still there:\n%s", r)
		}
		return nil
	})
}

// httpGetTCP connects from the host (no page needed: the lab listener
// just accepts).
func httpGetTCP(addr string) (string, error) {
	c, err := net.DialTimeout("tcp", addr, 3*time.Second)
	if err != nil {
		return "", err
	}
	return "", c.Close()
}

// loopbackClientScript makes a client send 127.0.0.1 to the host (via):
// the kernel must allow 127/8 on the wire (route_localnet), must not
// deliver it locally, and must not take the reply from 127.0.0.1 for a
// martian (it is one while lo holds that address).
const loopbackClientScript = `ip addr del 127.0.0.1/8 dev lo; ip route del local 127.0.0.0/8 dev lo table local; ip route add 127.0.0.1/32 via %s`

// Requirement 3: a port published on 127.0.0.1 is for the host only, even
// for a neighbour that routes 127.0.0.1 to the host.
func TestAdversarialLoopbackPorts(t *testing.T) {
	o := newOutside(t)
	n := ipamNetwork(t)
	web(t, "--network", n, "-p", "127.0.0.1:18781:80", "-p", "18782:80")
	eventually(t, 10*time.Second, "web server up", func() error { _, err := httpGet("127.0.0.1:18781"); return err })
	guard := "-d 127.0.0.1/32 ! -i lo -p tcp -m tcp --dport 18781 -j DROP"
	if r := sh(t, "iptables-nft -t raw -S WEFT-PREROUTING"); !strings.Contains(r, guard) {
		t.Fatalf("no raw guard for the loopback port:\n%s", r)
	}

	// A LAN neighbour.
	sh(t, fmt.Sprintf("ip netns exec %s sysctl -qw net.ipv4.conf.all.route_localnet=1 && ip netns exec %[1]s sh -c '"+loopbackClientScript+"'", o.ns, o.hostIP))
	// A container on docker0.
	dockerGW := mustDocker(t, "network", "inspect", "-f", "{{(index .IPAM.Config 0).Gateway}}", "bridge")
	d := sleeper(t, "--cap-add", "NET_ADMIN", "--sysctl", "net.ipv4.conf.all.route_localnet=1")
	if out, err := execIn(d, "sh", "-c", fmt.Sprintf(loopbackClientScript, dockerGW+" dev eth0")); err != nil {
		t.Fatalf("route 127.0.0.1 via the host in %s: %v %s", d, err, out)
	}
	clients := []struct {
		what, via string
		get       func(string) (string, error)
	}{
		{"LAN neighbour", o.hostIP, o.get},
		{"docker0 container", dockerGW, getFrom(d)},
	}
	for _, pol := range policies {
		t.Run("policy="+pol, func(t *testing.T) {
			forwardPolicy(t, pol)
			for _, c := range clients {
				// Control: the same client reaches a port published on every address.
				wantPage(t, c.what+" -> port published on 0.0.0.0", c.via+":18782", c.get)
				wantNoPage(t, c.what+" -> port published on 127.0.0.1", "127.0.0.1:18781", c.get)
			}
		})
	}
	// Proof that the path works: without the guard (deleted until the
	// watchdog puts it back) both clients reach the loopback port.
	for _, c := range clients {
		eventually(t, 10*time.Second, c.what+" reaches 127.0.0.1:18781 with the guard deleted", func() error {
			_, _ = exec("sh", "-c", "iptables-nft -t raw -D WEFT-PREROUTING "+guard)
			body, err := c.get("127.0.0.1:18781")
			if err != nil || !strings.Contains(body, page) {
				return fmt.Errorf("%v %q", err, body)
			}
			return nil
		})
	}
	eventually(t, 15*time.Second, "guard restored by the watchdog", func() error {
		if r := sh(t, "iptables-nft -t raw -S WEFT-PREROUTING"); !strings.Contains(r, guard) {
			return fmt.Errorf("not yet")
		}
		return nil
	})
	for _, c := range clients {
		wantNoPage(t, c.what+" -> 127.0.0.1 port once the guard is back", "127.0.0.1:18781", c.get)
	}
}

// icmpCounter counts, in the outside namespace, ICMP echo requests of one
// IP length (the payload size tells the senders apart: masquerade hides
// their source).
func icmpCounter(t *testing.T, o *outside, length int) func() int {
	t.Helper()
	sh(t, fmt.Sprintf("ip netns exec %s iptables-nft -A INPUT -p icmp -m length --length %d", o.ns, length))
	re := regexp.MustCompile(`(?m)^\s*(\d+)\s+\d+\s.*length ` + strconv.Itoa(length) + `\b`)
	return func() int {
		out := sh(t, fmt.Sprintf("ip netns exec %s iptables-nft -nvxL INPUT", o.ns))
		m := re.FindStringSubmatch(out)
		if m == nil {
			t.Fatalf("no counter for length %d:\n%s", length, out)
		}
		v, _ := strconv.Atoi(m[1])
		return v
	}
}

// Requirement 6: a container cannot send with a source address that is not
// on its network (another weft network's, which that network's masquerade
// rule would NAT, or a foreign one).
func TestAdversarialSpoofedSource(t *testing.T) {
	o := newOutside(t)
	n1 := ipamNetwork(t, "--ipv6", "--subnet", "10.93.0.0/24", "--subnet", "fd00:93::/64")
	n2 := ipamNetwork(t)
	c := sleeper(t, "--network", n1, "--cap-add", "NET_ADMIN")
	sub2 := netip.MustParsePrefix(mustDocker(t, "network", "inspect", "-f", "{{(index .IPAM.Config 0).Subnet}}", n2))
	other := sub2.Addr().Next().Next().Next().Next().Next().Next().Next() // an unused address of n2
	for _, a := range []string{other.String(), "203.0.113.9"} {
		if out, err := execIn(c, "ip", "addr", "add", a+"/32", "dev", "eth0"); err != nil {
			t.Fatalf("add %s: %v %s", a, err, out)
		}
	}
	// The IPv6 guard exists for the bridge too (ip6tables).
	if r := sh(t, "ip6tables-nft -t raw -S WEFT-PREROUTING"); !strings.Contains(r, "-A WEFT-PREROUTING -i "+bridgeOf(t, n1)+" -j DROP") || !strings.Contains(r, "-s fe80::/10 -i "+bridgeOf(t, n1)+" -j RETURN") {
		t.Fatalf("no IPv6 source guard:\n%s", r)
	}
	own := icmpCounter(t, o, 20+8+222)
	spoofOther := icmpCounter(t, o, 20+8+333)
	spoofForeign := icmpCounter(t, o, 20+8+334)
	for _, pol := range policies {
		t.Run("policy="+pol, func(t *testing.T) {
			forwardPolicy(t, pol)
			b0, b1, b2 := own(), spoofOther(), spoofForeign()
			_, _ = execIn(c, "ping", "-c", "2", "-W", "1", "-s", "333", "-I", other.String(), o.peerIP)
			_, _ = execIn(c, "ping", "-c", "2", "-W", "1", "-s", "334", "-I", "203.0.113.9", o.peerIP)
			// Control: the container's own address gets out (and back).
			if out, err := execIn(c, "ping", "-c", "1", "-W", "2", "-s", "222", o.peerIP); err != nil {
				t.Fatalf("control: ping from the container's own address: %v %s", err, out)
			}
			if own() == b0 {
				t.Fatal("control: the outside counted no echo request from the container's own address")
			}
			if got := spoofOther() - b1; got != 0 {
				t.Errorf("%d packets with another weft network's source (%s) reached the outside host", got, other)
			}
			if got := spoofForeign() - b2; got != 0 {
				t.Errorf("%d packets with a foreign source (203.0.113.9) reached the outside host", got)
			}
		})
	}
}
