package tuning

// Tuning in time for the container's first command.
//
// Docker 20.10 calls Join before the container's network namespace exists,
// so everything inside waits for the namespace and the interface and lands
// some time after the container started (ApplyInside). From Engine 28 the
// namespace exists at Join (the SandboxKey is a real netns), Docker moves
// the interface in after Join answers, and it starts the container's
// process only when every endpoint is in. Prepare, run by Join before it
// answers, uses that window:
//
//   - namespace-wide sysctls (net.core.*, net.ipv4.tcp_*, ...) are written
//     in the sandbox directly;
//   - offloads are ethtool features of the device, which a move into
//     another namespace keeps: they are set on the device while it is still
//     in the host namespace;
//   - per-interface sysctls (net.ipv4.conf.IFNAME.*, net.ipv6.conf.IFNAME.*)
//     are the hard part: the kernel drops a device's IPv4 and IPv6 settings
//     when it leaves a namespace and gives it a copy of the destination's
//     net.ipv4.conf.default / net.ipv6.conf.default when it arrives. So the
//     sandbox's defaults are set to the asked values just for the move
//     ("borrowed"), and put back as soon as the device has arrived
//     (Pending.Finish, which follows the sandbox's link events). IPv4 copies
//     a change of default to existing interfaces that never set the value
//     themselves: those (lo, interfaces of other networks) are pinned first
//     by writing their current value back, so they do not see the borrowed
//     value even for a moment. A copy from default counts as set on the new
//     device, so putting default back does not undo it there.
//
// Alternatives weighed: Docker 28+ applies the endpoint option
// com.docker.network.endpoint.sysctls itself, after the move, but only from
// the user's own --driver-opt: a remote driver cannot add to an endpoint's
// options (CreateEndpoint's answer has only the interface's addresses and
// MAC), so weft's network-level sysctl.* defaults could not go that way.
// A remote driver cannot create the interface in the container either (the
// protocol has no "created in container" flag; Docker looks SrcName up in
// the host namespace). Setting per-interface values on the host side before
// the move does not work (they are dropped), and setting them after the move
// races the container's start, however fast it is. Borrowing the defaults
// is the one way that is in place when the device arrives.
//
// What stays after the move: net.ipv4/ipv6.neigh.IFNAME.* (neighbour
// parameters are copied from the kernel's global table on arrival, not from
// the sandbox, so they cannot be prepared), keys that name an interface that
// is not there yet, and rate limits inside the container. Finish applies
// them, with everything else again as a check, the moment Docker has renamed
// the interface: normally still before the container starts (Docker goes on
// configuring addresses and routes), but that is not guaranteed.
//
// Limits of borrowing: an interface some other driver creates in the same
// sandbox between the move and Finish putting the defaults back (well under
// a millisecond after the move, from a link event) would get the borrowed
// values, and a plugin crash in that window leaves them in the container's
// defaults. weft's own endpoints take turns (claimSandbox); Docker joins the
// endpoints of one container one after another anyway.

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// borrowWait bounds how long an endpoint waits for another weft endpoint
// of the same sandbox to finish its move before it does without borrowing.
var borrowWait = 3 * time.Second

// Pending is one endpoint's inside tuning from Join until it is applied.
type Pending struct {
	in       Inside
	sandbox  string
	id       Ident // the interface, as it is at Join in the host namespace
	s        Settings
	shapeIFB string

	// Set when the namespace existed at Join.
	atJoin   bool
	ns       netns.NsHandle
	early    []string     // what Prepare applied
	before   map[int]bool // link indexes in the sandbox before the move
	borrowed []borrowedDefault
	release  func() // ends this endpoint's turn at the sandbox's defaults
	updates  chan netlink.LinkUpdate
	stop     chan struct{} // ends the link subscription

	cancel     chan struct{}
	cancelOnce sync.Once
}

type borrowedDefault struct{ path, orig string }

// AtJoin reports whether the container's namespace existed at Join, so
// that what Prepare could set was in place before the container started.
func (p *Pending) AtJoin() bool { return p.atJoin }

// Early lists what Prepare applied before the move.
func (p *Pending) Early() []string { return p.early }

// Cancel stops waiting for the interface (the endpoint left): Finish puts
// borrowed defaults back and returns.
func (p *Pending) Cancel() { p.cancelOnce.Do(func() { close(p.cancel) }) }

