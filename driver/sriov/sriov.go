// Package sriov is weft's SR-IOV network type: each endpoint gets a free
// virtual function (VF) of a physical function (PF), configured through
// the PF (MAC, VLAN, spoof checking, trust, rates, link state), which
// Docker moves into the container. When the endpoint goes, Docker hands the
// VF back and weft restores what it changed, so the VF returns to the pool.
package sriov

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/driver/api"
	"github.com/weft-net/weft/driver/parent"
	"github.com/weft-net/weft/firewall"
)

// Option names. vlan, vlan_qos, spoofchk, trust, min_rate, max_rate and
// link_state are those of `ip link set <pf> vf <n>` (and of the CNI
// sriov plugin); rates are in Mbit/s.
const (
	OptNumVFs    = "numvfs"
	OptVLAN      = "vlan"
	OptQoS       = "vlan_qos"
	OptSpoofChk  = "spoofchk"
	OptTrust     = "trust"
	OptMinRate   = "min_rate"
	OptMaxRate   = "max_rate"
	OptLinkState = "link_state"
)

// Network state keys.
const (
	stPF      = "pf"
	stCreated = "numvfs_created" // the count weft wrote to sriov_numvfs
	stMTU     = "mtu"
	stConfig  = "vf_config" // JSON VFConfig without the MAC
)

// Endpoint state keys: the VF taken and what it was before.
const (
	epVF        = "vf"
	epVFName    = "vf_name"
	epOrigMAC   = "orig_mac"
	epOrigMTU   = "orig_mtu"
	epOrigTxQ   = "orig_txqlen"
	epOrigPFCfg = "orig_pf_config"
)

// Type implements api.NetworkType for SR-IOV.
type Type struct {
	Sysfs Sysfs
	PF    PF
	// VFWait is how long to wait for VFs to appear after writing
	// sriov_numvfs (drivers create them asynchronously).
	VFWait time.Duration

	mu   sync.Mutex
	used map[string]map[int]string // PF -> VF index -> endpoint ID
}

// Name implements api.NetworkType.
func (t *Type) Name() string { return "sriov" }

// Options implements api.NetworkType.
func (t *Type) Options() []string {
	return []string{parent.OptParent, OptNumVFs, OptVLAN, OptQoS, OptSpoofChk, OptTrust, OptMinRate, OptMaxRate,
		OptLinkState, parent.OptMTU, parent.OptMTUShort}
}

