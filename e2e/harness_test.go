// Package e2e drives weft through a real dockerd with the plugin installed as
// a managed plugin (scripts/e2e.sh sets that up), and asserts what a user
// would check: packets flow, isolation holds, state survives restarts.
package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	osexec "os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/weft-net/weft/store"
)

const image = "weft-test/busybox"

var plugin = envOr("WEFT_PLUGIN", "weft:latest")

func envOr(k, d string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return d
}

func TestMain(m *testing.M) {
	if os.Getenv("WEFT_E2E") != "1" {
		fmt.Println("e2e: skipped: set WEFT_E2E=1 (scripts/e2e.sh, run by make test, does) to run against a real dockerd")
		if os.Getenv("CI") == "true" {
			fmt.Println("e2e: CI=true but the suite was not set up: failing")
			os.Exit(1)
		}
		os.Exit(0)
	}
	if out, err := osexec.Command("docker", "plugin", "inspect", "-f", "{{.Enabled}}", plugin).CombinedOutput(); err != nil || strings.TrimSpace(string(out)) != "true" {
		fmt.Printf("e2e: plugin %s is not installed and enabled (%v: %s)\n", plugin, err, out)
		os.Exit(1)
	}
	code := m.Run()
	if code == 0 {
		if err := checkNothingLeft(); err != nil {
			fmt.Println("e2e: FAIL: left behind after the suite:", err)
			code = 1
		} else {
			fmt.Println("e2e: nothing left behind (links, chains, store records)")
		}
	}
	os.Exit(code)
}

// docker runs the docker CLI and returns its combined output.
func docker(args ...string) (string, error) {
	cmd := osexec.Command("docker", args...)
	var b bytes.Buffer
	cmd.Stdout, cmd.Stderr = &b, &b
	err := cmd.Run()
	return strings.TrimSpace(b.String()), err
}

func mustDocker(t testing.TB, args ...string) string {
	t.Helper()
	out, err := docker(args...)
	if err != nil {
		t.Fatalf("docker %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

func sh(t testing.TB, cmdline string) string {
	t.Helper()
	out, err := osexec.Command("sh", "-c", cmdline).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", cmdline, err, out)
	}
	return strings.TrimSpace(string(out))
}

var nameSeq struct {
	sync.Mutex
	n int
}

// uniq makes a resource name unique within the run and recognisable.
func uniq(prefix string) string {
	nameSeq.Lock()
	defer nameSeq.Unlock()
	nameSeq.n++
	return fmt.Sprintf("wfe2e-%s-%d-%d", prefix, os.Getpid()%10000, nameSeq.n)
}

// network creates a weft network and removes it when the test ends.
func network(t testing.TB, args ...string) string {
	t.Helper()
	name := uniq("net")
	a := append([]string{"network", "create", "-d", plugin}, args...)
	mustDocker(t, append(a, name)...)
	t.Cleanup(func() {
		// A test may have removed it itself to check what removal does.
		if out, err := docker("network", "rm", name); err != nil && !strings.Contains(out, "not found") && !strings.Contains(out, "No such network") {
			t.Errorf("network rm %s: %v %s", name, err, out)
		}
	})
	return name
}

// ipamNetwork creates a weft network that also uses weft's IPAM.
func ipamNetwork(t testing.TB, args ...string) string {
	return network(t, append([]string{"--ipam-driver", plugin}, args...)...)
}

// run starts a detached container and removes it when the test ends.
func run(t testing.TB, args ...string) string {
	t.Helper()
	name := uniq("c")
	// Cleanup first: a failed run can still leave a created container.
	t.Cleanup(func() { _, _ = docker("rm", "-f", name) })
	a := append([]string{"run", "-d", "--name", name}, args...)
	mustDocker(t, a...)
	return name
}

// sleeper runs a container that just waits, on the given docker run options.
func sleeper(t testing.TB, opts ...string) string {
	return run(t, append(opts, image, "sleep", "3600")...)
}

func web(t testing.TB, opts ...string) string {
	return run(t, append(opts, image, "httpd", "-f", "-p", "80", "-h", "/www")...)
}

func execIn(c string, args ...string) (string, error) {
	return docker(append([]string{"exec", c}, args...)...)
}

func canPing(c, target string) bool {
	_, err := execIn(c, "ping", "-c", "1", "-W", "2", target)
	return err == nil
}

func ipOf(t testing.TB, c, net string) string {
	t.Helper()
	return mustDocker(t, "inspect", "-f", fmt.Sprintf(`{{(index .NetworkSettings.Networks %q).IPAddress}}`, net), c)
}

func ip6Of(t testing.TB, c, net string) string {
	t.Helper()
	return mustDocker(t, "inspect", "-f", fmt.Sprintf(`{{(index .NetworkSettings.Networks %q).GlobalIPv6Address}}`, net), c)
}

func netID(t testing.TB, net string) string {
	t.Helper()
	return mustDocker(t, "network", "inspect", "-f", "{{.Id}}", net)
}

func bridgeOf(t testing.TB, net string) string {
	return "weft-" + netID(t, net)[:10]
}

func pidOf(t testing.TB, c string) string {
	t.Helper()
	return mustDocker(t, "inspect", "-f", "{{.State.Pid}}", c)
}

// httpGet fetches / from addr with a raw HTTP/1.0 request.
func httpGet(addr string) (string, error) {
	conn, err := net.DialTimeout("tcp", addr, 3*time.Second)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(conn, "GET / HTTP/1.0\r\n\r\n"); err != nil {
		return "", err
	}
	b, err := io.ReadAll(conn)
	return string(b), err
}

// inNetns runs fn with the calling goroutine's thread switched into the
// network namespace at path. Sockets created inside stay in that namespace.
func inNetns(path string, fn func() error) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		return err
	}
	defer orig.Close()
	ns, err := netns.GetFromPath(path)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", path, err)
	}
	defer ns.Close()
	if err := netns.Set(ns); err != nil {
		return err
	}
	defer func() { _ = netns.Set(orig) }()
	return fn()
}

