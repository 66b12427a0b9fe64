// Package parent manages the host interface that macvlan and ipvlan
// networks hang their containers' interfaces on: an existing interface, an
// 802.1q sub-interface weft creates for a name like eth0.30, or, when no
// parent is given, a private placeholder so the network is internal.
package parent

import (
	"errors"
	"fmt"
	"net"
	"regexp"
	"strconv"
	"strings"

	"github.com/sirupsen/logrus"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/driver/api"
	"github.com/weft-net/weft/netutil"
)

// State keys a parented network stores.
const (
	StName    = "parent"         // the parent interface name
	StCreated = "parent_created" // "vlan" or "placeholder" when weft made it
)

// Option names shared by macvlan and ipvlan (Docker's).
const (
	OptParent   = "parent"
	OptMTU      = "com.docker.network.driver.mtu"
	OptMTUShort = "mtu"
)

var vlanName = regexp.MustCompile(`^(.+)\.(\d+)$`)

// FeatureError says which kernel feature is missing.
func FeatureError(what, config string) error {
	return fmt.Errorf("weft: %s is not available in this kernel (%s)", what, config)
}

// IsUnsupported reports whether a netlink error means the kernel lacks the link kind.
func IsUnsupported(err error) bool {
	return errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOTSUP) || errors.Is(err, unix.EPROTONOSUPPORT)
}

// Validate checks the parent option and fills n.State[StName]; with no
// parent the network becomes internal with a placeholder parent.
func Validate(n *api.Network, existing []*api.Network) error {
	p := n.Options[OptParent]
	if p == "" {
		n.State[StName] = "wfd" + n.ID[:min(12, len(n.ID))]
		n.State[StCreated] = "placeholder"
		n.Internal = true
		return nil
	}
	if err := api.IfName(OptParent, p); err != nil {
		return err
	}
	if err := Check(p, slaveFix); err != nil {
		return err
	}
	n.State[StName] = p
	// A parent weft created for another network stays weft's: whichever
	// network goes last deletes it.
	for _, u := range Users(n, existing) {
		if c := u.State[StCreated]; c != "" {
			n.State[StCreated] = c
			return nil
		}
	}
	if _, err := netlink.LinkByName(p); err == nil {
		return nil
	}
	m := vlanName.FindStringSubmatch(p)
	if m == nil {
		return fmt.Errorf("option parent=%s: no such interface on this host", p)
	}
	vid, err := strconv.Atoi(m[2])
	if err != nil || vid < 1 || vid > 4094 {
		return fmt.Errorf("option parent=%s: VLAN ID %s must be 1 to 4094", p, m[2])
	}
	if _, err := netlink.LinkByName(m[1]); err != nil {
		return fmt.Errorf("option parent=%s: neither it nor its base interface %s exists on this host", p, m[1])
	}
	n.State[StCreated] = "vlan"
	return nil
}

const slaveFix = "give a physical interface, a bond or a VLAN of one"

// Check refuses a parent that is not weft's to take: a bridge (Docker's or
// weft's) or a port of one, whose macvlan/ipvlan slaves would bypass the
// bridge's isolation; the loopback; or a link weft created for itself (by
// label or by weft's name prefixes). A VLAN, existing or still to be made
// (eth0.30), is judged by its base interface. A parent that does not
// exist passes: the caller says so. fix ends each refusal.
func Check(p, fix string) error {
	return check(p, p, fix, 0)
}

func check(opt, name, fix string, depth int) error {
	refuse := func(why string, a ...any) error {
		return fmt.Errorf("option %s=%s: %s: %s", OptParent, opt, fmt.Sprintf(why, a...), fix)
	}
	of := ""
	if name != opt {
		of = "its base interface "
	}
	switch name {
	case "lo":
		return refuse("%s%s is the loopback interface", of, name)
	case "docker0", "docker_gwbridge":
		return refuse("%s%s is a bridge (Docker's); macvlan/ipvlan slaves of a bridge bypass its isolation", of, name)
	}
	l, err := netlink.LinkByName(name)
	if err != nil {
		if m := vlanName.FindStringSubmatch(name); m != nil && depth < 4 {
			return check(opt, m[1], fix, depth+1)
		}
		return nil
	}
	a := l.Attrs()
	if v, ok := l.(*netlink.Vlan); ok && depth < 4 {
		// weft's own 802.1q sub-interfaces (eth0.30) are valid parents: judge the base.
		if base, err := netlink.LinkByIndex(v.ParentIndex); err == nil {
			if api.WeftStyleName(name) {
				return refuse("%s%s is a name weft gives its own interfaces", of, name)
			}
			return check(opt, base.Attrs().Name, fix, depth+1)
		}
	}
	switch {
	case a.Flags&net.FlagLoopback != 0:
		return refuse("%s%s is the loopback interface", of, name)
	case l.Type() == "bridge":
		return refuse("%s%s is a bridge; macvlan/ipvlan slaves of a bridge bypass its isolation", of, name)
	case api.Labelled(a.Alias):
		return refuse("%s%s is an interface weft created for its own use (label %q)", of, name, a.Alias)
	case api.WeftStyleName(name):
		return refuse("%s%s is a name weft gives its own interfaces", of, name)
	}
	if a.MasterIndex != 0 {
		if m, err := netlink.LinkByIndex(a.MasterIndex); err == nil && m.Type() == "bridge" {
			return refuse("%s%s is a port of bridge %s; macvlan/ipvlan slaves of a bridge port bypass the bridge's isolation", of, name, m.Attrs().Name)
		}
	}
	return nil
}