// Prepare is called by Join, before it answers, for an endpoint with inside
// tuning; dev is the interface Docker will move (still in the host
// namespace). It applies what can be applied before the move where the
// namespace already exists (see the top of this file) and never fails:
// whatever it cannot do is left to Finish, which reports errors.
func (in Inside) Prepare(sandbox, dev, mac string, s Settings, shapeIFB string) *Pending {
	p := &Pending{in: in, sandbox: sandbox, id: Ident{SrcName: dev, MAC: mac}, s: s, shapeIFB: shapeIFB, ns: netns.None(), cancel: make(chan struct{})}
	if l, err := netlink.LinkByName(dev); err == nil {
		p.id.Index, p.id.Alias = l.Attrs().Index, l.Attrs().Alias
	}
	if !s.HasInside() && shapeIFB == "" {
		return p
	}
	if len(s.Offloads) > 0 {
		// What cannot be met is reported by Finish, which sets them again.
		got, _ := setOffloads(dev, s.Offloads)
		p.early = append(p.early, got...)
	}
	var root string
	for _, r := range in.roots() {
		if ns, err := openSandbox(r, sandbox); err == nil {
			p.ns, root = ns, r
			break
		}
	}
	if !p.ns.IsOpen() {
		return p // Docker 20.10: the namespace comes after Join
	}
	p.atJoin = true
	if p.in.ProcSys == "" {
		p.in.ProcSys = filepath.Join(root, "proc/sys")
	}
	if h, err := netlink.NewHandleAt(p.ns, unix.NETLINK_ROUTE); err == nil {
		if links, err := h.LinkList(); err == nil {
			p.before = map[int]bool{}
			for _, l := range links {
				p.before[l.Attrs().Index] = true
			}
		}
		h.Close()
	}
	p.updates, p.stop = make(chan netlink.LinkUpdate, 64), make(chan struct{})
	if err := netlink.LinkSubscribeWithOptions(p.updates, p.stop, netlink.LinkSubscribeOptions{Namespace: &p.ns, ErrorCallback: func(error) {}}); err != nil {
		p.updates = nil // Finish polls
	}
	var perIf []string
	for k := range s.Sysctls {
		if borrowable(k) {
			perIf = append(perIf, k)
		}
	}
	sort.Strings(perIf)
	if len(perIf) > 0 {
		if release, ok := claimSandbox(sandbox, borrowWait); ok {
			p.release = release
		}
	}
	_ = inNetNS(p.ns, func() error {
		p.early = append(p.early, p.in.writeNamespaceWide(s.Sysctls)...)
		if p.release != nil {
			p.borrow(perIf)
		}
		return nil
	})
	if p.release != nil && len(p.borrowed) == 0 {
		p.release()
		p.release = nil
	}
	return p
}

// borrowable: per-interface keys the kernel copies from the destination
// namespace's default when a device arrives.
func borrowable(key string) bool {
	return ifnameKey.MatchString(key) && (strings.HasPrefix(key, "net.ipv4.conf.") || strings.HasPrefix(key, "net.ipv6.conf."))
}

// writeNamespaceWide writes the keys without IFNAME that exist now (a key
// naming an interface not there yet waits for Finish). It runs in the
// sandbox.
func (in Inside) writeNamespaceWide(sysctls map[string]string) []string {
	var done []string
	for _, k := range sortedKeys(sysctls) {
		if strings.Contains(k, IfNamePlaceholder) {
			continue
		}
		_, path := sysctlFile(in.ProcSys, k, "")
		if writeSysctl(path, sysctls[k]) == nil {
			done = append(done, k+"="+sysctls[k])
		}
	}
	return done
}

// borrow sets the sandbox's default devconf to the asked per-interface
// values, pinning existing IPv4 interfaces first. It runs in the sandbox.
func (p *Pending) borrow(keys []string) {
	for _, k := range keys {
		parts := strings.Split(k, ".") // net ipvX conf IFNAME attr
		family, attr := parts[1], parts[4]
		conf := filepath.Join(p.in.ProcSys, "net", family, "conf")
		dflt := filepath.Join(conf, "default", attr)
		orig, err := os.ReadFile(dflt)
		if err != nil {
			continue // e.g. no IPv6 in this kernel: Finish reports it
		}
		if family == "ipv4" {
			dirs, _ := os.ReadDir(conf)
			for _, d := range dirs {
				if d.Name() == "all" || d.Name() == "default" {
					continue
				}
				f := filepath.Join(conf, d.Name(), attr)
				if cur, err := os.ReadFile(f); err == nil {
					_ = os.WriteFile(f, cur, 0o644)
				}
			}
		}
		if err := writeSysctl(dflt, p.s.Sysctls[k]); err != nil {
			continue
		}
		p.borrowed = append(p.borrowed, borrowedDefault{path: dflt, orig: string(orig)})
		p.early = append(p.early, k+"="+p.s.Sysctls[k])
	}
}

// giveBack puts borrowed defaults back and ends this endpoint's turn.
func (p *Pending) giveBack() error {
	var err error
	if len(p.borrowed) > 0 {
		err = inNetNS(p.ns, func() error {
			var errs []error
			for _, b := range p.borrowed {
				if err := os.WriteFile(b.path, []byte(b.orig), 0o644); err != nil {
					errs = append(errs, fmt.Errorf("put back %s: %w", b.path, err))
				}
			}
			return errors.Join(errs...)
		})
		p.borrowed = nil
	}
	if p.release != nil {
		p.release()
		p.release = nil
	}
	return err
}

