package netutil

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"testing"

	"github.com/sirupsen/logrus"
	"github.com/sirupsen/logrus/hooks/test"
)

// A fake process tree. Namespaces are named as /proc shows them.
const (
	initUser = "user:[4026531837]"
	hostNet  = "net:[4026531833]"
	hostMnt  = "mnt:[4026531832]"
	dockerdC = "/var/run/docker/containerd/containerd.sock" // dockerd's own containerd
	systemC  = "/run/containerd/containerd.sock"            // an external containerd
)

type fakeP struct {
	comm, exe          string
	ppid               int
	uids               [4]int
	user, net, mnt     string
	cmdline            []string
	listen             []string // paths this process listens on
	hideNS, hideStatus bool     // links / status unreadable
}

type fakeTree struct {
	self  int
	procs map[int]*fakeP
}

var errDenied = errors.New("permission denied")

func (t *fakeTree) Self() int { return t.self }

func (t *fakeTree) Pids() ([]int, error) {
	var out []int
	for p := range t.procs {
		out = append(out, p)
	}
	sort.Sort(sort.Reverse(sort.IntSlice(out))) // FindDockerd must not rely on the order
	return out, nil
}

func (t *fakeTree) get(pid int) (*fakeP, error) {
	p, ok := t.procs[pid]
	if !ok {
		return nil, os.ErrNotExist
	}
	return p, nil
}

func (t *fakeTree) ReadFile(pid int, name string) ([]byte, error) {
	p, err := t.get(pid)
	if err != nil {
		return nil, err
	}
	switch name {
	case "comm":
		return []byte(p.comm + "\n"), nil
	case "status":
		if p.hideStatus {
			return nil, errDenied
		}
		u := p.uids
		return fmt.Appendf(nil, "Name:\t%s\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t%d\nPid:\t%d\nPPid:\t%d\nTracerPid:\t0\nUid:\t%d\t%d\t%d\t%d\nGid:\t0\t0\t0\t0\n",
			p.comm, pid, pid, p.ppid, u[0], u[1], u[2], u[3]), nil
	case "cmdline":
		return []byte(strings.Join(p.cmdline, "\x00") + "\x00"), nil
	case "net/unix":
		// Every process's namespace table: all listeners of its network
		// namespace, plus a connected socket on each path (as containerd's
		// accepted connections show).
		b := []byte("Num       RefCount Protocol Flags    Type St Inode Path\n")
		var pids []int
		for q := range t.procs {
			pids = append(pids, q)
		}
		sort.Ints(pids)
		for _, q := range pids {
			o := t.procs[q]
			if o.net != p.net {
				continue
			}
			for i, l := range o.listen {
				b = fmt.Appendf(b, "0000000000000000: 00000002 00000000 00010000 0001 01 %d %s\n", q*100+i, l)
				b = fmt.Appendf(b, "0000000000000000: 00000003 00000000 00000000 0001 03 %d %s\n", q*100+50+i, l)
			}
		}
		return b, nil
	}
	return nil, os.ErrNotExist
}

func (t *fakeTree) Readlink(pid int, name string) (string, error) {
	p, err := t.get(pid)
	if err != nil {
		return "", err
	}
	if p.hideNS {
		return "", errDenied
	}
	switch name {
	case "exe":
		return p.exe, nil
	case "ns/user":
		return p.user, nil
	case "ns/net":
		return p.net, nil
	case "ns/mnt":
		return p.mnt, nil
	}
	return "", os.ErrNotExist
}

func (t *fakeTree) FDs(pid int) ([]string, error) {
	p, err := t.get(pid)
	if err != nil {
		return nil, err
	}
	if p.hideNS {
		return nil, errDenied
	}
	out := []string{"/dev/null", "pipe:[77]"}
	for i := range p.listen {
		out = append(out, fmt.Sprintf("socket:[%d]", pid*100+i), fmt.Sprintf("socket:[%d]", pid*100+50+i))
	}
	return out, nil
}

