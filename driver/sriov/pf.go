package sriov

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"sync"

	"github.com/vishvananda/netlink"
)

// VFConfig is what the PF holds for one VF: the settings weft changes for an
// endpoint and puts back when the endpoint goes.
type VFConfig struct {
	MAC       string `json:"mac"`
	VLAN      int    `json:"vlan"`
	QoS       int    `json:"qos"`
	SpoofChk  bool   `json:"spoofchk"`
	Trust     bool   `json:"trust"`
	MinRate   int    `json:"min_rate"` // Mbit/s, 0 = none
	MaxRate   int    `json:"max_rate"` // Mbit/s, 0 = none
	LinkState string `json:"link_state"`
}

// PF configures VFs through their physical function. The seam lets tests
// (and hosts without SR-IOV hardware) record the calls instead.
type PF interface {
	VF(pf string, vf int) (VFConfig, error)
	SetVF(pf string, vf int, c VFConfig) error
}

// Link states as the kernel numbers them (IFLA_VF_LINK_STATE_*).
var linkStates = map[string]uint32{"auto": 0, "enable": 1, "disable": 2}

func linkStateName(v uint32) string {
	for k, n := range linkStates {
		if n == v {
			return k
		}
	}
	return "auto"
}

// NetlinkPF is the real thing: rtnetlink's IFLA_VF_* attributes on the PF.
type NetlinkPF struct{}

// VF implements PF.
func (NetlinkPF) VF(pf string, vf int) (VFConfig, error) {
	l, err := netlink.LinkByName(pf)
	if err != nil {
		return VFConfig{}, fmt.Errorf("physical function %s: %w", pf, err)
	}
	for _, v := range l.Attrs().Vfs {
		if v.ID != vf {
			continue
		}
		max := int(v.MaxTxRate)
		if max == 0 {
			max = v.TxRate
		}
		return VFConfig{MAC: v.Mac.String(), VLAN: v.Vlan, QoS: v.Qos, SpoofChk: v.Spoofchk, Trust: v.Trust == 1,
			MinRate: int(v.MinTxRate), MaxRate: max, LinkState: linkStateName(v.LinkState)}, nil
	}
	return VFConfig{}, fmt.Errorf("physical function %s reports no VF %d", pf, vf)
}

// SetVF implements PF. Each setting is its own request, so an error names
// the one the device refused.
func (NetlinkPF) SetVF(pf string, vf int, c VFConfig) error {
	l, err := netlink.LinkByName(pf)
	if err != nil {
		return fmt.Errorf("physical function %s: %w", pf, err)
	}
	wrap := func(what string, err error) error {
		if err != nil {
			return fmt.Errorf("set %s of VF %d on %s: %w", what, vf, pf, err)
		}
		return nil
	}
	if c.MAC != "" {
		mac, err := net.ParseMAC(c.MAC)
		if err != nil {
			return fmt.Errorf("VF MAC %q: %w", c.MAC, err)
		}
		if err := wrap("mac "+c.MAC, netlink.LinkSetVfHardwareAddr(l, vf, mac)); err != nil {
			return err
		}
	}
	if err := wrap(fmt.Sprintf("vlan %d qos %d", c.VLAN, c.QoS), netlink.LinkSetVfVlanQos(l, vf, c.VLAN, c.QoS)); err != nil {
		return err
	}
	if err := wrap(fmt.Sprintf("spoofchk %v", c.SpoofChk), netlink.LinkSetVfSpoofchk(l, vf, c.SpoofChk)); err != nil {
		return err
	}
	if err := wrap(fmt.Sprintf("trust %v", c.Trust), netlink.LinkSetVfTrust(l, vf, c.Trust)); err != nil {
		return err
	}
	if err := wrap(fmt.Sprintf("min_tx_rate %d max_tx_rate %d", c.MinRate, c.MaxRate), netlink.LinkSetVfRate(l, vf, c.MinRate, c.MaxRate)); err != nil {
		return err
	}
	st, ok := linkStates[c.LinkState]
	if !ok {
		st = 0
	}
	return wrap("state "+c.LinkState, netlink.LinkSetVfState(l, vf, st))
}

// RecordPF keeps VF settings in a JSON file and logs every call there,
// instead of touching hardware: for tests with a fake sysfs (and for trying
// weft's SR-IOV type on a machine without such a NIC). Selected with the
// plugin setting SRIOV_PF=record.
type RecordPF struct {
	Path string
	mu   sync.Mutex
}

// Record is the file RecordPF writes.
type Record struct {
	VFs   map[string]VFConfig `json:"vfs"` // "<pf>/<vf>"
	Calls []Call              `json:"calls"`
}

// Call is one recorded PF call.
type Call struct {
	Op     string   `json:"op"` // "get" or "set"
	PF     string   `json:"pf"`
	VF     int      `json:"vf"`
	Config VFConfig `json:"config"`
}

// Load reads a record file.
func Load(path string) (Record, error) {
	r := Record{VFs: map[string]VFConfig{}}
	b, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return r, nil
	}
	if err != nil {
		return r, err
	}
	if err := json.Unmarshal(b, &r); err != nil {
		return r, fmt.Errorf("%s: %w", path, err)
	}
	if r.VFs == nil {
		r.VFs = map[string]VFConfig{}
	}
	return r, nil
}

func (p *RecordPF) update(fn func(r *Record)) (Record, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	r, err := Load(p.Path)
	if err != nil {
		return r, err
	}
	fn(&r)
	b, _ := json.MarshalIndent(r, "", " ")
	tmp := p.Path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return r, fmt.Errorf("record PF call: %w", err)
	}
	return r, os.Rename(tmp, p.Path)
}

// VF implements PF: a VF never set reads as a fresh one (spoof checking
// on, link state auto), as on real NICs.
func (p *RecordPF) VF(pf string, vf int) (VFConfig, error) {
	var c VFConfig
	_, err := p.update(func(r *Record) {
		var ok bool
		if c, ok = r.VFs[fmt.Sprintf("%s/%d", pf, vf)]; !ok {
			c = VFConfig{MAC: "00:00:00:00:00:00", SpoofChk: true, LinkState: "auto"}
		}
		r.Calls = append(r.Calls, Call{Op: "get", PF: pf, VF: vf, Config: c})
	})
	return c, err
}

// SetVF implements PF.
func (p *RecordPF) SetVF(pf string, vf int, c VFConfig) error {
	_, err := p.update(func(r *Record) {
		r.VFs[fmt.Sprintf("%s/%d", pf, vf)] = c
		r.Calls = append(r.Calls, Call{Op: "set", PF: pf, VF: vf, Config: c})
	})
	return err
}
