// Package swarmtest drives weft's swarm instance through a real swarm of
// three dockerd hosts on this machine (scripts/swarm-lab.sh, run by
// scripts/swarm-test.sh), each with weft installed as the managed plugin
// weft-swarm:latest (SCOPE=global).
package swarmtest

import (
	"fmt"
	"os"
	osexec "os/exec"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"
)

const (
	plugin = "weft-swarm:latest"
	hosts  = 3
)

var image string // the test image by ID: no node tries to pull it

func TestMain(m *testing.M) {
	if os.Getenv("WEFT_SWARM") != "1" {
		fmt.Println("swarmtest: skipped: set WEFT_SWARM=1 (scripts/swarm-test.sh, run by make test-swarm, does) to run against the swarm lab")
		if os.Getenv("CI") == "true" {
			fmt.Println("swarmtest: CI=true but the lab was not set up: failing")
			os.Exit(1)
		}
		os.Exit(0)
	}
	out, err := hostDocker(1, "image", "inspect", "-f", "{{.Id}}", "weft-test/busybox")
	if err != nil {
		fmt.Println("swarmtest: lab not up:", out)
		os.Exit(1)
	}
	image = out
	os.Exit(m.Run())
}

// hostDocker runs the docker CLI on lab host n (1 is the manager).
func hostDocker(n int, args ...string) (string, error) {
	out, err := osexec.Command("../scripts/swarm-lab.sh", append([]string{"docker", fmt.Sprint(n)}, args...)...).CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

func mustHost(t testing.TB, n int, args ...string) string {
	t.Helper()
	out, err := hostDocker(n, args...)
	if err != nil {
		t.Fatalf("host %d: docker %s: %v\n%s", n, strings.Join(args, " "), err, out)
	}
	return out
}

var seq struct {
	sync.Mutex
	n int
}

func uniq(p string) string {
	seq.Lock()
	defer seq.Unlock()
	seq.n++
	return fmt.Sprintf("wfsw-%s-%d", p, seq.n)
}

// swarmNetwork creates a swarm-scoped weft network on the manager.
func swarmNetwork(t *testing.T, args ...string) string {
	t.Helper()
	name := uniq("net")
	mustHost(t, 1, append(append([]string{"network", "create", "-d", plugin, "--ipam-driver", plugin, "--scope", "swarm"}, args...), name)...)
	t.Cleanup(func() { _, _ = hostDocker(1, "network", "rm", name) })
	return name
}

func service(t *testing.T, args ...string) string {
	t.Helper()
	name := uniq("svc")
	mustHost(t, 1, append(append([]string{"service", "create", "-d", "--no-resolve-image", "--name", name}, args...), image, "sleep", "3600")...)
	t.Cleanup(func() { _, _ = hostDocker(1, "service", "rm", name) })
	return name
}

// task is one running container of a service, as its node sees it.
type task struct {
	host int
	id   string
	ip   string
}

// tasksOf lists the running containers of a service on every host.
func tasksOf(t *testing.T, svc string) []task {
	t.Helper()
	var out []task
	for h := 1; h <= hosts; h++ {
		ids, _ := hostDocker(h, "ps", "-q", "--filter", "label=com.docker.swarm.service.name="+svc)
		for _, id := range strings.Fields(ids) {
			ip, err := hostDocker(h, "exec", id, "sh", "-c", "ip -4 -o addr show eth0 | awk '{print $4}' | cut -d/ -f1")
			if err != nil || ip == "" {
				continue
			}
			out = append(out, task{host: h, id: id, ip: ip})
		}
	}
	return out
}

// waitTasks waits until the service has want running tasks with addresses.
func waitTasks(t *testing.T, svc string, want int) []task {
	t.Helper()
	deadline := time.Now().Add(90 * time.Second)
	for {
		ts := tasksOf(t, svc)
		if len(ts) == want {
			return ts
		}
		if time.Now().After(deadline) {
			ps, _ := hostDocker(1, "service", "ps", "--no-trunc", svc)
			t.Fatalf("service %s: %d running tasks with an address after 90 s, want %d\n%s", svc, len(ts), want, ps)
		}
		time.Sleep(time.Second)
	}
}

func ping(from task, ip string) bool {
	_, err := hostDocker(from.host, "exec", from.id, "ping", "-c", "1", "-W", "2", ip)
	return err == nil
}

// allReachAll checks every task reaches every other, and that addresses are unique.
func allReachAll(t *testing.T, ts []task) {
	t.Helper()
	seen := map[string]task{}
	for _, x := range ts {
		if o, dup := seen[x.ip]; dup {
			t.Fatalf("address %s given twice: host %d and host %d", x.ip, o.host, x.host)
		}
		seen[x.ip] = x
	}
	failed := false
	for _, a := range ts {
		for _, b := range ts {
			if a.id == b.id {
				continue
			}
			// A task that just started may wait for the gossip to reach
			// the other nodes (well under a second); a few tries cover it.
			ok := false
			for try := 0; try < 3 && !ok; try++ {
				ok = ping(a, b.ip)
			}
			if !ok {
				failed = true
				t.Errorf("task on host %d (%s) cannot reach task on host %d (%s)", a.host, a.ip, b.host, b.ip)
			}
		}
	}
	if failed {
		// What the overlay's control plane had programmed, for the post-mortem.
		for h := 1; h <= hosts; h++ {
			t.Logf("host %d forwarding entries:\n%s", h, inHost(h, "sh", "-c", "bridge fdb show | grep 'dev wfvx.*dst'; ip neigh show | grep wfvx; ip rule | grep -E '^480[01]:'; ip route show table all | grep -E 'wfwg0|wfoh'"))
			b, _ := os.ReadFile(fmt.Sprintf("/var/lib/weft-swarm/h%d/dockerd.log", h))
			lines := strings.Split(string(b), "\n")
			var plug []string
			for _, l := range lines {
				if strings.Contains(l, "plugin=") && (strings.Contains(l, "gossip") || strings.Contains(l, "overlay") || strings.Contains(l, "endpoint")) {
					plug = append(plug, l)
				}
			}
			t.Logf("host %d plugin log (last 15 overlay lines):\n%s", h, strings.Join(plug[max(0, len(plug)-15):], "\n"))
		}
	}
}

// weftLinks lists the links weft made in host n's namespace.
func weftLinks(n int) []string {
	out, _ := osexec.Command("ip", "-n", fmt.Sprintf("wfsw-h%d", n), "-o", "link", "show").CombinedOutput()
	var links []string
	for _, l := range strings.Split(string(out), "\n") {
		f := strings.Fields(l)
		if len(f) > 1 && (strings.HasPrefix(f[1], "wf") || strings.Contains(l, "alias weft:")) {
			links = append(links, strings.TrimSuffix(f[1], ":"))
		}
	}
	sort.Strings(links)
	return links
}

func TestSwarmMacvlanServiceAcrossHosts(t *testing.T) {
	n := swarmNetwork(t, "--attachable", "-o", "type=macvlan", "-o", "parent=eth0", "--subnet", "198.19.8.0/24", "--gateway", "198.19.8.254")
	svc := service(t, "--replicas", "6", "--network", n)
	ts := waitTasks(t, svc, 6)
	spreadOverAllHosts(t, ts)
	allReachAll(t, ts)

	// docker run on an attachable swarm network, on a worker: its address
	// comes from the same swarm-wide IPAM.
	c := uniq("run")
	mustHost(t, 3, "run", "-d", "--name", c, "--network", n, image, "sleep", "3600")
	t.Cleanup(func() { _, _ = hostDocker(3, "rm", "-f", c) })
	ip := mustHost(t, 3, "exec", c, "sh", "-c", "ip -4 -o addr show eth0 | awk '{print $4}' | cut -d/ -f1")
	for _, x := range ts {
		if x.ip == ip {
			t.Fatalf("docker run on host 3 got %s, already a task's on host %d", ip, x.host)
		}
	}
	if !ping(task{host: 3, id: c}, ts[0].ip) {
		t.Fatalf("container started with docker run cannot reach task %s", ts[0].ip)
	}

	// Scale down and up: new tasks get unique addresses and reach the rest.
	mustHost(t, 1, "service", "scale", "-d", svc+"=2")
	waitTasks(t, svc, 2)
	mustHost(t, 1, "service", "scale", "-d", svc+"=5")
	allReachAll(t, waitTasks(t, svc, 5))

	// A plugin restart on a worker: its tasks keep working, new ones too.
	mustHost(t, 2, "plugin", "disable", "-f", plugin)
	mustHost(t, 2, "plugin", "enable", plugin)
	mustHost(t, 1, "service", "scale", "-d", svc+"=7")
	allReachAll(t, waitTasks(t, svc, 7))

	// Removing the service and the network cleans every node.
	mustHost(t, 3, "rm", "-f", c)
	removeAndCheckClean(t, []string{svc}, []string{n})
}

// spreadOverAllHosts fails unless the tasks landed on every host.
func spreadOverAllHosts(t *testing.T, ts []task) {
	t.Helper()
	on := map[int]int{}
	for _, x := range ts {
		on[x.host]++
	}
	if len(on) != hosts {
		t.Fatalf("tasks landed on %d hosts (%v), want all %d", len(on), on, hosts)
	}
}

func TestSwarmGlobalServiceAndBadInput(t *testing.T) {
	// The swarm instance refuses what cannot span hosts, and bad options,
	// in AllocateNetwork on the manager. Docker creates swarm networks
	// asynchronously, so `network create` succeeds anyway and the refusal
	// is in the manager's log (and the network never gets tasks).
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--subnet", "198.19.9.0/24"}, "weft's swarm instance needs option type"},
		{[]string{"-o", "type=bridge", "--subnet", "198.19.9.0/24"}, "option type=bridge: unknown network type; this weft instance (scope global) supports: ipvlan, macvlan, overlay"},
		{[]string{"-o", "type=overlay", "-o", "encrypted=maybe", "--subnet", "198.19.9.0/24"}, "option encrypted=\\\"maybe\\\": give -o encrypted"},
		{[]string{"-o", "type=overlay", "-o", "weft.vni=42", "--subnet", "198.19.9.0/24"}, "weft allocates VNIs from 4096 to 16777215; remove the option"},
		{[]string{"-o", "type=overlay", "-o", "mtu=99999", "--subnet", "198.19.9.0/24"}, "mtu"},
		{[]string{"-o", "type=macvlan", "-o", "macvlan_mod=bridge", "--subnet", "198.19.9.0/24"}, `did you mean \"macvlan_mode\"`},
		{[]string{"-o", "type=macvlan", "-o", "rate.egress=fast", "--subnet", "198.19.9.0/24"}, "rate.egress"},
	} {
		id := swarmNetwork(t, c.args...)
		id = mustHost(t, 1, "network", "inspect", "-f", "{{.ID}}", id)
		waitFor(t, 20*time.Second, fmt.Sprintf("%v refused", c.args), func() error {
			return managerLogHas("Failed allocation for network "+id, c.want)
		})
	}
	// Two swarm networks may not share a subnet: the manager's IPAM says so.
	n := swarmNetwork(t, "-o", "type=macvlan", "-o", "parent=eth0", "--subnet", "198.19.10.0/24")
	dup := mustHost(t, 1, "network", "inspect", "-f", "{{.ID}}", swarmNetwork(t, "-o", "type=macvlan", "-o", "parent=eth0", "--subnet", "198.19.10.0/25"))
	waitFor(t, 20*time.Second, "overlapping swarm subnet refused", func() error {
		return managerLogHas("Failed allocation for network "+dup, "overlaps 198.19.10.0/24")
	})
	svc := service(t, "--mode", "global", "--network", n)
	allReachAll(t, waitTasks(t, svc, hosts))
}