// proc builds a root process in the host's namespaces.
func proc(comm, exe string, ppid int, cmdline ...string) *fakeP {
	if len(cmdline) == 0 {
		cmdline = []string{exe}
	}
	return &fakeP{comm: comm, exe: exe, ppid: ppid, user: initUser, net: hostNet, mnt: hostMnt, cmdline: cmdline}
}

// hostTree is what this machine shows with dockerd's own containerd: the
// plugin's shim is reparented to PID 1, so dockerd is not an ancestor.
//
//	1 init
//	2 kthreadd
//	200 dockerd <- 1
//	210 containerd <- 200, listening on dockerdC
//	400 containerd-shim <- 1, -address dockerdC
//	410 weft <- 400 (the plugin)
func hostTree() *fakeTree {
	t := &fakeTree{self: 410, procs: map[int]*fakeP{
		1:   proc("systemd", "/usr/lib/systemd/systemd", 0),
		2:   proc("kthreadd", "", 0),
		200: proc("dockerd", "/usr/sbin/dockerd", 1, "/usr/sbin/dockerd", "--data-root", "/var/lib/docker"),
		210: proc("containerd", "/usr/bin/containerd", 200, "containerd", "--config", "/var/run/docker/containerd/containerd.toml"),
		400: proc("containerd-shim", "/usr/bin/containerd-shim-runc-v2", 1, "/usr/bin/containerd-shim-runc-v2", "-namespace", "plugins.moby", "-id", "aae8", "-address", dockerdC),
		410: proc("weft", "/weft", 400),
	}}
	t.procs[210].listen = []string{dockerdC, dockerdC + ".ttrpc"}
	t.procs[410].mnt = "mnt:[4026532178]" // the plugin's rootfs
	return t
}

func mustFind(t *testing.T, tree *fakeTree, want int, why string) Dockerd {
	t.Helper()
	d, err := FindDockerd(tree)
	if err != nil {
		t.Fatalf("FindDockerd: %v (ignored %q)", err, d.Ignored)
	}
	if d.Pid != want {
		t.Fatalf("chose dockerd %d (%s), want %d; ignored %q", d.Pid, d.Why, want, d.Ignored)
	}
	if !strings.Contains(d.Why, why) {
		t.Fatalf("why = %q, want it to mention %q", d.Why, why)
	}
	return d
}

func mustRefuse(t *testing.T, tree *fakeTree, want string) Dockerd {
	t.Helper()
	d, err := FindDockerd(tree)
	if err == nil {
		t.Fatalf("chose dockerd %d (%s), want none", d.Pid, d.Why)
	}
	if d.Pid != 0 {
		t.Fatalf("error %v but Pid %d", err, d.Pid)
	}
	if !strings.Contains(err.Error(), want) {
		t.Fatalf("error %q, want it to mention %q", err, want)
	}
	return d
}

func ignoredHas(t *testing.T, d Dockerd, pid int, why string) {
	t.Helper()
	for _, s := range d.Ignored {
		if strings.HasPrefix(s, fmt.Sprintf("pid %d: ", pid)) && strings.Contains(s, why) {
			return
		}
	}
	t.Fatalf("ignored %q: want pid %d with %q", d.Ignored, pid, why)
}

func TestDockerdThroughShimsContainerd(t *testing.T) {
	d := mustFind(t, hostTree(), 200, "the parent of containerd 210, which listens on "+dockerdC)
	if len(d.Ignored) != 0 {
		t.Fatalf("ignored %q", d.Ignored)
	}
}

func TestDockerdAncestor(t *testing.T) {
	// A shim that stays the child of containerd: dockerd is an ancestor.
	tree := hostTree()
	tree.procs[400].ppid = 210
	// A second dockerd run by root, with a lower pid, is not the plugin's.
	tree.procs[100] = proc("dockerd", "/usr/sbin/dockerd", 1)
	d := mustFind(t, tree, 200, "an ancestor of the plugin: weft 410 <- containerd-shim 400 <- containerd 210 <- dockerd 200")
	ignoredHas(t, d, 100, "not tied to the plugin")
}

