package sriov

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/weft-net/weft/driver/api"
	"github.com/weft-net/weft/internal/nstest"
)

// fakePF writes a fake sysfs tree for a PF with total VFs, of which num
// exist; VF i's interface is vfName(i).
func fakePF(t *testing.T, root, pf string, total, num int, vfName func(int) string) {
	t.Helper()
	dev := filepath.Join(root, "class", "net", pf, "device")
	must(t, os.MkdirAll(dev, 0o755))
	must(t, os.WriteFile(filepath.Join(dev, "sriov_totalvfs"), []byte(fmt.Sprintln(total)), 0o644))
	must(t, os.WriteFile(filepath.Join(dev, "sriov_numvfs"), []byte(fmt.Sprintln(num)), 0o644))
	must(t, os.WriteFile(filepath.Join(root, "class", "net", pf, "mtu"), []byte("1500\n"), 0o644))
	for i := 0; vfName != nil && i < total; i++ {
		must(t, os.MkdirAll(filepath.Join(dev, fmt.Sprintf("virtfn%d", i), "net", vfName(i)), 0o755))
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// recorder is the recording fake PF of the unit tests.
type recorder struct {
	vfs   map[string]VFConfig
	calls []string
	fail  string // SetVF fails when the call's text contains this
}

func (r *recorder) VF(pf string, vf int) (VFConfig, error) {
	r.calls = append(r.calls, fmt.Sprintf("get %s/%d", pf, vf))
	if c, ok := r.vfs[fmt.Sprintf("%s/%d", pf, vf)]; ok {
		return c, nil
	}
	return VFConfig{MAC: "00:00:00:00:00:00", SpoofChk: true, LinkState: "auto"}, nil
}

func (r *recorder) SetVF(pf string, vf int, c VFConfig) error {
	call := fmt.Sprintf("set %s/%d %+v", pf, vf, c)
	r.calls = append(r.calls, call)
	if r.fail != "" && strings.Contains(call, r.fail) {
		return fmt.Errorf("device refused %s", r.fail)
	}
	if r.vfs == nil {
		r.vfs = map[string]VFConfig{}
	}
	r.vfs[fmt.Sprintf("%s/%d", pf, vf)] = c
	return nil
}

func network(opts map[string]string) *api.Network {
	return &api.Network{ID: "n0123456789abcdef", Type: "sriov", Options: opts}
}

func TestValidateRejects(t *testing.T) {
	root := t.TempDir()
	fakePF(t, root, "pf0", 4, 4, func(i int) string { return fmt.Sprintf("pf0v%d", i) })
	fakePF(t, root, "pf1", 4, 0, nil)
	fakePF(t, root, "pf2", 0, 0, nil)
	must(t, os.MkdirAll(filepath.Join(root, "class", "net", "plain0"), 0o755))
	ty := &Type{Sysfs: Sysfs{Root: root}, PF: &recorder{}}
	cases := []struct {
		opts map[string]string
		want string
	}{
		{map[string]string{}, "type=sriov needs option parent=<PF>"},
		{map[string]string{"parent": "nope0"}, "parent=nope0: no such network interface"},
		{map[string]string{"parent": "plain0"}, "not an SR-IOV physical function"},
		{map[string]string{"parent": "pf2"}, "supports no VFs"},
		{map[string]string{"parent": "pf1"}, "has no VFs; add -o numvfs=N (N from 1 to 4)"},
		{map[string]string{"parent": "pf1", "numvfs": "9"}, `numvfs="9": pf1 supports 1 to 4 VFs`},
		{map[string]string{"parent": "pf1", "numvfs": "0"}, `numvfs="0"`},
		{map[string]string{"parent": "pf0", "numvfs": "2"}, "already has 4 VFs"},
		{map[string]string{"parent": "pf0", "vlan": "4095"}, `vlan="4095": a VLAN ID is 1 to 4094`},
		{map[string]string{"parent": "pf0", "vlan": "-1"}, `vlan="-1"`},
		{map[string]string{"parent": "pf0", "vlan": "10", "vlan_qos": "8"}, `vlan_qos="8"`},
		{map[string]string{"parent": "pf0", "vlan_qos": "3"}, "vlan_qos=3 needs option vlan"},
		{map[string]string{"parent": "pf0", "spoofchk": "maybe"}, `spoofchk="maybe": want on or off`},
		{map[string]string{"parent": "pf0", "trust": "yes please"}, `trust="yes please"`},
		{map[string]string{"parent": "pf0", "max_rate": "fast"}, `max_rate="fast": a rate is a whole number of Mbit/s`},
		{map[string]string{"parent": "pf0", "min_rate": "500", "max_rate": "100"}, "min_rate=500 is above max_rate=100"},
		{map[string]string{"parent": "pf0", "link_state": "up"}, `link_state="up": want auto, enable or disable`},
		{map[string]string{"parent": "pf0", "mtu": "9000"}, "larger than the MTU 1500 of pf0"},
		{map[string]string{"parent": "pf0", "mtu": "40"}, "from 68 to 65535"},
		{map[string]string{"parent": "../etc"}, "an interface name is"},
	}
	for _, c := range cases {
		err := ty.Validate(network(c.opts), nil)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: got %v, want an error containing %q", c.opts, err, c.want)
		}
	}
	n := network(map[string]string{"parent": "pf0", "vlan": "30", "vlan_qos": "5", "spoofchk": "off", "trust": "on", "min_rate": "10", "max_rate": "100", "link_state": "enable", "mtu": "1400"})
	if err := ty.Validate(n, nil); err != nil {
		t.Fatalf("valid options rejected: %v", err)
	}
	var c VFConfig
	must(t, json.Unmarshal([]byte(n.State[stConfig]), &c))
	if want := (VFConfig{VLAN: 30, QoS: 5, SpoofChk: false, Trust: true, MinRate: 10, MaxRate: 100, LinkState: "enable"}); c != want {
		t.Errorf("config %+v, want %+v", c, want)
	}
	if n.State[stMTU] != "1400" || n.State[stCreated] != "" {
		t.Errorf("state %v", n.State)
	}
}

func TestEndpointTakesConfiguresAndReturnsVF(t *testing.T) {
	nstest.Run(t, func() {
		root := t.TempDir()
		fakePF(t, root, "pf0", 3, 3, func(i int) string { return fmt.Sprintf("vf%d", i) })
		for i := 0; i < 3; i++ {
			must(t, netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: fmt.Sprintf("vf%d", i), MTU: 1500}, PeerName: fmt.Sprintf("vf%dp", i)}))
		}
		// The host uses VF 0: it is up, so weft must not take it.
		vf0, _ := netlink.LinkByName("vf0")
		must(t, netlink.LinkSetUp(vf0))
		rec := &recorder{vfs: map[string]VFConfig{"pf0/1": {MAC: "00:00:00:00:00:00", VLAN: 7, SpoofChk: true, LinkState: "auto"}}}
		ty := &Type{Sysfs: Sysfs{Root: root}, PF: rec}
		n := network(map[string]string{"parent": "pf0", "vlan": "30", "trust": "on", "max_rate": "100", "mtu": "1400"})
		must(t, ty.Validate(n, nil))
		must(t, ty.CreateNetwork(n, nil))

		ep1 := &api.Endpoint{ID: "e1aaaaaaaaaaaa", MAC: "02:42:0a:00:00:02"}
		must(t, ty.CreateEndpoint(n, ep1))
		if ep1.ContIf != "vf1" || ep1.State[epVF] != "1" {
			t.Fatalf("endpoint got %q (VF %s), want vf1: the lowest free VF that is down", ep1.ContIf, ep1.State[epVF])
		}
		l, _ := netlink.LinkByName("vf1")
		if l.Attrs().HardwareAddr.String() != ep1.MAC || l.Attrs().MTU != 1400 {
			t.Errorf("vf1 has MAC %s MTU %d, want %s 1400", l.Attrs().HardwareAddr, l.Attrs().MTU, ep1.MAC)
		}
		want := VFConfig{MAC: ep1.MAC, VLAN: 30, SpoofChk: true, Trust: true, MaxRate: 100, LinkState: "auto"}
		if got := rec.vfs["pf0/1"]; got != want {
			t.Errorf("PF holds %+v for VF 1, want %+v", got, want)
		}
		ji, _ := ty.Join(n, ep1)
		if ji.SrcName != "vf1" {
			t.Errorf("Join gives %q, want the VF's own name", ji.SrcName)
		}

		ep2 := &api.Endpoint{ID: "e2bbbbbbbbbbbb", MAC: "02:42:0a:00:00:03"}
		must(t, ty.CreateEndpoint(n, ep2))
		ep3 := &api.Endpoint{ID: "e3cccccccccccc", MAC: "02:42:0a:00:00:04"}
		err := ty.CreateEndpoint(n, ep3)
		if err == nil || !strings.Contains(err.Error(), "all 3 VFs of pf0 are in use") {
			t.Fatalf("third endpoint: got %v, want the pool to be exhausted", err)
		}

		// A restarted plugin knows which VFs stored endpoints hold.
		ty2 := &Type{Sysfs: Sysfs{Root: root}, PF: rec}
		must(t, ty2.Reconcile(n, []*api.Endpoint{ep1, ep2}))
		if u := ty2.Used("pf0"); len(u) != 2 || u[1] != ep1.ID || u[2] != ep2.ID {
			t.Errorf("after reconcile used = %v", u)
		}

		// As Docker hands it back: renamed by a namespace that died.
		must(t, netlink.LinkSetName(l, "eth9"))
		must(t, os.Rename(filepath.Join(root, "class/net/pf0/device/virtfn1/net/vf1"), filepath.Join(root, "class/net/pf0/device/virtfn1/net/eth9")))
		must(t, ty.DeleteEndpoint(n, ep1))
		must(t, os.Rename(filepath.Join(root, "class/net/pf0/device/virtfn1/net/eth9"), filepath.Join(root, "class/net/pf0/device/virtfn1/net/vf1")))
		l, err = netlink.LinkByName("vf1")
		if err != nil {
			t.Fatalf("VF 1 not back under its name: %v", err)
		}
		if l.Attrs().HardwareAddr.String() == ep1.MAC || l.Attrs().MTU != 1500 {
			t.Errorf("vf1 not restored: MAC %s MTU %d", l.Attrs().HardwareAddr, l.Attrs().MTU)
		}
		if got := rec.vfs["pf0/1"]; got.VLAN != 7 || got.Trust || got.MaxRate != 0 {
			t.Errorf("PF settings of VF 1 not restored: %+v", got)
		}
		if err := ty.CreateEndpoint(n, ep3); err != nil || ep3.ContIf != "vf1" {
			t.Errorf("freed VF not reused: %v, %q", err, ep3.ContIf)
		}
	})
}