// TestSwarmParentMap: a network's parent is renamed per node by the
// PARENT_MAP setting (here the network names an interface no host has).
func TestSwarmParentMap(t *testing.T) {
	setMap := func(v string) {
		for h := 1; h <= hosts; h++ {
			_, _ = hostDocker(h, "plugin", "disable", "-f", plugin)
			mustHost(t, h, "plugin", "set", plugin, "PARENT_MAP="+v)
			mustHost(t, h, "plugin", "enable", plugin)
		}
	}
	setMap("wfswlan=eth0")
	t.Cleanup(func() { setMap("") })
	n := swarmNetwork(t, "-o", "type=macvlan", "-o", "parent=wfswlan", "--subnet", "198.19.11.0/24")
	svc := service(t, "--mode", "global", "--stop-grace-period", "1s", "--network", n)
	ts := waitTasks(t, svc, hosts)
	allReachAll(t, ts)
	if err := hostLogHas(2, "parent renamed by PARENT_MAP", "on_this_node=eth0", "parent=wfswlan"); err != nil {
		t.Error(err)
	}
	// Gone before the map is reset: with the map, not after.
	mustHost(t, 1, "service", "rm", svc)
	waitFor(t, 60*time.Second, "network rm", func() error {
		if out, err := hostDocker(1, "network", "rm", n); err != nil {
			return fmt.Errorf("%s", out)
		}
		return nil
	})
	for h := 1; h <= hosts; h++ {
		h := h
		waitFor(t, 60*time.Second, fmt.Sprintf("network gone from host %d", h), func() error {
			if out, _ := hostDocker(h, "network", "ls", "-q", "--filter", "driver="+plugin); out != "" {
				return fmt.Errorf("still there: %s", out)
			}
			return nil
		})
	}
}

// managerLogHas looks for a line of the manager's dockerd log holding all parts.
func managerLogHas(parts ...string) error { return hostLogHas(1, parts...) }

func waitFor(t *testing.T, timeout time.Duration, what string, fn func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := fn()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %v", what, err)
		}
		time.Sleep(500 * time.Millisecond)
	}
}
