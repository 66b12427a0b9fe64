package netutil

import (
	"encoding/binary"
	"fmt"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// IPv4DevConfRouteLocalnet is IPV4_DEVCONF_ROUTE_LOCALNET from linux/ip.h.
const IPv4DevConfRouteLocalnet = 26

// SetIPv4DevConf sets a per-interface IPv4 setting (what
// /proc/sys/net/ipv4/conf/IF/* shows) over rtnetlink. Managed plugins get a
// read-only /proc/sys; this path needs only CAP_NET_ADMIN.
func SetIPv4DevConf(link netlink.Link, id int, value uint32) error {
	req := nl.NewNetlinkRequest(unix.RTM_SETLINK, unix.NLM_F_ACK)
	msg := nl.NewIfInfomsg(unix.AF_UNSPEC)
	msg.Index = int32(link.Attrs().Index)
	req.AddData(msg)
	spec := nl.NewRtAttr(unix.IFLA_AF_SPEC, nil)
	inet := spec.AddRtAttr(unix.AF_INET, nil)
	conf := inet.AddRtAttr(unix.IFLA_INET_CONF, nil)
	v := make([]byte, 4)
	binary.NativeEndian.PutUint32(v, value)
	conf.AddRtAttr(id, v)
	req.AddData(spec)
	if _, err := req.Execute(unix.NETLINK_ROUTE, 0); err != nil {
		return fmt.Errorf("set IPv4 devconf %d=%d on %s: %w", id, value, link.Attrs().Name, err)
	}
	return nil
}

// IPv4DevConfProxyARP is IPV4_DEVCONF_PROXY_ARP from linux/ip.h.
const IPv4DevConfProxyARP = 3

// ndtmsg is struct ndtmsg from linux/neighbour.h.
type ndtmsg struct{ family uint8 }

func (m ndtmsg) Len() int          { return 4 }
func (m ndtmsg) Serialize() []byte { return []byte{m.family, 0, 0, 0} }

// Attribute numbers from linux/neighbour.h (not in x/sys/unix).
const (
	ndtaName        = 1
	ndtaParms       = 6
	ndtpaIfindex    = 1
	ndtpaProxyDelay = 13
)

// SetARPProxyDelay sets how long the kernel waits before answering a
// proxied ARP request on the link (neigh/IF/proxy_delay, default 0.8 s at
// random); over rtnetlink, since a managed plugin's /proc/sys is read-only.
func SetARPProxyDelay(link netlink.Link, msecs uint64) error {
	req := nl.NewNetlinkRequest(unix.RTM_SETNEIGHTBL, unix.NLM_F_ACK)
	req.AddData(ndtmsg{family: unix.AF_INET})
	req.AddData(nl.NewRtAttr(ndtaName, nl.ZeroTerminated("arp_cache")))
	parms := nl.NewRtAttr(ndtaParms, nil)
	idx := make([]byte, 4)
	binary.NativeEndian.PutUint32(idx, uint32(link.Attrs().Index))
	parms.AddRtAttr(ndtpaIfindex, idx)
	d := make([]byte, 8)
	binary.NativeEndian.PutUint64(d, msecs)
	parms.AddRtAttr(ndtpaProxyDelay, d)
	req.AddData(parms)
	if _, err := req.Execute(unix.NETLINK_ROUTE, 0); err != nil {
		return fmt.Errorf("set ARP proxy_delay on %s: %w", link.Attrs().Name, err)
	}
	return nil
}
