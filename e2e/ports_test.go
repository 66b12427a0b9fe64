package e2e

import (
	"fmt"
	"net"
	"regexp"
	"strings"
	"testing"
	"time"
)

const page = "hello from weft"

func wantPage(t *testing.T, what, addr string, get func(string) (string, error)) {
	t.Helper()
	body, err := get(addr)
	if err != nil || !strings.Contains(body, page) {
		t.Fatalf("%s (%s): %v %q", what, addr, err, body)
	}
}

func wantNoPage(t *testing.T, what, addr string, get func(string) (string, error)) {
	t.Helper()
	if body, err := get(addr); err == nil && strings.Contains(body, page) {
		t.Fatalf("%s (%s) answered but must not", what, addr)
	}
}

// dnatPort finds the host port weft forwards to containerIP:port.
func dnatPort(t *testing.T, containerIP string, port int) string {
	t.Helper()
	out := sh(t, "iptables-nft -t nat -S WEFT-DNAT")
	re := regexp.MustCompile(`--dport (\d+) -j DNAT --to-destination ` + regexp.QuoteMeta(fmt.Sprintf("%s:%d", containerIP, port)))
	m := re.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no DNAT rule for %s:%d in\n%s", containerIP, port, out)
	}
	return m[1]
}

func TestPublishedPorts(t *testing.T) {
	o := newOutside(t)
	n := ipamNetwork(t)
	w := web(t, "--network", n, "-p", "18080:80", "-p", "127.0.0.1:18081:80", "-p", "18090-18095:80")
	wip := ipOf(t, w, n)
	eventually(t, 5*time.Second, "web server up", func() error { _, err := httpGet("127.0.0.1:18080"); return err })

	// From another host, from the host itself (its address and 127.0.0.1).
	wantPage(t, "from the outside host", o.hostIP+":18080", o.get)
	wantPage(t, "from the host on its own address", o.hostIP+":18080", httpGet)
	wantPage(t, "from the host on 127.0.0.1", "127.0.0.1:18080", httpGet)
	// Bound to 127.0.0.1: the host reaches it, the outside host does not.
	wantPage(t, "127.0.0.1 binding from the host", "127.0.0.1:18081", httpGet)
	wantNoPage(t, "127.0.0.1 binding from outside", o.hostIP+":18081", o.get)
	// A range publishes on one free port of the range.
	answered := 0
	for p := 18090; p <= 18095; p++ {
		if body, err := httpGet(fmt.Sprintf("127.0.0.1:%d", p)); err == nil && strings.Contains(body, page) {
			answered++
		}
	}
	if answered != 1 {
		t.Fatalf("range 18090-18095: %d ports answered, want 1", answered)
	}

	// Hairpin: another container on the network, and the container itself,
	// through the host's published port.
	other := sleeper(t, "--network", n)
	for _, c := range []string{other, w} {
		out, err := execIn(c, "sh", "-c", fmt.Sprintf("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 %s 18080", o.hostIP))
		if err != nil || !strings.Contains(out, page) {
			t.Fatalf("hairpin from %s: %v %q", c, err, out)
		}
	}
	// A container on another weft network reaches it through the published port only.
	n2 := ipamNetwork(t)
	far := sleeper(t, "--network", n2)
	if out, err := execIn(far, "sh", "-c", fmt.Sprintf("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 %s 18080", o.hostIP)); err != nil || !strings.Contains(out, page) {
		t.Fatalf("from another network through the published port: %v %q", err, out)
	}

	// The admin's own rules keep precedence over weft's: in DOCKER-USER
	// with Docker's iptables backend, in a table of their own with its
	// nftables backend (which has no DOCKER-USER).
	if firewallBackend() == "nftables" {
		tbl := "wfe2e_user"
		t.Cleanup(func() { _, _ = exec("nft", "delete", "table", "inet", tbl) })
		sh(t, fmt.Sprintf(`nft add table inet %[1]s && nft add chain inet %[1]s userfwd '{ type filter hook forward priority 0; }' &&
			nft add rule inet %[1]s userfwd ip daddr %[2]s tcp dport 80 drop`, tbl, wip))
		wantNoPage(t, "outside host with the admin's nftables drop rule", o.hostIP+":18080", o.get)
		sh(t, "nft delete table inet "+tbl)
		wantPage(t, "outside host after removing the admin's nftables rule", o.hostIP+":18080", o.get)
	} else {
		rule := fmt.Sprintf("-d %s/32 -p tcp -m tcp --dport 80 -j DROP", wip)
		sh(t, "iptables-nft -I DOCKER-USER "+rule)
		wantNoPage(t, "outside host with a DOCKER-USER drop rule", o.hostIP+":18080", o.get)
		sh(t, "iptables-nft -D DOCKER-USER "+rule)
		wantPage(t, "outside host after removing the DOCKER-USER rule", o.hostIP+":18080", o.get)
	}

	// A port already published is refused clearly, and the failed container leaves no rule.
	name := uniq("dup")
	out, err := docker("run", "-d", "--name", name, "--network", n, "-p", "18080:80", image, "httpd", "-f", "-p", "80", "-h", "/www")
	t.Cleanup(func() { _, _ = docker("rm", "-f", name) })
	if err == nil || !strings.Contains(out, "18080/tcp") || !strings.Contains(out, "already in use") {
		t.Fatalf("duplicate -p 18080: %v %q", err, out)
	}
	if rules := sh(t, "iptables-nft -t nat -S WEFT-DNAT"); strings.Count(rules, "--dport 18080 ") != 1 {
		t.Fatalf("want exactly one rule for 18080:\n%s", rules)
	}

	// Removing the container revokes its ports.
	mustDocker(t, "rm", "-f", w)
	if _, err := httpGet("127.0.0.1:18080"); err == nil {
		t.Fatal("port 18080 still answers after the container was removed")
	}
	if rules := sh(t, "iptables-nft -t nat -S WEFT-DNAT"); strings.Contains(rules, wip+":") {
		t.Fatalf("DNAT rules left for %s:\n%s", wip, rules)
	}
}

