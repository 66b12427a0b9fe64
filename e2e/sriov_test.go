package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/weft-net/weft/driver/sriov"
)

// The SR-IOV test needs a NIC this machine does not have, so it builds one:
// a fake sysfs tree (under the plugin's state mount, where the managed
// plugin can read it) whose VF interfaces are real veths. Their peers sit on
// a bridge in a namespace that plays the NIC's embedded switch and the LAN's
// router. The plugin records PF calls (SRIOV_PF=record) instead of sending
// them to hardware, and the test reads that record.
const (
	fakeSysfsHost   = "/var/lib/weft/e2e-sysfs" // as the host sees it
	fakeSysfsPlugin = "/var/lib/weft/e2e-sysfs" // as the plugin sees it (the state mount)
	fakePF          = "wfe2epf"
)

type fakeNIC struct {
	ns, router string
	vfs        []string
	macs       map[string]string // VF -> its MAC before any container
}

func newFakeNIC(t *testing.T, pf string, total, num int, third int) *fakeNIC {
	t.Helper()
	nic := &fakeNIC{ns: uniq("sw"), router: fmt.Sprintf("198.18.%d.254", third), macs: map[string]string{}}
	sh(t, fmt.Sprintf(`ip netns add %[1]s && ip -n %[1]s link add sw type bridge && ip -n %[1]s addr add %[2]s/24 dev sw &&
		ip -n %[1]s link set sw up && ip -n %[1]s link set lo up`, nic.ns, nic.router))
	t.Cleanup(func() { _, _ = exec("ip", "netns", "del", nic.ns) })
	dev := filepath.Join(fakeSysfsHost, "class", "net", pf, "device")
	if err := os.MkdirAll(dev, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(filepath.Join(fakeSysfsHost, "class", "net", pf)) })
	write := func(path, v string) {
		if err := os.WriteFile(path, []byte(v+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(filepath.Join(dev, "sriov_totalvfs"), fmt.Sprint(total))
	write(filepath.Join(dev, "sriov_numvfs"), fmt.Sprint(num))
	write(filepath.Join(fakeSysfsHost, "class", "net", pf, "mtu"), "1500")
	for i := 0; i < total; i++ {
		vf := fmt.Sprintf("%sv%d", pf, i)
		_, _ = exec("ip", "link", "del", vf)
		sh(t, fmt.Sprintf(`ip link add %[1]s type veth peer name p%[2]d netns %[3]s && ip -n %[3]s link set p%[2]d master sw up`, vf, i, nic.ns))
		t.Cleanup(func() { _, _ = exec("ip", "link", "del", vf) })
		if err := os.MkdirAll(filepath.Join(dev, fmt.Sprintf("virtfn%d", i), "net", vf), 0o755); err != nil {
			t.Fatal(err)
		}
		nic.vfs = append(nic.vfs, vf)
		l, err := netlink.LinkByName(vf)
		if err != nil {
			t.Fatal(err)
		}
		nic.macs[vf] = l.Attrs().HardwareAddr.String()
	}
	return nic
}

// setPlugin restarts the plugin with settings (KEY=VALUE ...).
func setPlugin(t *testing.T, settings ...string) {
	t.Helper()
	mustDocker(t, "plugin", "disable", "-f", plugin)
	_, err := docker(append([]string{"plugin", "set", plugin}, settings...)...)
	mustDocker(t, "plugin", "enable", plugin)
	if err != nil {
		t.Fatalf("plugin set %v: %v", settings, err)
	}
}

func pfRecord(t *testing.T) sriov.Record {
	t.Helper()
	r, err := sriov.Load(filepath.Join(fakeSysfsHost, "weft-pf-record.json"))
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// vfOf finds the VF the PF was last told to give mac.
func vfOf(t *testing.T, mac string) (int, sriov.VFConfig) {
	t.Helper()
	r := pfRecord(t)
	for i := len(r.Calls) - 1; i >= 0; i-- {
		if c := r.Calls[i]; c.Op == "set" && c.PF == fakePF && c.Config.MAC == mac {
			return c.VF, c.Config
		}
	}
	t.Fatalf("the PF was never told to give a VF the MAC %s: %+v", mac, r.Calls)
	return 0, sriov.VFConfig{}
}

func TestSRIOV(t *testing.T) {
	if err := os.MkdirAll(fakeSysfsHost, 0o755); err != nil {
		t.Fatal(err)
	}
	_ = os.Remove(filepath.Join(fakeSysfsHost, "weft-pf-record.json"))
	t.Cleanup(func() { _ = os.RemoveAll(fakeSysfsHost) })
	nic := newFakeNIC(t, fakePF, 3, 3, 60)
	setPlugin(t, "SYSFS_ROOT="+fakeSysfsPlugin, "SRIOV_PF=record")
	t.Cleanup(func() { setPlugin(t, "SYSFS_ROOT=auto", "SRIOV_PF=netlink") })

	n := ipamNetwork(t, "-o", "type=sriov", "-o", "parent="+fakePF, "-o", "vlan=30", "-o", "vlan_qos=3", "-o", "trust=on",
		"-o", "max_rate=100", "-o", "link_state=enable", "--subnet", "198.18.60.0/24", "--gateway", nic.router)
	c1 := sleeper(t, "--network", n)
	c2 := sleeper(t, "--network", n)

	// Each container has a VF of its own, configured through the PF.
	mac1 := mustDocker(t, "exec", c1, "cat", "/sys/class/net/eth0/address")
	vf1, cfg := vfOf(t, mac1)
	want := sriov.VFConfig{MAC: mac1, VLAN: 30, QoS: 3, SpoofChk: true, Trust: true, MaxRate: 100, LinkState: "enable"}
	if cfg != want {
		t.Errorf("PF told %+v for VF %d, want %+v", cfg, vf1, want)
	}
	vf2, _ := vfOf(t, mustDocker(t, "exec", c2, "cat", "/sys/class/net/eth0/address"))
	if info := operInfo(t, c1, n); info["weft.sriov.vf"] != fmt.Sprint(vf1) || info["weft.sriov.pf"] != fakePF {
		t.Errorf("operational info %v does not name VF %d of %s", info, vf1, fakePF)
	}
	if vf1 == vf2 {
		t.Fatalf("two containers share VF %d", vf1)
	}
	for _, vf := range []int{vf1, vf2} {
		if linkExists(nic.vfs[vf]) {
			t.Errorf("VF %s is still in the host namespace, not in its container", nic.vfs[vf])
		}
	}
	if !canPing(c1, nic.router) || !canPing(c1, c2) {
		t.Fatal("containers on VFs cannot reach the LAN or each other")
	}

	// The pool is exhausted after the third: a clear error, and nothing kept.
	c3 := sleeper(t, "--network", n)
	extra := uniq("c")
	out, err := docker("run", "-d", "--name", extra, "--network", n, image, "sleep", "60")
	_, _ = docker("rm", "-f", extra)
	if err == nil || !strings.Contains(out, "all 3 VFs of "+fakePF+" are in use") {
		t.Fatalf("a fourth container on 3 VFs: %v %s", err, out)
	}

	// A plugin restart keeps the allocations: the VF freed next is the
	// only one a new container can get.
	mustDocker(t, "plugin", "disable", "-f", plugin)
	mustDocker(t, "plugin", "enable", plugin)
	mustDocker(t, "rm", "-f", c1)
	vf := nic.vfs[vf1]
	eventually(t, 10*time.Second, "VF back on the host", func() error {
		l, err := netlink.LinkByName(vf)
		if err != nil {
			return err
		}
		if l.Attrs().HardwareAddr.String() != nic.macs[vf] {
			return fmt.Errorf("VF %s has MAC %s, want its own %s back", vf, l.Attrs().HardwareAddr, nic.macs[vf])
		}
		return nil
	})
	r := pfRecord(t)
	if got := r.VFs[fmt.Sprintf("%s/%d", fakePF, vf1)]; got.VLAN != 0 || got.Trust || got.MaxRate != 0 || got.LinkState != "auto" {
		t.Errorf("PF settings of VF %d not restored: %+v", vf1, got)
	}
	c4 := sleeper(t, "--network", n)
	if got, _ := vfOf(t, mustDocker(t, "exec", c4, "cat", "/sys/class/net/eth0/address")); got != vf1 {
		t.Errorf("new container got VF %d, want the freed VF %d", got, vf1)
	}
	if !canPing(c4, c3) {
		t.Fatal("container on a reused VF cannot reach its neighbour")
	}

	// All VFs come home when the containers and the network go.
	for _, c := range []string{c2, c3, c4} {
		mustDocker(t, "rm", "-f", c)
	}
	mustDocker(t, "network", "rm", n)
	for _, vf := range nic.vfs {
		l, err := netlink.LinkByName(vf)
		if err != nil {
			t.Errorf("VF %s did not come back: %v", vf, err)
			continue
		}
		if l.Attrs().HardwareAddr.String() != nic.macs[vf] || l.Attrs().MTU != 1500 {
			t.Errorf("VF %s not restored: MAC %s MTU %d", vf, l.Attrs().HardwareAddr, l.Attrs().MTU)
		}
	}
}

func TestSRIOVNumVFsAndBadInput(t *testing.T) {
	if err := os.MkdirAll(fakeSysfsHost, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(fakeSysfsHost) })
	// A PF with no VFs yet; the fake "driver" already shows their
	// interfaces, as a real one does after sriov_numvfs is written.
	newFakeNIC(t, fakePF, 2, 0, 61)
	must := func(path string) string {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(string(b))
	}
	numvfs := filepath.Join(fakeSysfsHost, "class", "net", fakePF, "device", "sriov_numvfs")
	setPlugin(t, "SYSFS_ROOT="+fakeSysfsPlugin, "SRIOV_PF=record")
	t.Cleanup(func() { setPlugin(t, "SYSFS_ROOT=auto", "SRIOV_PF=netlink") })

	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"-o", "type=sriov"}, "type=sriov needs option parent=<PF>"},
		{[]string{"-o", "type=sriov", "-o", "parent=wfe2enopf"}, "option parent=wfe2enopf: no such network interface"},
		{[]string{"-o", "type=sriov", "-o", "parent=" + fakePF}, "has no VFs; add -o numvfs=N (N from 1 to 2)"},
		{[]string{"-o", "type=sriov", "-o", "parent=" + fakePF, "-o", "numvfs=3"}, `numvfs="3": wfe2epf supports 1 to 2 VFs`},
		{[]string{"-o", "type=sriov", "-o", "parent=" + fakePF, "-o", "numvfs=2", "-o", "vlan=4095"}, `vlan="4095": a VLAN ID is 1 to 4094`},
		{[]string{"-o", "type=sriov", "-o", "parent=" + fakePF, "-o", "numvfs=2", "-o", "spoofchk=maybe"}, `spoofchk="maybe": want on or off`},
		{[]string{"-o", "type=sriov", "-o", "parent=" + fakePF, "-o", "numvfs=2", "-o", "min_rate=200", "-o", "max_rate=100"}, "min_rate=200 is above max_rate=100"},
		{[]string{"-o", "type=sriov", "-o", "parent=" + fakePF, "-o", "numvfs=2", "-o", "vlan_qo=1"}, `did you mean "vlan_qos"`},
	} {
		name := uniq("bad")
		out, err := docker(append(append([]string{"network", "create", "-d", plugin, "--ipam-driver", plugin}, c.args...), name)...)
		if err == nil {
			_, _ = docker("network", "rm", name)
			t.Errorf("%v accepted", c.args)
			continue
		}
		if !strings.Contains(out, c.want) {
			t.Errorf("%v: %s; want %q", c.args, out, c.want)
		}
	}
	if got := must(numvfs); got != "0" {
		t.Fatalf("rejected networks changed sriov_numvfs to %s", got)
	}

	n := ipamNetwork(t, "-o", "type=sriov", "-o", "parent="+fakePF, "-o", "numvfs=2", "--subnet", "198.18.61.0/24")
	if got := must(numvfs); got != "2" {
		t.Fatalf("sriov_numvfs = %s after numvfs=2, want 2", got)
	}
	c := sleeper(t, "--network", n)
	if out := mustDocker(t, "exec", c, "ip", "-4", "addr", "show", "eth0"); !strings.Contains(out, "198.18.61.") {
		t.Errorf("container on a created VF has no address: %s", out)
	}
	mustDocker(t, "rm", "-f", c)
	mustDocker(t, "network", "rm", n)
	if got := must(numvfs); got != "0" {
		t.Errorf("sriov_numvfs = %s after the network went, want 0 (weft created the VFs)", got)
	}
}