// outside is a namespace playing another host on a link to this one.
type outside struct {
	ns     string // netns name
	hostIP string // this host's address on the link
	peerIP string // the outside host's address
}

// newOutside creates the "other host": a namespace joined to this host by a veth.
func newOutside(t testing.TB) *outside {
	t.Helper()
	o := &outside{ns: uniq("out"), hostIP: "198.18.0.1", peerIP: "198.18.0.2"}
	hostIf, peerIf := "wfe2eo0", "wfe2eo1"
	_ = osexec.Command("ip", "link", "del", hostIf).Run()
	sh(t, fmt.Sprintf(`ip netns add %[1]s && ip link add %[2]s type veth peer name %[3]s &&
		ip link set %[3]s netns %[1]s && ip addr add %[4]s/30 dev %[2]s && ip link set %[2]s up &&
		ip -n %[1]s addr add %[5]s/30 dev %[3]s && ip -n %[1]s link set %[3]s up && ip -n %[1]s link set lo up &&
		ip -n %[1]s route add default via %[4]s`, o.ns, hostIf, peerIf, o.hostIP, o.peerIP))
	t.Cleanup(func() {
		_ = osexec.Command("ip", "link", "del", hostIf).Run()
		_ = osexec.Command("ip", "netns", "del", o.ns).Run()
	})
	return o
}

func (o *outside) path() string { return filepath.Join("/var/run/netns", o.ns) }

