package e2e

import (
	"fmt"
	"reflect"
	"sort"
	"strings"
	"testing"
)

// TestBadInputRejectedCleanly feeds wrong options to docker and checks that
// the docker command fails with a message naming the problem, and that
// nothing was created: no network, no link, no rule, no store record.
func TestBadInputRejectedCleanly(t *testing.T) {
	existing := ipamNetwork(t, "--subnet", "10.90.0.0/24", "-o", "com.docker.network.bridge.name=wfe2etaken")
	victim := sleeper(t, "--network", existing, "--ip", "10.90.0.20")
	_ = victim

	linksBefore := weftLinks()
	rulesBefore := weftRules()
	storeBefore, err := storeCounts()
	if err != nil {
		t.Fatal(err)
	}

	create := func(args ...string) []string {
		return append([]string{"network", "create", "-d", plugin}, args...)
	}
	cases := []struct {
		name string
		args []string
		want []string // substrings of the error
	}{
		{"unknown type", create("-o", "type=bridgee"), []string{"type=bridgee", `did you mean "bridge"`}},
		{"unsupported type", create("-o", "type=overlay"), []string{"type=overlay", "supports: bridge, ipvlan, macvlan"}},
		{"misspelt option", create("-o", "com.docker.network.bridge.enable_ic=true"), []string{`"com.docker.network.bridge.enable_ic"`, `did you mean "com.docker.network.bridge.enable_icc"`}},
		{"unknown option", create("-o", "colour=blue"), []string{`unknown option "colour"`}},
		{"bad bool", create("-o", "com.docker.network.bridge.enable_icc=maybe"), []string{"enable_icc", "true or false"}},
		{"MTU too small", create("-o", "com.docker.network.driver.mtu=50"), []string{"mtu", "68 to 65535"}},
		{"MTU not a number", create("-o", "mtu=big"), []string{"mtu", "68 to 65535"}},
		{"bridge name too long", create("-o", "com.docker.network.bridge.name=a-very-long-bridge-name"), []string{"bridge.name", "1 to 15 letters"}},
		{"bridge name with an iptables wildcard", create("-o", "com.docker.network.bridge.name=weft+"), []string{"bridge.name", "1 to 15 letters"}},
		{"bridge name taken by a host interface", create("-o", "com.docker.network.bridge.name=lo"), []string{"lo already exists"}},
		{"bridge name taken by weft", create("-o", "com.docker.network.bridge.name=wfe2etaken"), []string{"already used by weft network"}},
		{"bad host binding", create("-o", "com.docker.network.bridge.host_binding_ipv4=localhost"), []string{"host_binding_ipv4", "IPv4 address"}},
		{"bad interface prefix", create("-o", "com.docker.network.container_iface_prefix=e/th"), []string{"container_iface_prefix"}},
		{"IPAM: overlapping subnet", create("--ipam-driver", plugin, "--subnet", "10.90.0.0/16"), []string{"10.90.0.0/16", "overlaps"}},
		{"IPAM: ip-range outside subnet", create("--ipam-driver", plugin, "--subnet", "10.91.0.0/24", "--ip-range", "10.92.0.0/25"), []string{"10.92.0.0/25"}}, // Docker itself refuses this one
		{"IPAM: unknown ipam option", create("--ipam-driver", plugin, "--ipam-opt", "flavour=x"), []string{"flavour"}},
		{"IPAM: gateway outside subnet", create("--ipam-driver", plugin, "--subnet", "10.93.0.0/24", "--gateway", "10.94.0.1"), []string{"10.94.0.1"}},
		{"Docker IPAM subnet overlapping a weft network", create("--subnet", "10.90.0.0/25"), []string{"overlaps", "10.90.0.0/24"}},
		{"static address in use", []string{"run", "-d", "--name", uniq("bad"), "--network", existing, "--ip", "10.90.0.20", image, "true"}, []string{"10.90.0.20", "already in use"}},
		{"static address outside the subnet", []string{"run", "-d", "--name", uniq("bad"), "--network", existing, "--ip", "10.99.0.5", image, "true"}, []string{"10.99.0.5"}},
		{"unknown endpoint option", []string{"run", "-d", "--name", uniq("bad"), image, "sleep", "60"}, nil}, // set up below
	}
	// The last case connects a fresh container with a bogus --driver-opt.
	loner := sleeper(t)
	cases[len(cases)-1] = struct {
		name string
		args []string
		want []string
	}{"unknown endpoint option", []string{"network", "connect", "--driver-opt", "speed=fast", existing, loner}, []string{`unknown endpoint option (--driver-opt) "speed"`}}

	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			name := uniq("bad")
			args := c.args
			if args[0] == "network" && args[1] == "create" {
				args = append(args, name)
			} else if args[0] == "run" {
				// run cases carry their own --name; clean up whatever was created
				t.Cleanup(func() { _, _ = docker("rm", "-f", args[3]) })
			}
			out, err := docker(args...)
			if err == nil {
				_, _ = docker("network", "rm", name)
				t.Fatalf("accepted: docker %s\n%s", strings.Join(args, " "), out)
			}
			for _, w := range c.want {
				if !strings.Contains(out, w) {
					t.Errorf("error does not mention %q:\n%s", w, out)
				}
			}
			if o, _ := docker("network", "inspect", name); !strings.Contains(o, "No such network") && !strings.Contains(o, "not found") {
				t.Errorf("network %s exists after a failed create", name)
			}
		})
	}
	// (Docker 20.10 keeps an empty entry in the container's config after a
	// failed connect; what matters is that no interface or endpoint exists.)
	if out := mustDocker(t, "exec", loner, "ip", "-o", "link"); strings.Contains(out, "eth1") {
		t.Errorf("failed connect left an interface in the container: %s", out)
	}
	if c := mustDocker(t, "network", "inspect", "-f", "{{len .Containers}}", existing); c != "1" {
		t.Errorf("network has %s containers after a failed connect, want 1", c)
	}
	if after := weftLinks(); !reflect.DeepEqual(sorted(after), sorted(linksBefore)) {
		t.Errorf("links changed: before %v after %v", linksBefore, after)
	}
	if after := weftRules(); after != rulesBefore {
		t.Errorf("firewall rules changed:\nbefore\n%s\nafter\n%s", rulesBefore, after)
	}
	storeAfter, err := storeCounts()
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(storeAfter, storeBefore) {
		t.Errorf("store records changed: before %v after %v", storeBefore, storeAfter)
	}
	if len(cases) < 15 {
		t.Fatalf("only %d bad-input cases", len(cases))
	}
	fmt.Printf("bad input: %d cases rejected\n", len(cases))
}

func sorted(s []string) []string {
	s = append([]string(nil), s...)
	sort.Strings(s)
	return s
}
