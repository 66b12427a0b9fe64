package tuning

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"sort"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/netutil"
)

// Prefixes of the options that are applied inside the container's
// namespace, after Docker has moved the interface there (a moved interface
// loses its per-interface settings, so they cannot be set before).
const (
	PrefixSysctl  = "sysctl."
	PrefixOffload = "offload."
	// IfNamePlaceholder in a sysctl key stands for the container-side name
	// of the endpoint's interface (eth0, eth1, ...).
	IfNamePlaceholder = "IFNAME"
)

// IsInsideKey reports whether an option key is a sysctl.* or offload.* key.
func IsInsideKey(k string) bool {
	return strings.HasPrefix(k, PrefixSysctl) || strings.HasPrefix(k, PrefixOffload)
}

var (
	// Anchored: net.<segments>, no empty segment (so no ".."), no '/'.
	sysctlKey = regexp.MustCompile(`^net(\.[A-Za-z0-9_-]+)+$`)
	// Per-interface keys may use IFNAME, and only in the interface position.
	ifnameKey   = regexp.MustCompile(`^net\.ipv[46]\.(conf|neigh)\.IFNAME\.[A-Za-z0-9_-]+$`)
	sysctlValue = regexp.MustCompile(`^[A-Za-z0-9 _.:,-]{1,128}$`)
)

// canonicalIfname writes the IFNAME of a per-interface sysctl key in
// capitals: the docker CLI lowercases the keys (and values) of
// `docker run --network name=N,driver-opt=K=V`, so IFNAME arrives as
// ifname there.
func canonicalIfname(k string) string {
	parts := strings.Split(k, ".")
	if len(parts) > 5 && parts[0]+"."+parts[1] == PrefixSysctl+"net" && (parts[2] == "ipv4" || parts[2] == "ipv6") &&
		(parts[3] == "conf" || parts[3] == "neigh") && strings.EqualFold(parts[4], IfNamePlaceholder) {
		parts[4] = IfNamePlaceholder
		return strings.Join(parts, ".")
	}
	return k
}

func parseInside(s *Settings, network, endpoint map[string]string) error {
	merged := map[string]string{}
	what := map[string]string{}
	for k, v := range network {
		if IsInsideKey(k) {
			merged[canonicalIfname(k)], what[canonicalIfname(k)] = v, "option "+k
		}
	}
	for k, v := range endpoint {
		if IsInsideKey(k) {
			merged[canonicalIfname(k)], what[canonicalIfname(k)] = v, "--driver-opt "+k
		}
	}
	keys := make([]string, 0, len(merged))
	for k := range merged {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		v := merged[k]
		if name, ok := strings.CutPrefix(k, PrefixOffload); ok {
			if _, known := offloads[name]; !known {
				return fmt.Errorf("%s: unknown offload; valid: %s", what[k], strings.Join(offloadNames(), ", "))
			}
			on, err := onOff(v)
			if err != nil {
				return fmt.Errorf("%s=%q: %w", what[k], v, err)
			}
			if s.Offloads == nil {
				s.Offloads = map[string]bool{}
			}
			s.Offloads[name] = on
			continue
		}
		key := strings.TrimPrefix(k, PrefixSysctl)
		if !strings.HasPrefix(key, "net.") && key != "net" {
			return fmt.Errorf("%s: only net.* sysctls can be set: they are the ones namespaced to the container", what[k])
		}
		if !sysctlKey.MatchString(key) {
			return fmt.Errorf("%s: not a valid sysctl name (net.<name>.<name>..., letters, digits, '_' and '-')", what[k])
		}
		if strings.Contains(key, IfNamePlaceholder) && !ifnameKey.MatchString(key) {
			return fmt.Errorf("%s: IFNAME may only stand for the interface in net.ipv4/ipv6.conf/neigh.IFNAME.<name>", what[k])
		}
		if !sysctlValue.MatchString(v) {
			return fmt.Errorf("%s=%q: a sysctl value is 1 to 128 letters, digits, spaces or '_.:,-'", what[k], v)
		}
		if s.Sysctls == nil {
			s.Sysctls = map[string]string{}
		}
		s.Sysctls[key] = v
	}
	return nil
}