func TestDockerdImpostorUID1000(t *testing.T) {
	tree := hostTree()
	imp := proc("dockerd", "/tmp/x/dockerd", 1)
	imp.uids = [4]int{1000, 1000, 1000, 1000}
	tree.procs[50] = imp
	d := mustFind(t, tree, 200, "containerd 210")
	ignoredHas(t, d, 50, "not root: uids 1000/1000/1000/1000")

	// Alone, it is not taken either.
	delete(tree.procs, 200)
	d = mustRefuse(t, tree, "no process named dockerd runs as root")
	ignoredHas(t, d, 50, "not root")

	// Nor as the plugin's ancestor.
	tree.procs[400].ppid = 50
	mustRefuse(t, tree, "no process named dockerd runs as root")
}

func TestDockerdImpostorSetuid(t *testing.T) {
	// A set-user-ID root program started through a link named dockerd:
	// effective uid 0, real uid the user's; its executable is not dockerd.
	tree := hostTree()
	su := proc("dockerd", "/usr/bin/su", 1)
	su.uids = [4]int{1000, 0, 0, 0}
	tree.procs[60] = su
	// The same with an executable named dockerd (a hard link).
	ln := proc("dockerd", "/tmp/x/dockerd", 1)
	ln.uids = [4]int{1000, 0, 0, 0}
	tree.procs[61] = ln
	d := mustFind(t, tree, 200, "containerd 210")
	ignoredHas(t, d, 60, "executable /usr/bin/su is not dockerd")
	ignoredHas(t, d, 61, "not root: uids 1000/0/0/0")
}

func TestDockerdImpostorInUserNamespace(t *testing.T) {
	// uid 0 inside a user namespace that maps it to 0 (as root's unshare -Ur
	// shows): the user namespace gives it away.
	tree := hostTree()
	imp := proc("dockerd", "/tmp/x/dockerd", 1)
	imp.user = "user:[4026532181]"
	tree.procs[70] = imp
	d := mustFind(t, tree, 200, "containerd 210")
	ignoredHas(t, d, 70, "in user namespace user:[4026532181], not the initial one "+initUser)

	// Even alone, and even as the plugin's ancestor.
	delete(tree.procs, 200)
	tree.procs[400].ppid = 70
	mustRefuse(t, tree, "no process named dockerd runs as root")
}

func TestDockerdImpostorLowerPid(t *testing.T) {
	// The old rule took the first dockerd; every kind of impostor now has a
	// lower pid than the real one.
	tree := hostTree()
	a := proc("dockerd", "/tmp/x/dockerd", 1)
	a.uids = [4]int{65534, 65534, 65534, 65534}
	b := proc("dockerd", "/tmp/x/dockerd", 1)
	b.user = "user:[4026532182]"
	c := proc("dockerd", "/usr/sbin/dockerd", 1) // run by root, without containerd
	tree.procs[3], tree.procs[4], tree.procs[5] = a, b, c
	d := mustFind(t, tree, 200, "containerd 210")
	ignoredHas(t, d, 3, "not root")
	ignoredHas(t, d, 4, "not the initial one")
	ignoredHas(t, d, 5, "not tied to the plugin")
	if len(d.Ignored) != 3 {
		t.Fatalf("ignored %q", d.Ignored)
	}
}