func TestEndpointRollsBackWhenThePFRefuses(t *testing.T) {
	nstest.Run(t, func() {
		root := t.TempDir()
		fakePF(t, root, "pf0", 1, 1, func(i int) string { return "vf0" })
		must(t, netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "vf0"}, PeerName: "vf0p"}))
		before, _ := netlink.LinkByName("vf0")
		rec := &recorder{fail: "Trust:true"}
		ty := &Type{Sysfs: Sysfs{Root: root}, PF: rec}
		n := network(map[string]string{"parent": "pf0", "trust": "on"})
		must(t, ty.Validate(n, nil))
		ep := &api.Endpoint{ID: "e1aaaaaaaaaaaa", MAC: "02:42:0a:00:00:02"}
		err := ty.CreateEndpoint(n, ep)
		if err == nil || !strings.Contains(err.Error(), "device refused") {
			t.Fatalf("got %v", err)
		}
		if len(ty.Used("pf0")) != 0 || ep.State != nil {
			t.Errorf("VF still held after a failed create: %v %v", ty.Used("pf0"), ep.State)
		}
		after, _ := netlink.LinkByName("vf0")
		if after.Attrs().HardwareAddr.String() != before.Attrs().HardwareAddr.String() {
			t.Errorf("MAC changed by a failed create")
		}
		if last := rec.calls[len(rec.calls)-1]; !strings.Contains(last, "Trust:false") {
			t.Errorf("last PF call %q does not restore the VF", last)
		}
	})
}

