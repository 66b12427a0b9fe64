package driver

import (
	"net"

	"github.com/sirupsen/logrus"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// uplinkPortTypes are the link types whose presence in a bridge makes it a
// host uplink (a NIC, bond, VLAN or team on a bridge such as br0), which
// weft containers must keep reaching, not a bridge of local containers or
// VMs (veths, taps).
var uplinkPortTypes = map[string]bool{"device": true, "bond": true, "vlan": true, "team": true}

// hostBridges lists the host's bridges, other than uplinks, for the
// firewall: weft containers may reach them only through published ports.
// An uplink is a bridge that holds a NIC-like port or carries a default
// route. weft's own bridges are in the list too; Render leaves them out.
func hostBridges() []string {
	links, err := netlink.LinkList()
	if err != nil {
		logrus.WithError(err).Warn("firewall: cannot list links to find the host's bridges; only bridges named like Docker's, libvirt's or CNI's are isolated")
		return nil
	}
	uplink := map[int]bool{}
	for _, l := range links {
		if m := l.Attrs().MasterIndex; m != 0 && uplinkPortTypes[l.Type()] {
			uplink[m] = true
		}
	}
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		routes, err := netlink.RouteListFiltered(fam, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
		if err != nil {
			continue
		}
		for _, r := range routes {
			if !isDefault(r.Dst) {
				continue
			}
			uplink[r.LinkIndex] = true
			for _, nh := range r.MultiPath {
				uplink[nh.LinkIndex] = true
			}
		}
	}
	var out []string
	for _, l := range links {
		if l.Type() == "bridge" && !uplink[l.Attrs().Index] {
			out = append(out, l.Attrs().Name)
		}
	}
	return out
}

func isDefault(dst *net.IPNet) bool {
	if dst == nil {
		return true
	}
	ones, _ := dst.Mask.Size()
	return ones == 0
}

// bridgeEvents reports (coalesced) when a bridge appears or goes, or a
// port that can make a bridge an uplink joins or leaves one, until stop
// closes. If the kernel refuses the subscription the channel never fires
// and the periodic check alone notices new bridges.
func bridgeEvents(stop <-chan struct{}) <-chan struct{} {
	out := make(chan struct{}, 1)
	updates := make(chan netlink.LinkUpdate, 256)
	err := netlink.LinkSubscribeWithOptions(updates, stop, netlink.LinkSubscribeOptions{
		ErrorCallback: func(err error) {
			logrus.WithError(err).Warn("firewall: link notifications failed; new bridges are noticed by the periodic check only")
		},
	})
	if err != nil {
		logrus.WithError(err).Warn("firewall: cannot subscribe to link notifications; new bridges are noticed by the periodic check only")
		return out
	}
	go func() {
		for u := range updates {
			if u.Link == nil {
				continue
			}
			if u.Link.Type() != "bridge" && !uplinkPortTypes[u.Link.Type()] {
				continue
			}
			select {
			case out <- struct{}{}:
			default:
			}
		}
	}()
	return out
}