func TestDockerdOtherNetworkNamespace(t *testing.T) {
	// The swarm lab: dockerds in their own network and mount namespaces,
	// whose containerds listen on the same path. The plugin of host B is
	// in B's network namespace.
	tree := hostTree()
	bNet, bMnt := "net:[4026532300]", "mnt:[4026532301]"
	tree.procs[300] = proc("dockerd", "/usr/sbin/dockerd", 1)
	tree.procs[310] = proc("containerd", "/usr/bin/containerd", 300)
	tree.procs[310].listen = []string{dockerdC}
	for _, p := range []int{300, 310} {
		tree.procs[p].net, tree.procs[p].mnt = bNet, bMnt
	}
	tree.procs[400].net, tree.procs[400].mnt = bNet, bMnt
	tree.procs[410].net = bNet
	d := mustFind(t, tree, 300, "the parent of containerd 310")
	ignoredHas(t, d, 200, "not the plugin's "+bNet)
	if len(d.Ignored) != 1 {
		t.Fatalf("ignored %q", d.Ignored)
	}

	// The same network namespace but each dockerd in its own mount
	// namespace: the shim's -address is a path in the shim's.
	for _, p := range []int{300, 310, 400, 410} {
		tree.procs[p].net = hostNet
	}
	d = mustFind(t, tree, 300, "the parent of containerd 310")
	ignoredHas(t, d, 200, "its containerd 210 does not serve")
}

// externalTree: dockerd uses the system's containerd (a child of init),
// whose shim's parent chain reaches containerd, not dockerd.
func externalTree(flag bool) *fakeTree {
	tree := hostTree()
	tree.procs[210].ppid = 1
	tree.procs[210].listen = []string{systemC}
	tree.procs[210].cmdline = []string{"/usr/bin/containerd"}
	tree.procs[400].ppid = 210
	tree.procs[400].cmdline = []string{"/usr/bin/containerd-shim-runc-v2", "-namespace", "plugins.moby", "-id", "aae8", "-address", systemC}
	if flag {
		tree.procs[200].cmdline = []string{"/usr/sbin/dockerd", "-H", "fd://", "--containerd=" + systemC}
	}
	return tree
}

func TestDockerdExternalContainerd(t *testing.T) {
	// docker.service's --containerd=/run/containerd/containerd.sock.
	tree := externalTree(true)
	tree.procs[100] = proc("dockerd", "/usr/sbin/dockerd", 1) // another root dockerd
	d := mustFind(t, tree, 200, "started with --containerd "+systemC)
	ignoredHas(t, d, 100, "not tied to the plugin")

	// "--containerd PATH" and a unix:// address read the same.
	tree.procs[200].cmdline = []string{"dockerd", "--containerd", "unix://" + systemC}
	mustFind(t, tree, 200, "started with --containerd "+systemC)
}

func TestDockerdExternalContainerdConfigFile(t *testing.T) {
	// The address is in daemon.json: nothing on dockerd's command line.
	tree := externalTree(false)
	mustFind(t, tree, 200, "the only dockerd run by root in the initial user namespace")

	// An impostor does not make it ambiguous.
	imp := proc("dockerd", "/tmp/x/dockerd", 1)
	imp.uids = [4]int{1000, 1000, 1000, 1000}
	tree.procs[20] = imp
	mustFind(t, tree, 200, "the only dockerd")

	// A second root dockerd whose own containerd serves another address
	// is not the plugin's.
	tree.procs[300] = proc("dockerd", "/usr/sbin/dockerd", 1)
	tree.procs[310] = proc("containerd", "/usr/bin/containerd", 300)
	tree.procs[310].listen = []string{"/run/other/containerd.sock"}
	d := mustFind(t, tree, 200, "containerd 210 (parent systemd 1)")
	ignoredHas(t, d, 300, "its containerd 310 does not serve "+systemC)

	// A second one that cannot be told apart: refuse to guess.
	tree.procs[250] = proc("dockerd", "/usr/sbin/dockerd", 1)
	d = mustRefuse(t, tree, "dockerds 200, 250 run as root")
	if !strings.Contains(fmt.Sprint(d.Ignored), "pids 200, 250: not tied") {
		t.Fatalf("ignored %q", d.Ignored)
	}
}