// MTU validates the MTU option against the parent (which must exist or be
// creatable), returning 0 when none was asked for.
func MTU(n *api.Network) (int, error) {
	mtu, err := api.MTU(n.Options, OptMTU, OptMTUShort)
	if err != nil || mtu == 0 {
		return mtu, err
	}
	name := n.State[StName]
	if n.State[StCreated] == "vlan" {
		name = vlanName.FindStringSubmatch(name)[1]
	}
	if n.State[StCreated] == "placeholder" {
		return mtu, nil
	}
	l, err := netlink.LinkByName(name)
	if err != nil {
		return 0, fmt.Errorf("parent %s: %w", name, err)
	}
	if mtu > l.Attrs().MTU {
		return 0, fmt.Errorf("option %s=%d: larger than the MTU %d of parent %s; use at most %d", OptMTU, mtu, l.Attrs().MTU, name, l.Attrs().MTU)
	}
	return mtu, nil
}

// Users counts the other weft networks on the same parent.
func Users(n *api.Network, existing []*api.Network) []*api.Network {
	var out []*api.Network
	for _, e := range existing {
		if e.ID != n.ID && e.State[StName] == n.State[StName] {
			out = append(out, e)
		}
	}
	return out
}

func alias(scope string, n *api.Network) string {
	return api.AliasPrefix + scope + ":" + n.ID
}

// Ensure creates the parent if weft owns it (802.1q sub-interface or
// placeholder) and brings it up; an existing user interface is only used.
func Ensure(n *api.Network, scope string) error {
	name := n.State[StName]
	l, err := netlink.LinkByName(name)
	if err == nil {
		if l.Attrs().Flags&unix.IFF_UP == 0 {
			if err := netlink.LinkSetUp(l); err != nil {
				return fmt.Errorf("bring up parent %s: %w", name, err)
			}
		}
		return nil
	}
	if !netutil.IsNotFound(err) {
		return fmt.Errorf("look up parent %s: %w", name, err)
	}
	switch n.State[StCreated] {
	case "vlan":
		m := vlanName.FindStringSubmatch(name)
		base, err := netlink.LinkByName(m[1])
		if err != nil {
			return fmt.Errorf("option parent=%s: base interface %s: %w", name, m[1], err)
		}
		vid, _ := strconv.Atoi(m[2])
		v := &netlink.Vlan{LinkAttrs: netlink.LinkAttrs{Name: name, ParentIndex: base.Attrs().Index}, VlanId: vid}
		if err := netlink.LinkAdd(v); err != nil {
			if IsUnsupported(err) {
				return FeatureError("802.1q VLAN", "CONFIG_VLAN_8021Q")
			}
			return fmt.Errorf("create 802.1q sub-interface %s: %w", name, err)
		}
	case "placeholder":
		// A dummy where the kernel has it, else an empty bridge: either is
		// a parent that leads nowhere, which makes the network internal.
		err := netlink.LinkAdd(&netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Name: name}})
		if err != nil && IsUnsupported(err) {
			err = netlink.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name}})
		}
		if err != nil {
			return fmt.Errorf("create placeholder parent %s: %w", name, err)
		}
	default:
		return fmt.Errorf("option parent=%s: no such interface on this host", name)
	}
	l, err = netlink.LinkByName(name)
	if err != nil {
		return fmt.Errorf("look up new parent %s: %w", name, err)
	}
	_ = netlink.LinkSetAlias(l, alias(scope, n))
	if err := netlink.LinkSetUp(l); err != nil {
		return fmt.Errorf("bring up parent %s: %w", name, err)
	}
	logrus.WithFields(logrus.Fields{"network": n.ID[:min(12, len(n.ID))], "parent": name, "kind": n.State[StCreated]}).Info("created parent interface")
	return nil
}

// Release deletes a weft-created parent once no other network uses it; a
// user's interface is never deleted.
func Release(n *api.Network, existing []*api.Network, scope string) error {
	if n.State[StCreated] == "" {
		return nil
	}
	if users := Users(n, existing); len(users) > 0 {
		// Still in use: label it with a remaining owner, or the start-up
		// sweep would take it for a leftover.
		if l, err := netlink.LinkByName(n.State[StName]); err == nil {
			_ = netlink.LinkSetAlias(l, alias(scope, users[0]))
		}
		return nil
	}
	if err := deleteOwned(n.State[StName]); err != nil {
		return fmt.Errorf("remove parent: %w", err)
	}
	return nil
}

// deleteOwned deletes a link weft made, by name, unless it is not weft's
// (no weft label): a device someone made in its place is left alone.
func deleteOwned(name string) error {
	l, err := netlink.LinkByName(name)
	if err != nil {
		if netutil.IsNotFound(err) {
			return nil
		}
		return fmt.Errorf("look up %s: %w", name, err)
	}
	if !api.Labelled(l.Attrs().Alias) {
		logrus.WithField("link", name).Warn("not deleting an interface without weft's label: weft did not create it")
		return nil
	}
	if err := netlink.LinkDel(l); err != nil {
		return fmt.Errorf("delete %s: %w", name, err)
	}
	return nil
}

// Mode parses a mode option against the allowed values.
func Mode(opts map[string]string, key, def string, allowed ...string) (string, error) {
	v := opts[key]
	if v == "" {
		return def, nil
	}
	for _, a := range allowed {
		if v == a {
			return v, nil
		}
	}
	return "", fmt.Errorf("option %s=%s: want one of %s", key, v, strings.Join(allowed, ", "))
}