func intOpt(opts map[string]string, key string, lo, hi int, what string) (int, bool, error) {
	v, ok := opts[key]
	if !ok || v == "" {
		return 0, false, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < lo || n > hi {
		return 0, false, fmt.Errorf("option %s=%q: %s", key, v, what)
	}
	return n, true, nil
}

func onOff(opts map[string]string, key string, def bool) (bool, error) {
	switch strings.ToLower(opts[key]) {
	case "":
		return def, nil
	case "on", "true", "1":
		return true, nil
	case "off", "false", "0":
		return false, nil
	}
	return def, fmt.Errorf("option %s=%q: want on or off", key, opts[key])
}

// config parses the VF settings of a network's options.
func config(opts map[string]string) (VFConfig, error) {
	c := VFConfig{SpoofChk: true, LinkState: "auto"}
	var err error
	if c.VLAN, _, err = intOpt(opts, OptVLAN, 0, 4094, "a VLAN ID is 1 to 4094 (0 = untagged)"); err != nil {
		return c, err
	}
	var qosSet bool
	if c.QoS, qosSet, err = intOpt(opts, OptQoS, 0, 7, "an 802.1p priority is 0 to 7"); err != nil {
		return c, err
	}
	if qosSet && c.QoS > 0 && c.VLAN == 0 {
		return c, fmt.Errorf("option %s=%d needs option %s: the priority travels in the VLAN tag", OptQoS, c.QoS, OptVLAN)
	}
	if c.SpoofChk, err = onOff(opts, OptSpoofChk, true); err != nil {
		return c, err
	}
	if c.Trust, err = onOff(opts, OptTrust, false); err != nil {
		return c, err
	}
	const rateWhat = "a rate is a whole number of Mbit/s (e.g. 1000 for 1 Gbit/s), 0 for none"
	if c.MinRate, _, err = intOpt(opts, OptMinRate, 0, 1<<31-1, rateWhat); err != nil {
		return c, err
	}
	if c.MaxRate, _, err = intOpt(opts, OptMaxRate, 0, 1<<31-1, rateWhat); err != nil {
		return c, err
	}
	if c.MaxRate > 0 && c.MinRate > c.MaxRate {
		return c, fmt.Errorf("option %s=%d is above %s=%d: the guaranteed rate cannot exceed the cap", OptMinRate, c.MinRate, OptMaxRate, c.MaxRate)
	}
	if v := opts[OptLinkState]; v != "" {
		if _, ok := linkStates[v]; !ok {
			return c, fmt.Errorf("option %s=%q: want auto, enable or disable", OptLinkState, v)
		}
		c.LinkState = v
	}
	return c, nil
}

// SkipGateway implements api.GatewaySkipper: as for macvlan, an
// --internal network needs no gateway address.
func (t *Type) SkipGateway(_ map[string]string, internal bool) (v4, v6 bool, err error) {
	return internal, internal, nil
}

// Validate implements api.NetworkType.
func (t *Type) Validate(n *api.Network, existing []*api.Network) error {
	n.State = map[string]string{}
	pf := n.Options[parent.OptParent]
	if pf == "" {
		return fmt.Errorf("type=sriov needs option parent=<PF>: the physical function whose VFs the containers get (e.g. -o parent=ens1f0)")
	}
	if err := api.IfName(parent.OptParent, pf); err != nil {
		return err
	}
	if err := parent.Check(pf, "give the PF of an SR-IOV NIC"); err != nil {
		return err
	}
	n.State[stPF] = pf
	c, err := config(n.Options)
	if err != nil {
		return err
	}
	raw, _ := json.Marshal(c)
	n.State[stConfig] = string(raw)

	total, err := t.Sysfs.TotalVFs(pf)
	if errors.Is(err, ErrNoPF) {
		return fmt.Errorf("option parent=%s: no such network interface on this host", pf)
	}
	if errors.Is(err, ErrNotSRIOV) {
		return fmt.Errorf("option parent=%s: %s is not an SR-IOV physical function (sysfs has no sriov_totalvfs for it); give the PF of an SR-IOV NIC", pf, pf)
	}
	if err != nil {
		return err
	}
	if total == 0 {
		return fmt.Errorf("option parent=%s: %s supports no VFs (sriov_totalvfs is 0); enable SR-IOV in the NIC's firmware or BIOS", pf, pf)
	}
	cur, err := t.Sysfs.NumVFs(pf)
	if err != nil {
		return err
	}
	want, set, err := intOpt(n.Options, OptNumVFs, 1, total, fmt.Sprintf("%s supports 1 to %d VFs", pf, total))
	if err != nil {
		return err
	}
	switch {
	case !set && cur == 0:
		return fmt.Errorf("option parent=%s: %s has no VFs; add -o %s=N (N from 1 to %d) to create them", pf, pf, OptNumVFs, total)
	case set && cur > 0 && want != cur:
		return fmt.Errorf("option %s=%d: %s already has %d VFs and the kernel cannot change one count into another; leave out %s to use them", OptNumVFs, want, pf, cur, OptNumVFs)
	case set && cur == 0:
		n.State[stCreated] = strconv.Itoa(want)
	}
	// VFs weft created for another network stay weft's: whichever network
	// goes last removes them.
	for _, u := range users(n, existing) {
		if c := u.State[stCreated]; c != "" {
			n.State[stCreated] = c
		}
	}
	mtu, err := api.MTU(n.Options, parent.OptMTU, parent.OptMTUShort)
	if err != nil {
		return err
	}
	if max := t.Sysfs.MTU(pf); mtu > 0 && max > 0 && mtu > max {
		return fmt.Errorf("option %s=%d: larger than the MTU %d of %s; use at most %d", parent.OptMTU, mtu, max, pf, max)
	}
	if mtu > 0 {
		n.State[stMTU] = strconv.Itoa(mtu)
	}
	return nil
}

func users(n *api.Network, existing []*api.Network) []*api.Network {
	var out []*api.Network
	for _, e := range existing {
		if e.ID != n.ID && e.Type == "sriov" && e.State[stPF] == n.State[stPF] {
			out = append(out, e)
		}
	}
	return out
}

// ensureVFs writes sriov_numvfs when weft owns the VFs and the PF has none
// (a new network, or after a reboot), and waits for their interfaces.
func (t *Type) ensureVFs(n *api.Network) error {
	want, _ := strconv.Atoi(n.State[stCreated])
	if want == 0 {
		return nil
	}
	pf := n.State[stPF]
	cur, err := t.Sysfs.NumVFs(pf)
	if err != nil || cur > 0 {
		return err
	}
	if err := t.Sysfs.SetNumVFs(pf, want); err != nil {
		return err
	}
	deadline := time.Now().Add(t.VFWait)
	for {
		vfs, err := t.Sysfs.VFs(pf)
		if err == nil && len(vfs) >= want {
			break
		}
		if time.Now().After(deadline) {
			_ = t.Sysfs.SetNumVFs(pf, 0)
			return fmt.Errorf("option %s=%d: %s made %d VF interfaces within %s; is a VF driver loaded?", OptNumVFs, want, pf, len(vfs), t.VFWait)
		}
		time.Sleep(100 * time.Millisecond)
	}
	logrus.WithFields(logrus.Fields{"network": short(n.ID), "pf": pf, "numvfs": want}).Info("created VFs")
	return nil
}

// CreateNetwork implements api.NetworkType.
func (t *Type) CreateNetwork(n *api.Network, _ []*api.Network) error {
	return t.ensureVFs(n)
}

// DeleteNetwork implements api.NetworkType: VFs weft created go with the
// last network on the PF.
func (t *Type) DeleteNetwork(n *api.Network, others []*api.Network) error {
	if n.State[stCreated] == "" || len(users(n, others)) > 0 {
		return nil
	}
	return t.Sysfs.SetNumVFs(n.State[stPF], 0)
}

// take reserves the lowest free VF of pf for an endpoint: one no endpoint
// holds, whose interface is in this namespace and down (a VF the host has
// brought up is the host's).
func (t *Type) take(pf, epID string) (int, netlink.Link, error) {
	vfs, err := t.Sysfs.VFs(pf)
	if err != nil {
		return 0, nil, err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.used == nil {
		t.used = map[string]map[int]string{}
	}
	if t.used[pf] == nil {
		t.used[pf] = map[int]string{}
	}
	best := -1
	var bestLink netlink.Link
	for idx, name := range vfs {
		if _, busy := t.used[pf][idx]; busy || (best >= 0 && idx > best) {
			continue
		}
		l, err := netlink.LinkByName(name)
		if err != nil || l.Attrs().Flags&unix.IFF_UP != 0 {
			continue
		}
		best, bestLink = idx, l
	}
	if best < 0 {
		return 0, nil, fmt.Errorf("option parent=%s: all %d VFs of %s are in use (weft takes only VFs that are down and not given to another container); free one, or create the network with more VFs (%s)",
			pf, len(vfs), pf, OptNumVFs)
	}
	t.used[pf][best] = epID
	return best, bestLink, nil
}

func (t *Type) free(pf string, idx int, epID string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.used[pf] != nil && t.used[pf][idx] == epID {
		delete(t.used[pf], idx)
	}
}

// CreateEndpoint implements api.NetworkType.
func (t *Type) CreateEndpoint(n *api.Network, ep *api.Endpoint) (err error) {
	pf := n.State[stPF]
	var c VFConfig
	if err := json.Unmarshal([]byte(n.State[stConfig]), &c); err != nil {
		return fmt.Errorf("network %.12s: stored VF settings: %w", n.ID, err)
	}
	mac, err := net.ParseMAC(ep.MAC)
	if err != nil {
		return fmt.Errorf("MAC address %q: %w", ep.MAC, err)
	}
	idx, l, err := t.take(pf, ep.ID)
	if err != nil {
		return err
	}
	log := logrus.WithFields(logrus.Fields{"network": short(n.ID), "endpoint": short(ep.ID), "pf": pf, "vf": idx, "vf_name": l.Attrs().Name})
	orig, err := t.PF.VF(pf, idx)
	if err != nil {
		t.free(pf, idx, ep.ID)
		return err
	}
	ep.State = map[string]string{
		epVF: strconv.Itoa(idx), epVFName: l.Attrs().Name, epOrigMAC: l.Attrs().HardwareAddr.String(),
		epOrigMTU: strconv.Itoa(l.Attrs().MTU), epOrigTxQ: strconv.Itoa(l.Attrs().TxQLen),
	}
	raw, _ := json.Marshal(orig)
	ep.State[epOrigPFCfg] = string(raw)
	defer func() {
		if err != nil {
			t.restore(n, ep, log)
			ep.State = nil
		}
	}()
	c.MAC = mac.String()
	if err := t.PF.SetVF(pf, idx, c); err != nil {
		return err
	}
	// The VF's own address too: Docker sets it again inside, but some VF
	// drivers only pick up the PF-assigned MAC when the netdev agrees.
	if err := netlink.LinkSetHardwareAddr(l, mac); err != nil {
		return fmt.Errorf("set MAC %s on VF %s: %w", mac, l.Attrs().Name, err)
	}
	if m := n.State[stMTU]; m != "" {
		mtu, _ := strconv.Atoi(m)
		if err := netlink.LinkSetMTU(l, mtu); err != nil {
			return fmt.Errorf("set MTU %d on VF %s: %w", mtu, l.Attrs().Name, err)
		}
	}
	ep.ContIf = l.Attrs().Name
	log.WithField("vf_config", fmt.Sprintf("%+v", c)).Info("VF given to endpoint")
	return nil
}

// restore puts a VF back the way the endpoint found it and frees it.
// Docker has moved it back to the host under its own name by now; a VF
// that came back from a namespace that died is found through sysfs.
func (t *Type) restore(n *api.Network, ep *api.Endpoint, log *logrus.Entry) error {
	if ep.State == nil || ep.State[epVF] == "" {
		return nil
	}
	pf := n.State[stPF]
	idx, _ := strconv.Atoi(ep.State[epVF])
	defer t.free(pf, idx, ep.ID)
	var errs []error
	var orig VFConfig
	if err := json.Unmarshal([]byte(ep.State[epOrigPFCfg]), &orig); err == nil {
		if err := t.PF.SetVF(pf, idx, orig); err != nil {
			errs = append(errs, err)
		}
	}
	name := ep.State[epVFName]
	l, err := netlink.LinkByName(name)
	if err != nil {
		if vfs, e := t.Sysfs.VFs(pf); e == nil && vfs[idx] != "" {
			l, err = netlink.LinkByName(vfs[idx])
		}
	}
	if err != nil {
		// Still in a container (or gone with it): the PF side is restored;
		// the netdev cannot be reached from here.
		log.WithError(err).Warn("VF interface not found in the host namespace; its PF settings are restored")
		return errors.Join(errs...)
	}
	_ = netlink.LinkSetDown(l)
	if l.Attrs().Name != name {
		if err := netlink.LinkSetName(l, name); err != nil {
			errs = append(errs, fmt.Errorf("rename VF %s back to %s: %w", l.Attrs().Name, name, err))
		}
	}
	if mac, err := net.ParseMAC(ep.State[epOrigMAC]); err == nil && mac.String() != l.Attrs().HardwareAddr.String() {
		if err := netlink.LinkSetHardwareAddr(l, mac); err != nil {
			errs = append(errs, fmt.Errorf("restore MAC of VF %s: %w", name, err))
		}
	}
	if mtu, _ := strconv.Atoi(ep.State[epOrigMTU]); mtu > 0 && mtu != l.Attrs().MTU {
		if err := netlink.LinkSetMTU(l, mtu); err != nil {
			errs = append(errs, fmt.Errorf("restore MTU of VF %s: %w", name, err))
		}
	}
	if q, _ := strconv.Atoi(ep.State[epOrigTxQ]); q > 0 && q != l.Attrs().TxQLen {
		_ = netlink.LinkSetTxQLen(l, q)
	}
	log.Info("VF restored and returned to the pool")
	return errors.Join(errs...)
}

// DeleteEndpoint implements api.NetworkType. Docker has taken the VF out
// of the container (after Leave, before this call), so this is where it
// is restored and freed.
func (t *Type) DeleteEndpoint(n *api.Network, ep *api.Endpoint) error {
	log := logrus.WithFields(logrus.Fields{"network": short(n.ID), "endpoint": short(ep.ID), "pf": n.State[stPF], "vf": ep.State[epVF]})
	return t.restore(n, ep, log)
}

// Join implements api.NetworkType.
func (t *Type) Join(n *api.Network, ep *api.Endpoint) (*api.JoinInfo, error) {
	ji := &api.JoinInfo{SrcName: ep.State[epVFName], DstPrefix: "eth", DisableGatewayService: n.Internal}
	ji.Gateway, ji.GatewayIPv6 = api.Gateways(n, ep)
	return ji, nil
}

// Leave implements api.NetworkType: the VF is still in the container;
// Docker moves it back next, and DeleteEndpoint restores it.
func (t *Type) Leave(*api.Network, *api.Endpoint) error { return nil }

// Reconcile implements api.NetworkType: re-creates VFs weft made (after a
// reboot) and takes back the VFs stored endpoints hold.
func (t *Type) Reconcile(n *api.Network, eps []*api.Endpoint) error {
	err := t.ensureVFs(n)
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.used == nil {
		t.used = map[string]map[int]string{}
	}
	pf := n.State[stPF]
	if t.used[pf] == nil {
		t.used[pf] = map[int]string{}
	}
	for _, ep := range eps {
		if v := ep.State[epVF]; v != "" {
			idx, _ := strconv.Atoi(v)
			t.used[pf][idx] = ep.ID
		}
	}
	return err
}

// Describe implements api.Describer: which VF the endpoint holds.
func (t *Type) Describe(n *api.Network, ep *api.Endpoint) map[string]string {
	if ep.State[epVF] == "" {
		return nil
	}
	return map[string]string{"weft.sriov.pf": n.State[stPF], "weft.sriov.vf": ep.State[epVF], "weft.sriov.vf_name": ep.State[epVFName]}
}

// Firewall implements api.NetworkType: VF traffic bypasses the host.
func (t *Type) Firewall(*api.Network, []*api.Endpoint) *firewall.Network { return nil }

func short(id string) string { return id[:min(12, len(id))] }

// Used reports which endpoint holds each VF of pf (for tests and logs).
func (t *Type) Used(pf string) map[int]string {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := map[int]string{}
	for k, v := range t.used[pf] {
		out[k] = v
	}
	return out
}