func onOff(v string) (bool, error) {
	switch strings.ToLower(v) {
	case "on", "true", "1":
		return true, nil
	case "off", "false", "0":
		return false, nil
	}
	return false, errors.New("want on or off")
}

// Inside is where ApplyInside finds things.
type Inside struct {
	// HostRoot is prefixed to the sandbox path. "" when running on the
	// host itself; "auto" in a managed plugin (which shares the host's PID
	// namespace): the root of the dockerd whose view holds the sandbox,
	// /proc/<dockerd pid>/root, which also gives a writable /proc/sys.
	HostRoot string
	// ProcSys is a writable /proc/sys ("" = HostRoot's): net sysctls
	// written there apply to the namespace of the writing thread.
	ProcSys string
	Timeout time.Duration
}

// roots lists the host roots to look for a sandbox in.
func (in Inside) roots() []string {
	if in.HostRoot == "" {
		return []string{"/"}
	}
	if in.HostRoot != "auto" {
		return []string{in.HostRoot}
	}
	return netutil.DockerdRoots()
}

const nsfsMagic = 0x6e736673

// ApplyInside waits for the container's namespace and interface (for a new
// container on Docker 20.10 neither exists yet at Join), then applies
// offloads and sysctls there and reads them back. It returns what it
// applied. Where the namespace exists at Join (Docker 28+), Prepare and
// Pending.Finish do this instead, and in time for the container's first
// command.
//
// id is the interface as it was at Join. Docker renames it right after
// the move (eth0, eth1, ... or the endpoint's
// com.docker.network.endpoint.ifname), so until then it is not ready; after
// that, whereIs tells it apart from the container's other interfaces, also
// from ipvlan twins with the same MAC.
//
// shapeIFB, when set, asks for the rate limits to be applied inside too (for
// types without a host-side device), with an IFB of that name for ingress.
func (in Inside) ApplyInside(sandbox string, id Ident, s Settings, shapeIFB string) (string, error) {
	if len(s.Sysctls) == 0 && len(s.Offloads) == 0 && shapeIFB == "" {
		return "", nil
	}
	deadline := time.Now().Add(in.Timeout)
	var ns netns.NsHandle
	var ifname, root string
	for found := false; !found; {
		var err error
		roots := in.roots()
		if len(roots) == 0 {
			err = errors.New("no dockerd process found to reach container namespaces through")
		}
		for _, r := range roots {
			if ns, ifname, err = in.find(r, sandbox, id); err == nil {
				root, found = r, true
				break
			}
		}
		if found {
			break
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("tuning: gave up after %s waiting for the container's interface: %w", in.Timeout, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	defer ns.Close()
	if in.ProcSys == "" {
		in.ProcSys = filepath.Join(root, "proc/sys")
	}
	var applied []string
	err := inNetNS(ns, func() (err error) {
		applied, err = in.applyHere(ifname, s, shapeIFB)
		return err
	})
	return strings.Join(applied, " "), err
}

// inNetNS runs fn on an OS thread switched into ns (for /proc/sys writes,
// which apply to the writing thread's namespace, and ethtool ioctls). The
// thread is locked while it is switched, and thrown away (never unlocked)
// if switching back fails, so no other goroutine ever runs in ns.
func inNetNS(ns netns.NsHandle, fn func() error) error {
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			done <- err
			return
		}
		defer orig.Close()
		if err := netns.Set(ns); err != nil {
			done <- fmt.Errorf("enter the container's namespace: %w", err)
			return
		}
		err = fn()
		if netns.Set(orig) == nil {
			runtime.UnlockOSThread()
		}
		done <- err
	}()
	return <-done
}

// openInRoot opens path as if root were "/": symlinks in it (/var/run is
// one, to /run) resolve inside root, not in the plugin's own filesystem.
func openInRoot(root, path string) (netns.NsHandle, error) {
	dir, err := unix.Open(root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, fmt.Errorf("open %s: %w", root, err)
	}
	defer unix.Close(dir)
	fd, err := unix.Openat2(dir, strings.TrimPrefix(path, "/"), &unix.OpenHow{Flags: unix.O_RDONLY | unix.O_CLOEXEC, Resolve: unix.RESOLVE_IN_ROOT})
	if errors.Is(err, unix.ENOSYS) { // kernels before 5.6
		fd, err = unix.Open(filepath.Join(root, path), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	}
	if err != nil {
		return 0, fmt.Errorf("open %s in %s: %w", path, root, err)
	}
	return netns.NsHandle(fd), nil
}

// openSandbox opens the sandbox as a namespace (not the placeholder file
// Docker creates first, which Docker 20.10 still has at Join).
func openSandbox(root, sandbox string) (netns.NsHandle, error) {
	ns, err := openInRoot(root, sandbox)
	if err != nil {
		return 0, err
	}
	var st unix.Statfs_t
	if err := unix.Fstatfs(int(ns), &st); err != nil || st.Type != nsfsMagic {
		ns.Close()
		return 0, fmt.Errorf("%s is not a network namespace yet", filepath.Join(root, sandbox))
	}
	return ns, nil
}

// find opens the sandbox and looks for the endpoint's interface there,
// renamed by Docker (see whereIs).
func (in Inside) find(root, sandbox string, id Ident) (netns.NsHandle, string, error) {
	ns, err := openSandbox(root, sandbox)
	if err != nil {
		return 0, "", err
	}
	h, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	if err != nil {
		ns.Close()
		return 0, "", err
	}
	defer h.Close()
	links, err := h.LinkList()
	if err != nil {
		ns.Close()
		return 0, "", err
	}
	l, renamed, err := whereIs(links, id, nil)
	if err == nil && !renamed {
		err = fmt.Errorf("interface %s is in the container but not renamed yet", id.SrcName)
	}
	if err != nil {
		ns.Close()
		return 0, "", err
	}
	return ns, l.Attrs().Name, nil
}

// Ident is what an endpoint's interface is known by, taken at Join while
// it is still in the host namespace.
type Ident struct {
	SrcName string // its name there (Join's SrcName), which Docker changes after the move
	MAC     string // the endpoint's MAC; ipvlan endpoints share their parent's
	Index   int    // its ifindex there (0: unknown)
	// Alias is its alias ("": none). weft's macvlan and ipvlan links carry
	// their endpoint's ID in it, and a move into another namespace keeps
	// it, so it names the interface when nothing else does.
	Alias string
}

// whereIs finds an endpoint's interface among a namespace's links, and
// whether Docker has renamed it yet. Docker moves it in under its SrcName
// and renames it at once (to eth0, eth1, ... or the name the endpoint asked
// for), so after that only its identity is left:
//   - its alias, when it has one: unique to the endpoint, and kept by the
//     move. Then no other link is taken for it;
//   - its ifindex (from the host namespace at Join). A move keeps it
//     unless the namespace already has a link with that index; before lists
//     the indexes the namespace had before the move (nil: unknown). Without
//     before, the index may be held by another interface that was given a
//     new index on its own move: even by an ipvlan twin with our MAC. Only
//     the alias tells those apart;
//   - its MAC, which Docker sets to the endpoint's. Two ipvlan endpoints
//     share their parent's, so the MAC is only a check, or the last resort
//     when the index was taken, and then only if one link has it.
func whereIs(links []netlink.Link, id Ident, before map[int]bool) (netlink.Link, bool, error) {
	for _, l := range links {
		if l.Attrs().Name == id.SrcName {
			return l, false, nil
		}
	}
	if id.Alias != "" {
		var same []netlink.Link
		for _, l := range links {
			if l.Attrs().Alias == id.Alias {
				same = append(same, l)
			}
		}
		switch len(same) {
		case 0:
			return nil, false, fmt.Errorf("no interface with alias %q (index %d, MAC %s) in the container yet", id.Alias, id.Index, id.MAC)
		case 1:
			return same[0], true, nil
		}
		links = same // not weft's: the index and MAC decide among them
	}
	macOK := func(l netlink.Link) bool { return strings.EqualFold(l.Attrs().HardwareAddr.String(), id.MAC) }
	var at netlink.Link
	for _, l := range links {
		if id.Index > 0 && l.Attrs().Index == id.Index && !before[id.Index] {
			at = l
		}
	}
	if at != nil && macOK(at) {
		return at, true, nil
	}
	if id.Index > 0 && at == nil && !before[id.Index] {
		// Nothing holds the index: the interface keeps it when it comes.
		return nil, false, fmt.Errorf("no interface with index %d (MAC %s) in the container yet", id.Index, id.MAC)
	}
	var cands []netlink.Link
	for _, l := range links {
		if macOK(l) && !before[l.Attrs().Index] && l != at {
			cands = append(cands, l)
		}
	}
	switch len(cands) {
	case 0:
		return nil, false, fmt.Errorf("no interface with MAC %s in the container yet", id.MAC)
	case 1:
		return cands[0], true, nil
	}
	names := make([]string, 0, len(cands))
	for _, l := range cands {
		names = append(names, l.Attrs().Name)
	}
	return nil, false, fmt.Errorf("interfaces %s all have MAC %s and none has index %d: cannot tell which is this endpoint's", strings.Join(names, ", "), id.MAC, id.Index)
}

// applyHere applies s to ifname in the calling thread's namespace. Each
// setting is independent: one that cannot be applied (an offload the
// device does not let change, say) is reported and does not keep the
// others, rp_filter among them, from being applied.
func (in Inside) applyHere(ifname string, s Settings, shapeIFB string) ([]string, error) {
	var applied []string
	var errs []error
	if shapeIFB != "" && s.Shaped() {
		dev, err := netlink.LinkByName(ifname)
		if err == nil {
			// Inside the container the interface's own directions apply.
			err = shape(dev, s.RateIngress, s.RateEgress, shapeIFB, "weft:shaping", s)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("shaping %s: %w", ifname, err))
		} else {
			if s.RateEgress > 0 {
				applied = append(applied, "rate.egress="+FormatRate(s.RateEgress))
			}
			if s.RateIngress > 0 {
				applied = append(applied, "rate.ingress="+FormatRate(s.RateIngress))
			}
		}
	}
	if len(s.Offloads) > 0 {
		got, err := setOffloads(ifname, s.Offloads)
		applied = append(applied, got...)
		if err != nil {
			errs = append(errs, err)
		}
	}
	for _, k := range sortedKeys(s.Sysctls) {
		v := s.Sysctls[k]
		real, p := sysctlFile(in.ProcSys, k, ifname)
		if err := os.WriteFile(p, []byte(v), 0o644); err != nil {
			errs = append(errs, fmt.Errorf("sysctl %s=%s: %w", real, v, err))
			continue
		}
		b, err := os.ReadFile(p)
		if err != nil || strings.Join(strings.Fields(string(b)), " ") != strings.Join(strings.Fields(v), " ") {
			errs = append(errs, fmt.Errorf("sysctl %s reads back %q after writing %q", real, strings.TrimSpace(string(b)), v))
			continue
		}
		applied = append(applied, real+"="+v)
	}
	return applied, errors.Join(errs...)
}

// sysctlFile resolves a sysctl key for the interface ifname: the key as
// shown (IFNAME replaced) and its file under procSys. Dots separate the
// key's parts, so the interface name, which may hold dots (wan.0), goes in
// as one path element.
func sysctlFile(procSys, key, ifname string) (string, string) {
	parts := strings.Split(key, ".")
	for i, p := range parts {
		if p == IfNamePlaceholder {
			parts[i] = ifname
		}
	}
	return strings.Join(parts, "."), filepath.Join(append([]string{procSys}, parts...)...)
}

// RemoveInside deletes an IFB weft made inside a container (for an endpoint
// leaving a container that keeps running); a missing one is fine.
func (in Inside) RemoveInside(sandbox, ifbName string) {
	if sandbox == "" || ifbName == "" {
		return
	}
	for _, r := range in.roots() {
		ns, err := openInRoot(r, sandbox)
		if err != nil {
			continue
		}
		if h, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE); err == nil {
			if l, err := h.LinkByName(ifbName); err == nil {
				_ = h.LinkDel(l)
			}
			h.Close()
		}
		ns.Close()
		return
	}
}