// listenTCP opens a TCP listener inside the outside namespace and reports
// the remote address of the first connection.
func (o *outside) listenTCP(t testing.TB, port int) <-chan string {
	t.Helper()
	var ln net.Listener
	if err := inNetns(o.path(), func() (err error) {
		ln, err = net.Listen("tcp4", fmt.Sprintf("%s:%d", o.peerIP, port))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	ch := make(chan string, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		ch <- c.RemoteAddr().String()
		c.Close()
	}()
	return ch
}

// get fetches an HTTP page from inside the outside namespace.
func (o *outside) get(addr string) (string, error) {
	var body string
	err := inNetns(o.path(), func() (err error) {
		body, err = httpGet(addr)
		return err
	})
	return body, err
}

// weftLinks lists host links that belong to weft (by name or alias).
func weftLinks() []string {
	links, _ := netlink.LinkList()
	var out []string
	for _, l := range links {
		a := l.Attrs()
		if strings.HasPrefix(a.Name, "weft") || strings.HasPrefix(a.Name, "wfh") || strings.HasPrefix(a.Name, "wfc") || strings.HasPrefix(a.Alias, "weft:") {
			out = append(out, a.Name)
		}
	}
	return out
}

// weftRules returns every iptables line (both families, nft backend) mentioning WEFT.
func weftRules() string {
	var b strings.Builder
	for _, c := range []string{"iptables-nft-save", "ip6tables-nft-save"} {
		out, _ := osexec.Command(c).Output()
		for _, l := range strings.Split(string(out), "\n") {
			if strings.Contains(l, "WEFT") {
				b.WriteString(l + "\n")
			}
		}
	}
	return b.String()
}

// storeCounts disables the plugin (releasing its lock on the state file),
// counts the records, and re-enables it.
func storeCounts() (map[string]int, error) {
	if out, err := docker("plugin", "disable", "-f", plugin); err != nil {
		return nil, fmt.Errorf("disable: %v %s", err, out)
	}
	defer docker("plugin", "enable", plugin)
	st, err := store.Open("/var/lib/weft/local.db")
	if err != nil {
		return nil, err
	}
	defer st.Close()
	counts := map[string]int{}
	err = st.View(func(tx *store.Tx) error {
		for _, b := range []string{"networks", "endpoints", "ipam-pools", "ipam-addrs"} {
			counts[b] = tx.Count(b, "")
		}
		return nil
	})
	return counts, err
}

func checkNothingLeft() error {
	var problems []string
	if out, _ := docker("network", "ls", "--filter", "driver="+plugin, "-q"); out != "" {
		problems = append(problems, "docker networks: "+out)
	}
	if l := weftLinks(); len(l) > 0 {
		problems = append(problems, fmt.Sprintf("links: %v", l))
	}
	if r := weftRules(); r != "" {
		problems = append(problems, "iptables: "+r)
	}
	counts, err := storeCounts()
	if err != nil {
		problems = append(problems, "store: "+err.Error())
	}
	for b, n := range counts {
		if n != 0 {
			problems = append(problems, fmt.Sprintf("store bucket %s: %d records", b, n))
		}
	}
	if len(problems) > 0 {
		return fmt.Errorf("%s", strings.Join(problems, "; "))
	}
	return nil
}

// eventually retries fn until it succeeds or the timeout passes.
func eventually(t testing.TB, timeout time.Duration, what string, fn func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var err error
	for {
		if err = fn(); err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: still failing after %s: %v", what, timeout, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// exec runs a host command.
func exec(name string, args ...string) (string, error) {
	out, err := osexec.Command(name, args...).CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

// operInfo asks the plugin for an endpoint's operational info over its
// socket, the call dockerd makes for inspect and on restore.
func operInfo(t testing.TB, c, netName string) map[string]interface{} {
	t.Helper()
	id := mustDocker(t, "plugin", "inspect", "-f", "{{.Id}}", plugin)
	sock := filepath.Join("/run/docker/plugins", id, "weft.sock")
	cl := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", sock)
		}}}
	ep := mustDocker(t, "inspect", "-f", fmt.Sprintf(`{{(index .NetworkSettings.Networks %q).EndpointID}}`, netName), c)
	body := fmt.Sprintf(`{"NetworkID":%q,"EndpointID":%q}`, netID(t, netName), ep)
	resp, err := cl.Post("http://plugin/NetworkDriver.EndpointOperInfo", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatalf("EndpointOperInfo: %v", err)
	}
	defer resp.Body.Close()
	var out struct {
		Value map[string]interface{}
		Err   string
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil || out.Err != "" {
		t.Fatalf("EndpointOperInfo: %v %s", err, out.Err)
	}
	return out.Value
}

// dockerMajor is the major version of the engine under test (20, 29, ...).
func dockerMajor(t testing.TB) int {
	t.Helper()
	v := mustDocker(t, "version", "-f", "{{.Server.Version}}")
	var major int
	if _, err := fmt.Sscanf(v, "%d.", &major); err != nil {
		t.Fatalf("engine version %q: %v", v, err)
	}
	return major
}

// firewallBackend is the firewall backend of the engine under test
// (scripts/e2e.sh says which it started): iptables or nftables.
func firewallBackend() string { return envOr("WEFT_FIREWALL", "iptables") }

// policies are the filter FORWARD policies every isolation check runs
// under: Docker 20.10 leaves ACCEPT when IP forwarding was already on.
var policies = []string{"ACCEPT", "DROP"}

// forwardPolicy sets the iptables (nft) filter FORWARD policy for the rest
// of the (sub)test and puts the previous one back afterwards.
func forwardPolicy(t testing.TB, policy string) {
	t.Helper()
	old := "ACCEPT"
	if strings.Contains(sh(t, "iptables-nft -S FORWARD"), "-P FORWARD DROP") {
		old = "DROP"
	}
	sh(t, "iptables-nft -P FORWARD "+policy)
	t.Cleanup(func() { _, _ = exec("iptables-nft", "-P", "FORWARD", old) })
}
