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

	"github.com/safchain/ethtool"
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

// Offload option names and the kernel feature each one switches.
var offloads = map[string]string{
	"tso": "tx-tcp-segmentation",
	"gso": "tx-generic-segmentation",
	"gro": "rx-gro",
	"rx":  "rx-checksum",
	"tx":  "tx-checksum-ip-generic",
	"sg":  "tx-scatter-gather",
}

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

func parseInside(s *Settings, network, endpoint map[string]string) error {
	merged := map[string]string{}
	what := map[string]string{}
	for k, v := range network {
		if IsInsideKey(k) {
			merged[k], what[k] = v, "option "+k
		}
	}
	for k, v := range endpoint {
		if IsInsideKey(k) {
			merged[k], what[k] = v, "--driver-opt "+k
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
			feat, known := offloads[name]
			if !known {
				names := make([]string, 0, len(offloads))
				for n := range offloads {
					names = append(names, PrefixOffload+n)
				}
				sort.Strings(names)
				return fmt.Errorf("%s: unknown offload; valid: %s", what[k], strings.Join(names, ", "))
			}
			on, err := onOff(v)
			if err != nil {
				return fmt.Errorf("%s=%q: %w", what[k], v, err)
			}
			if s.Offloads == nil {
				s.Offloads = map[string]bool{}
			}
			s.Offloads[feat] = on
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
// container neither exists yet at Join), then applies offloads and
// sysctls there and reads them back. It returns what it applied.
//
// srcName is the interface's name before Docker moves it: Docker renames it
// (eth0, eth1, ...) right after the move, so until then it is not ready.
//
// shapeIFB, when set, asks for the rate limits to be applied inside too (for
// types without a host-side device), with an IFB of that name for ingress.
func (in Inside) ApplyInside(sandbox, mac, srcName string, s Settings, shapeIFB string) (string, error) {
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
			if ns, ifname, err = in.find(r, sandbox, mac, srcName); err == nil {
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
	done := make(chan struct{})
	var applied []string
	var aerr error
	go func() {
		defer close(done)
		// This thread switches namespace: it is locked, and thrown away
		// (never unlocked) if switching back fails.
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			aerr = err
			return
		}
		defer orig.Close()
		if err := netns.Set(ns); err != nil {
			aerr = fmt.Errorf("enter the container's namespace: %w", err)
			return
		}
		applied, aerr = in.applyHere(ifname, s, shapeIFB)
		if err := netns.Set(orig); err != nil {
			return
		}
		runtime.UnlockOSThread()
	}()
	<-done
	return strings.Join(applied, " "), aerr
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

// find opens the sandbox as a namespace (not the placeholder file Docker
// creates first) and looks for the interface with the endpoint's MAC.
func (in Inside) find(root, sandbox, mac, srcName string) (netns.NsHandle, string, error) {
	path := filepath.Join(root, sandbox)
	ns, err := openInRoot(root, sandbox)
	if err != nil {
		return 0, "", err
	}
	var st unix.Statfs_t
	if err := unix.Fstatfs(int(ns), &st); err != nil || st.Type != nsfsMagic {
		ns.Close()
		return 0, "", fmt.Errorf("%s is not a network namespace yet", path)
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
	for _, l := range links {
		if strings.EqualFold(l.Attrs().HardwareAddr.String(), mac) && l.Attrs().Name != srcName {
			return ns, l.Attrs().Name, nil
		}
	}
	ns.Close()
	return 0, "", fmt.Errorf("no interface with MAC %s in the container yet", mac)
}

func (in Inside) applyHere(ifname string, s Settings, shapeIFB string) ([]string, error) {
	var applied []string
	if shapeIFB != "" && s.Shaped() {
		dev, err := netlink.LinkByName(ifname)
		if err != nil {
			return applied, fmt.Errorf("shaping %s: %w", ifname, err)
		}
		// Inside the container the interface's own directions apply.
		if err := shape(dev, s.RateIngress, s.RateEgress, shapeIFB, "weft:shaping", s); err != nil {
			return applied, err
		}
		if s.RateEgress > 0 {
			applied = append(applied, "rate.egress="+FormatRate(s.RateEgress))
		}
		if s.RateIngress > 0 {
			applied = append(applied, "rate.ingress="+FormatRate(s.RateIngress))
		}
	}
	if len(s.Offloads) > 0 {
		e, err := ethtool.NewEthtool()
		if err != nil {
			return applied, fmt.Errorf("ethtool: %w", err)
		}
		defer e.Close()
		if err := e.Change(ifname, s.Offloads); err != nil {
			return applied, fmt.Errorf("offloads on %s: %w", ifname, err)
		}
		got, err := e.Features(ifname)
		if err != nil {
			return applied, fmt.Errorf("read offloads of %s: %w", ifname, err)
		}
		for feat, want := range s.Offloads {
			if got[feat] != want {
				return applied, fmt.Errorf("offload %s on %s is %v after setting it to %v (the driver may not allow it)", feat, ifname, got[feat], want)
			}
			applied = append(applied, fmt.Sprintf("%s=%v", feat, want))
		}
	}
	keys := make([]string, 0, len(s.Sysctls))
	for k := range s.Sysctls {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		v := s.Sysctls[k]
		real := strings.Replace(k, IfNamePlaceholder, ifname, 1)
		p := filepath.Join(in.ProcSys, strings.ReplaceAll(real, ".", "/"))
		if err := os.WriteFile(p, []byte(v), 0o644); err != nil {
			return applied, fmt.Errorf("sysctl %s=%s: %w", real, v, err)
		}
		b, err := os.ReadFile(p)
		if err != nil || strings.Join(strings.Fields(string(b)), " ") != strings.Join(strings.Fields(v), " ") {
			return applied, fmt.Errorf("sysctl %s reads back %q after writing %q", real, strings.TrimSpace(string(b)), v)
		}
		applied = append(applied, real+"="+v)
	}
	return applied, nil
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