func TestDockerdSeveralTied(t *testing.T) {
	tree := externalTree(true)
	tree.procs[250] = proc("dockerd", "/usr/sbin/dockerd", 1, "dockerd", "--containerd="+systemC)
	mustRefuse(t, tree, "dockerds 200, 250 are all tied to the plugin's containerd-shim 400")
}

func TestDockerdNone(t *testing.T) {
	tree := hostTree()
	delete(tree.procs, 200)
	d := mustRefuse(t, tree, "no process named dockerd")
	if len(d.Ignored) != 0 {
		t.Fatalf("ignored %q", d.Ignored)
	}

	// dockerd gone but its containerd left running (live restore): not
	// enough to choose a dockerd either.
	tree = hostTree()
	tree.procs[200].comm = "containerd-x"
	mustRefuse(t, tree, "no process named dockerd")
}

func TestDockerdNotTiedWithoutShim(t *testing.T) {
	// weft run by hand on the host: no shim; one root dockerd qualifies.
	tree := hostTree()
	tree.procs[410].ppid = 1
	mustFind(t, tree, 200, "no containerd-shim ancestor")
	tree.procs[100] = proc("dockerd", "/usr/sbin/dockerd", 1)
	mustRefuse(t, tree, "refusing to guess")
}

func TestDockerdUnreadable(t *testing.T) {
	// A dockerd whose links cannot be read is not taken.
	tree := hostTree()
	tree.procs[200].hideNS = true
	d := mustRefuse(t, tree, "no process named dockerd")
	ignoredHas(t, d, 200, "executable unreadable")
	tree = hostTree()
	tree.procs[200].hideStatus = true
	d = mustRefuse(t, tree, "no process named dockerd")
	ignoredHas(t, d, 200, "status unreadable")

	// An executable replaced by an upgrade still is dockerd.
	tree = hostTree()
	tree.procs[200].exe = "/usr/sbin/dockerd (deleted)"
	mustFind(t, tree, 200, "containerd 210")

	// The plugin's own namespace unreadable: refuse.
	tree = hostTree()
	tree.procs[410].hideNS = true
	mustRefuse(t, tree, "the plugin's own network namespace")
}

func TestDockerdInitialUserNamespace(t *testing.T) {
	// This machine's PID 1 hides its links even from CAP_SYS_PTRACE: the
	// initial user namespace is read from kthreadd instead.
	tree := hostTree()
	const other = "user:[4026539999]" // a kernel whose initial inode differs
	for _, p := range tree.procs {
		p.user = other
	}
	tree.procs[1].hideNS = true
	mustFind(t, tree, 200, "containerd 210")
	imp := proc("dockerd", "/tmp/x/dockerd", 1)
	imp.user = initUser
	tree.procs[90] = imp
	d := mustFind(t, tree, 200, "containerd 210")
	ignoredHas(t, d, 90, "not the initial one "+other)

	// PID 2 that is not kthreadd is not used (the fixed inode then is,
	// which in this made-up kernel is not the initial user namespace).
	delete(tree.procs, 90)
	tree.procs[2].comm = "dockerd"
	tree.procs[2].exe = "/usr/sbin/dockerd"
	d = mustRefuse(t, tree, "no process named dockerd")
	ignoredHas(t, d, 200, "not the initial one "+initUser)

	// Without either, the kernel's fixed inode is used.
	tree = hostTree()
	tree.procs[1].hideNS, tree.procs[2].hideNS = true, true
	mustFind(t, tree, 200, "containerd 210")
}

