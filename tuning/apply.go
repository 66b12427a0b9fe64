package tuning

import (
	"errors"
	"fmt"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/netutil"
)

// Link names the interfaces of one endpoint. At Join the container's
// interface is still in the host namespace (Docker moves it afterwards),
// and its MTU and queue length survive the move.
type Link struct {
	Host  string // host-side veth; "" for types without one (macvlan, ipvlan)
	Cont  string // the interface Docker moves into the container
	IFB   string // name for the IFB device that shapes egress
	Alias string // label for what tuning creates (leftover sweep)
}

// Apply sets s on the endpoint's interfaces. On error nothing it made stays.
func Apply(l Link, s Settings) (err error) {
	if s.MTU == 0 && s.TxQueueLen < 0 && !s.Shaped() {
		return nil // nothing asked: no kernel calls on the common path
	}
	cont, err := netlink.LinkByName(l.Cont)
	if err != nil {
		return fmt.Errorf("tuning: container interface %s: %w", l.Cont, err)
	}
	if s.MTU > 0 {
		if s.MTU > cont.Attrs().MTU {
			return fmt.Errorf("--driver-opt mtu=%d: larger than the network's MTU %d; use at most %d", s.MTU, cont.Attrs().MTU, cont.Attrs().MTU)
		}
		if err := netlink.LinkSetMTU(cont, s.MTU); err != nil {
			return fmt.Errorf("tuning: MTU %d on %s: %w", s.MTU, l.Cont, err)
		}
	}
	if s.TxQueueLen >= 0 {
		if err := netlink.LinkSetTxQLen(cont, s.TxQueueLen); err != nil {
			return fmt.Errorf("tuning: txqueuelen %d on %s: %w", s.TxQueueLen, l.Cont, err)
		}
	}
	if !s.Shaped() || l.Host == "" {
		// Without a host-side device (macvlan, ipvlan) shaping happens
		// inside the container's namespace: see ApplyInside.
		return nil
	}
	host, err := netlink.LinkByName(l.Host)
	if err != nil {
		return fmt.Errorf("tuning: host interface %s: %w", l.Host, err)
	}
	defer func() {
		if err != nil {
			_ = Remove(l)
		}
	}()
	// On the host veth the directions swap: what enters the container
	// leaves the veth (its root TBF); what leaves the container arrives at
	// the veth and is redirected to the IFB.
	return shape(host, s.RateEgress, s.RateIngress, l.IFB, l.Alias, s)
}

func ensureIFB(name, alias string) (netlink.Link, error) {
	ifb, err := netlink.LinkByName(name)
	if err != nil {
		if err := netlink.LinkAdd(&netlink.Ifb{LinkAttrs: netlink.LinkAttrs{Name: name, TxQLen: 1000}}); err != nil {
			return nil, fmt.Errorf("tuning: create IFB %s (CONFIG_IFB): %w", name, err)
		}
		if ifb, err = netlink.LinkByName(name); err != nil {
			return nil, fmt.Errorf("tuning: %w", err)
		}
		_ = netlink.LinkSetAlias(ifb, alias)
	}
	if err := netlink.LinkSetUp(ifb); err != nil {
		return nil, fmt.Errorf("tuning: bring up %s: %w", name, err)
	}
	return ifb, nil
}