// Finish waits until the interface is in the container under its final
// name, gives borrowed defaults back the moment it arrives, and applies and
// reads back everything (applyHere). It returns what it applied.
func (p *Pending) Finish() (string, error) {
	if !p.atJoin {
		got, err := p.in.ApplyInside(p.sandbox, p.id, p.s, p.shapeIFB)
		return got, err
	}
	defer p.ns.Close()
	defer func() {
		if p.stop != nil {
			close(p.stop)
			// The subscription's goroutine ends once it may deliver what
			// it still has.
			if ch := p.updates; ch != nil {
				go func() {
					for range ch {
					}
				}()
			}
		}
	}()
	name, err := p.waitRenamed()
	if gerr := p.giveBack(); gerr != nil && err == nil {
		err = fmt.Errorf("tuning: %w", gerr)
	}
	if err != nil {
		return "", err
	}
	var applied []string
	err = inNetNS(p.ns, func() (err error) {
		applied, err = p.in.applyHere(name, p.s, p.shapeIFB)
		return err
	})
	return strings.Join(applied, " "), err
}

// waitRenamed follows the sandbox's link events (and polls, in case an
// event was lost) until the interface is there under its final name. The
// borrowed defaults go back as soon as it is in the namespace.
func (p *Pending) waitRenamed() (string, error) {
	h, err := netlink.NewHandleAt(p.ns, unix.NETLINK_ROUTE)
	if err != nil {
		return "", fmt.Errorf("tuning: %w", err)
	}
	defer h.Close()
	deadline := time.NewTimer(p.in.Timeout)
	defer deadline.Stop()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	arrived := 0 // the interface's index in the sandbox once seen under dev
	var lastErr error
	for {
		select {
		case u, ok := <-p.updates:
			if !ok {
				p.updates = nil
				continue
			}
			if u.Header.Type != unix.RTM_NEWLINK {
				continue
			}
			a := u.Attrs()
			switch {
			case a.Name == p.id.SrcName:
				arrived = a.Index
				_ = p.giveBack()
			case arrived != 0 && a.Index == arrived:
				_ = p.giveBack()
				return a.Name, nil
			}
			continue
		case <-tick.C:
		case <-p.cancel:
			return "", errors.New("tuning: the endpoint left before its interface reached the container")
		case <-deadline.C:
			return "", fmt.Errorf("tuning: gave up after %s waiting for the container's interface: %v", p.in.Timeout, lastErr)
		}
		links, err := h.LinkList()
		if err != nil {
			lastErr = err
			continue
		}
		var l netlink.Link
		renamed := false
		if arrived != 0 {
			for _, x := range links {
				if x.Attrs().Index == arrived {
					l, renamed = x, x.Attrs().Name != p.id.SrcName
				}
			}
		} else {
			l, renamed, lastErr = whereIs(links, p.id, p.before)
		}
		if l == nil {
			continue
		}
		arrived = l.Attrs().Index
		_ = p.giveBack()
		if renamed {
			return l.Attrs().Name, nil
		}
	}
}

func writeSysctl(path, v string) error {
	if err := os.WriteFile(path, []byte(v), 0o644); err != nil {
		return err
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if strings.Join(strings.Fields(string(b)), " ") != strings.Join(strings.Fields(v), " ") {
		return fmt.Errorf("reads back %q after writing %q", strings.TrimSpace(string(b)), v)
	}
	return nil
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// sandboxTurns lets one endpoint at a time borrow a sandbox's defaults.
var sandboxTurns = struct {
	sync.Mutex
	m map[string]chan struct{}
}{m: map[string]chan struct{}{}}

// claimSandbox waits (at most wait) for the sandbox's defaults to be free
// and takes them; release ends the turn (more calls are no-ops).
func claimSandbox(sandbox string, wait time.Duration) (release func(), ok bool) {
	timeout := time.NewTimer(wait)
	defer timeout.Stop()
	for {
		sandboxTurns.Lock()
		busy, taken := sandboxTurns.m[sandbox]
		if !taken {
			mine := make(chan struct{})
			sandboxTurns.m[sandbox] = mine
			sandboxTurns.Unlock()
			var once sync.Once
			return func() {
				once.Do(func() {
					sandboxTurns.Lock()
					delete(sandboxTurns.m, sandbox)
					sandboxTurns.Unlock()
					close(mine)
				})
			}, true
		}
		sandboxTurns.Unlock()
		select {
		case <-busy:
		case <-timeout.C:
			return nil, false
		}
	}
}