func TestNumVFsCreatedAndRemovedWithTheLastNetwork(t *testing.T) {
	root := t.TempDir()
	fakePF(t, root, "pf1", 4, 0, nil)
	ty := &Type{Sysfs: Sysfs{Root: root}, PF: &recorder{}, VFWait: 300 * time.Millisecond}
	n := network(map[string]string{"parent": "pf1", "numvfs": "2"})
	must(t, ty.Validate(n, nil))
	// No VF interfaces appear in a fake tree: creation times out and undoes itself.
	err := ty.CreateNetwork(n, nil)
	if err == nil || !strings.Contains(err.Error(), "made 0 VF interfaces") {
		t.Fatalf("got %v", err)
	}
	if num, _ := ty.Sysfs.NumVFs("pf1"); num != 0 {
		t.Errorf("sriov_numvfs left at %d after a failed create", num)
	}
	// With the "driver" making them, it works.
	for i := 0; i < 2; i++ {
		must(t, os.MkdirAll(filepath.Join(root, "class/net/pf1/device", fmt.Sprintf("virtfn%d/net/pf1v%d", i, i)), 0o755))
	}
	must(t, ty.CreateNetwork(n, nil))
	if num, _ := ty.Sysfs.NumVFs("pf1"); num != 2 {
		t.Fatalf("sriov_numvfs = %d, want 2", num)
	}
	n2 := network(map[string]string{"parent": "pf1", "vlan": "5"})
	n2.ID = "n2222222222222"
	must(t, ty.Validate(n2, []*api.Network{n}))
	if n2.State[stCreated] != "2" {
		t.Errorf("second network does not share ownership of the VFs: %v", n2.State)
	}
	must(t, ty.DeleteNetwork(n, []*api.Network{n2}))
	if num, _ := ty.Sysfs.NumVFs("pf1"); num != 2 {
		t.Errorf("VFs removed while network 2 uses them")
	}
	must(t, ty.DeleteNetwork(n2, nil))
	if num, _ := ty.Sysfs.NumVFs("pf1"); num != 0 {
		t.Errorf("sriov_numvfs = %d after the last network, want 0", num)
	}
}