func TestDockerdProofNeedsTheSocket(t *testing.T) {
	// A containerd child that has the path in its namespace's table but no
	// descriptor for it (another process listens there) proves nothing.
	tree := hostTree()
	tree.procs[210].listen = nil
	tree.procs[220] = proc("containerd", "/usr/bin/containerd", 1) // external, listening
	tree.procs[220].listen = []string{dockerdC}
	// That other containerd serves the shim: dockerd 200 is not the
	// plugin's.
	d := mustRefuse(t, tree, "no dockerd run by root in the initial user namespace is tied to the plugin")
	ignoredHas(t, d, 200, "its containerd 210 does not serve "+dockerdC)
	// A containerd run by a user is not a proof either.
	tree = hostTree()
	tree.procs[210].uids = [4]int{1000, 1000, 1000, 1000}
	tree.procs[100] = proc("dockerd", "/usr/sbin/dockerd", 1)
	mustRefuse(t, tree, "no containerd run by root listens on "+dockerdC)
}

func TestParseStatus(t *testing.T) {
	st, err := parseStatus([]byte("Name:\tdockerd\nPPid:\t1\nUid:\t0\t1\t2\t3\n"))
	if err != nil || st.ppid != 1 || st.uids != [4]int{0, 1, 2, 3} {
		t.Fatalf("%+v %v", st, err)
	}
	for _, bad := range []string{"PPid:\t1\n", "Uid:\t0\t0\t0\t0\n", "PPid:\tx\nUid:\t0\t0\t0\t0\n", "PPid:\t1\nUid:\t0\t0\t0\n", "PPid:\t1\nUid:\t0\t0\tz\t0\n"} {
		if _, err := parseStatus([]byte(bad)); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
}

func TestFlagValue(t *testing.T) {
	args := []string{"x", "-address", "/a", "--containerd=/b", "-namespace"}
	for name, want := range map[string]string{"address": "/a", "containerd": "/b", "namespace": "", "id": ""} {
		if got := flagValue(args, name); got != want {
			t.Errorf("%s: %q, want %q", name, got, want)
		}
	}
}

func TestLogDockerdOnce(t *testing.T) {
	hook := test.NewGlobal()
	defer hook.Reset()
	out := logrus.StandardLogger().Out
	logrus.SetOutput(io.Discard)
	defer logrus.SetOutput(out)
	dockerdLogged.last = ""
	d := Dockerd{Pid: 200, Why: "why", Ignored: []string{"pid 50: not root"}}
	logDockerd(d, nil)
	logDockerd(d, nil)
	if n := len(hook.AllEntries()); n != 1 {
		t.Fatalf("%d entries, want 1", n)
	}
	e := hook.LastEntry()
	if e.Level != logrus.InfoLevel || e.Data["pid"] != 200 || e.Data["root"] != "/proc/200/root" || e.Data["why"] != "why" {
		t.Fatalf("%v %v", e.Level, e.Data)
	}
	logDockerd(Dockerd{}, errors.New("none"))
	logDockerd(Dockerd{}, errors.New("none"))
	if n := len(hook.AllEntries()); n != 2 || hook.LastEntry().Level != logrus.WarnLevel {
		t.Fatalf("%d entries, last %v", n, hook.LastEntry().Level)
	}
	logDockerd(d, nil) // chosen again after none: logged again
	if n := len(hook.AllEntries()); n != 3 {
		t.Fatalf("%d entries, want 3", n)
	}
}

func TestHostProc(t *testing.T) {
	// The real /proc reads as the fake does; whatever it finds, it does
	// not fail to read itself.
	h := HostProc{Dir: "/proc"}
	pids, err := h.Pids()
	if err != nil || len(pids) == 0 {
		t.Fatal(pids, err)
	}
	if b, err := h.ReadFile(h.Self(), "status"); err != nil {
		t.Fatal(err)
	} else if st, err := parseStatus(b); err != nil || st.ppid != os.Getppid() {
		t.Fatalf("%+v %v", st, err)
	}
	if l, err := h.Readlink(h.Self(), "ns/net"); err != nil || !strings.HasPrefix(l, "net:[") {
		t.Fatal(l, err)
	}
	if fds, err := h.FDs(h.Self()); err != nil || len(fds) == 0 {
		t.Fatal(fds, err)
	}
	d, err := FindDockerd(h)
	t.Logf("on this machine: %+v, %v", d, err)
}
