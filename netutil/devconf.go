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