func TestRecordPFPersistsAndLogs(t *testing.T) {
	p := &RecordPF{Path: filepath.Join(t.TempDir(), "rec.json")}
	c, err := p.VF("pf0", 3)
	must(t, err)
	if !c.SpoofChk || c.LinkState != "auto" {
		t.Errorf("fresh VF reads %+v", c)
	}
	must(t, p.SetVF("pf0", 3, VFConfig{VLAN: 30}))
	p2 := &RecordPF{Path: p.Path}
	c, err = p2.VF("pf0", 3)
	must(t, err)
	if c.VLAN != 30 {
		t.Errorf("setting not kept across instances: %+v", c)
	}
	r, err := Load(p.Path)
	must(t, err)
	if len(r.Calls) != 3 || r.Calls[1].Op != "set" || r.Calls[1].Config.VLAN != 30 {
		t.Errorf("calls %+v", r.Calls)
	}
}

func TestNetlinkPFRefusesANonPF(t *testing.T) {
	nstest.Run(t, func() {
		must(t, netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "notpf"}, PeerName: "notpfp"}))
		err := NetlinkPF{}.SetVF("notpf", 0, VFConfig{MAC: "02:00:00:00:00:01", LinkState: "auto"})
		if err == nil || !strings.Contains(err.Error(), "of VF 0 on notpf") {
			t.Errorf("got %v, want the refused setting named", err)
		}
		if _, err := (NetlinkPF{}).VF("notpf", 0); err == nil || !strings.Contains(err.Error(), "reports no VF 0") {
			t.Errorf("got %v", err)
		}
		if _, err := (NetlinkPF{}).VF("missing0", 0); err == nil {
			t.Errorf("missing PF accepted")
		}
	})
}