// shape puts rate limits on dev: out limits what dev sends (a TBF at its
// root), in limits what it receives (redirected to an IFB with a TBF).
// Used on the host veth (where the container's ingress is the veth's
// egress) and inside containers (on the container's own interface).
func shape(dev netlink.Link, in, out uint64, ifbName, alias string, s Settings) error {
	if out > 0 {
		if err := tbf(dev, out, s); err != nil {
			return fmt.Errorf("tuning: TBF on %s: %w", dev.Attrs().Name, err)
		}
	}
	if in == 0 {
		return nil
	}
	ifb, err := ensureIFB(ifbName, alias)
	if err != nil {
		return err
	}
	if err := tbf(ifb, in, s); err != nil {
		return fmt.Errorf("tuning: TBF on %s: %w", ifbName, err)
	}
	ingress := &netlink.Ingress{QdiscAttrs: netlink.QdiscAttrs{LinkIndex: dev.Attrs().Index, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_INGRESS}}
	// The ingress qdisc cannot be "replaced"; one that exists is fine.
	if err := netlink.QdiscAdd(ingress); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("tuning: ingress qdisc on %s: %w", dev.Attrs().Name, err)
	}
	redirect := &netlink.U32{
		FilterAttrs: netlink.FilterAttrs{LinkIndex: dev.Attrs().Index, Parent: ingress.Handle, Priority: 1, Protocol: unix.ETH_P_ALL},
		ClassId:     netlink.MakeHandle(1, 1),
		Sel:         &netlink.TcU32Sel{Keys: []netlink.TcU32Key{{Mask: 0, Val: 0}}, Flags: netlink.TC_U32_TERMINAL},
		Actions: []netlink.Action{&netlink.MirredAction{ActionAttrs: netlink.ActionAttrs{Action: netlink.TC_ACT_STOLEN},
			MirredAction: netlink.TCA_EGRESS_REDIR, Ifindex: ifb.Attrs().Index}},
	}
	if err := netlink.FilterReplace(redirect); err != nil {
		return fmt.Errorf("tuning: redirect %s to %s: %w", dev.Attrs().Name, ifbName, err)
	}
	return nil
}

// tbf installs a token bucket of rate bits/s as the root qdisc of link.
func tbf(link netlink.Link, rate uint64, s Settings) error {
	bytesPerSec := rate / 8
	burst := s.burst(rate)
	limit := uint64(float64(bytesPerSec)*s.latency().Seconds()) + burst
	q := &netlink.Tbf{
		QdiscAttrs: netlink.QdiscAttrs{LinkIndex: link.Attrs().Index, Handle: netlink.MakeHandle(1, 0), Parent: netlink.HANDLE_ROOT},
		Rate:       bytesPerSec,
		Limit:      uint32(min(limit, maxBurst)),
		Buffer:     netlink.Xmittime(bytesPerSec, uint32(burst)),
	}
	return netlink.QdiscReplace(q)
}

// Remove undoes the shaping of an endpoint; missing pieces are fine.
func Remove(l Link) error {
	var errs []error
	if l.Host != "" {
		if host, err := netlink.LinkByName(l.Host); err == nil {
			qs, _ := netlink.QdiscList(host)
			for _, q := range qs {
				a := q.Attrs()
				if a.Parent == netlink.HANDLE_INGRESS || (a.Parent == netlink.HANDLE_ROOT && q.Type() == "tbf") {
					if err := netlink.QdiscDel(q); err != nil {
						errs = append(errs, fmt.Errorf("tuning: remove %s qdisc on %s: %w", q.Type(), l.Host, err))
					}
				}
			}
		}
	}
	if l.IFB != "" {
		if err := netutil.DeleteLink(l.IFB); err != nil {
			errs = append(errs, fmt.Errorf("tuning: %w", err))
		}
	}
	return errors.Join(errs...)
}

// Shaping reads back what is installed on an endpoint, for checks.
func Shaping(l Link) (ingress, egress uint64) {
	rateOf := func(name string) uint64 {
		link, err := netlink.LinkByName(name)
		if err != nil {
			return 0
		}
		qs, _ := netlink.QdiscList(link)
		for _, q := range qs {
			if t, ok := q.(*netlink.Tbf); ok && t.Parent == netlink.HANDLE_ROOT {
				return t.Rate * 8
			}
		}
		return 0
	}
	if l.Host != "" {
		ingress = rateOf(l.Host)
	}
	if l.IFB != "" {
		egress = rateOf(l.IFB)
	}
	return ingress, egress
}