func TestPublishAllAndUDP(t *testing.T) {
	o := newOutside(t)
	n := ipamNetwork(t)
	// -P picks a free host port for every exposed port.
	w := web(t, "--network", n, "--expose", "80", "-P")
	port := dnatPort(t, ipOf(t, w, n), 80)
	eventually(t, 5*time.Second, "-P port answers", func() error { _, err := httpGet("127.0.0.1:" + port); return err })
	wantPage(t, "-P from outside", o.hostIP+":"+port, o.get)

	// UDP: a datagram sent to the published port arrives in the container.
	u := sleeper(t, "--network", n, "-p", "15353:53/udp")
	var conn net.PacketConn
	if err := inNetns("/proc/"+pidOf(t, u)+"/ns/net", func() (err error) {
		conn, err = net.ListenPacket("udp4", ":53")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	for _, from := range []struct {
		what string
		send func() error
	}{
		{"host 127.0.0.1", func() error { return sendUDP("127.0.0.1:15353", "via-localhost") }},
		{"outside host", func() error {
			return inNetns(o.path(), func() error { return sendUDP(o.hostIP+":15353", "via-outside") })
		}},
	} {
		if err := from.send(); err != nil {
			t.Fatalf("send from %s: %v", from.what, err)
		}
		_ = conn.SetReadDeadline(time.Now().Add(3 * time.Second))
		buf := make([]byte, 64)
		n, _, err := conn.ReadFrom(buf)
		if err != nil || !strings.HasPrefix(string(buf[:n]), "via-") {
			t.Fatalf("UDP from %s did not arrive: %v %q", from.what, err, buf[:n])
		}
	}
}

func sendUDP(addr, msg string) error {
	c, err := net.Dial("udp4", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	_, err = c.Write([]byte(msg))
	return err
}
