package netutil

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"

	"github.com/sirupsen/logrus"
)

// Finding the dockerd that runs this plugin. A managed plugin shares the
// host's PID namespace, and /proc/<dockerd pid>/root is the host's file
// system as that dockerd sees it: weft reads SR-IOV sysfs and container
// sandboxes (/var/run/docker/netns/...) through it. Any user can start a
// process named dockerd, so the name alone is never enough. A dockerd is a
// candidate only if
//
//   - both its comm and its executable's file name are "dockerd";
//   - its real, effective, saved and file-system uids are all 0;
//   - it is in the initial user namespace (that of PID 1, or of kthreadd when
//     PID 1's cannot be read; as a last resort the kernel's fixed inode for
//     the initial user namespace);
//   - it is in the plugin's network namespace (a dockerd in another one, such
//     as the swarm lab's hosts, does not run this plugin).
//
// Among the candidates, the one tied to the plugin is chosen, in this order:
//
//  1. a candidate among the plugin's ancestors (walking PPid up from the
//     plugin's own process);
//  2. the parent of the containerd that listens on the -address of the
//     plugin's containerd-shim (the nearest ancestor named containerd-shim*);
//     this is dockerd's own containerd. The shim double-forks and is
//     reparented to PID 1, so in practice this, not 1, is how the plugin's
//     dockerd is found;
//  3. with an external containerd (dockerd --containerd=ADDR, as the distros'
//     docker.service does), the candidate started with --containerd equal to
//     the shim's -address;
//  4. otherwise the only candidate left: one whose own containerd child is
//     shown not to serve the shim's address is not left.
//
// When several candidates are equally tied, none is chosen: weft refuses to
// guess and says so in its log.

// initUserNS is how the initial user namespace reads in /proc/PID/ns/user:
// its inode number is fixed by the kernel (PROC_USER_INIT_INO).
const initUserNS = "user:[4026531837]"

// Proc is the little of /proc that finding dockerd reads, so that tests can
// supply a fake process tree. Names are relative to /proc/<pid>/.
type Proc interface {
	// Self is the pid of this process.
	Self() int
	// Pids lists the processes.
	Pids() ([]int, error)
	// ReadFile reads comm, status, cmdline or net/unix.
	ReadFile(pid int, name string) ([]byte, error)
	// Readlink reads exe, ns/user or ns/net.
	Readlink(pid int, name string) (string, error)
	// FDs lists the targets of the process's fd/* links.
	FDs(pid int) ([]string, error)
}

// HostProc reads the real /proc at Dir.
type HostProc struct{ Dir string }

func (h HostProc) Self() int { return os.Getpid() }

func (h HostProc) Pids() ([]int, error) {
	ents, err := os.ReadDir(h.Dir)
	if err != nil {
		return nil, err
	}
	var out []int
	for _, e := range ents {
		if pid, err := strconv.Atoi(e.Name()); err == nil && pid > 0 {
			out = append(out, pid)
		}
	}
	return out, nil
}

func (h HostProc) ReadFile(pid int, name string) ([]byte, error) {
	return os.ReadFile(filepath.Join(h.Dir, strconv.Itoa(pid), name))
}

func (h HostProc) Readlink(pid int, name string) (string, error) {
	return os.Readlink(filepath.Join(h.Dir, strconv.Itoa(pid), name))
}

func (h HostProc) FDs(pid int) ([]string, error) {
	dir := filepath.Join(h.Dir, strconv.Itoa(pid), "fd")
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	out := make([]string, 0, len(ents))
	for _, e := range ents {
		if l, err := os.Readlink(filepath.Join(dir, e.Name())); err == nil {
			out = append(out, l)
		}
	}
	return out, nil
}

// Dockerd is the dockerd chosen as the host root.
type Dockerd struct {
	Pid int
	// Why says how it is tied to the plugin.
	Why string
	// Ignored lists the other processes named dockerd, each with why it
	// was not chosen ("pid 123: ...").
	Ignored []string
}

// procStatus is what finding dockerd reads from /proc/PID/status.
type procStatus struct {
	ppid int
	uids [4]int // real, effective, saved, file system
}

func parseStatus(b []byte) (procStatus, error) {
	var st procStatus
	var haveUID, havePPid bool
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		f := strings.Fields(v)
		switch k {
		case "PPid":
			if len(f) != 1 {
				return st, errors.New("malformed PPid line")
			}
			p, err := strconv.Atoi(f[0])
			if err != nil {
				return st, fmt.Errorf("malformed PPid line: %w", err)
			}
			st.ppid, havePPid = p, true
		case "Uid":
			if len(f) != 4 {
				return st, errors.New("malformed Uid line")
			}
			for i := range f {
				u, err := strconv.Atoi(f[i])
				if err != nil {
					return st, fmt.Errorf("malformed Uid line: %w", err)
				}
				st.uids[i] = u
			}
			haveUID = true
		}
	}
	if !haveUID || !havePPid {
		return st, errors.New("no Uid or PPid line")
	}
	return st, nil
}

// finder reads one process tree once per FindDockerd.
type finder struct {
	p        Proc
	comm     map[int]string
	status   map[int]*procStatus
	initUser string
	selfNet  string
}

func (f *finder) stat(pid int) (*procStatus, error) {
	if st, ok := f.status[pid]; ok {
		if st == nil {
			return nil, errors.New("status unreadable")
		}
		return st, nil
	}
	b, err := f.p.ReadFile(pid, "status")
	if err == nil {
		var st procStatus
		if st, err = parseStatus(b); err == nil {
			f.status[pid] = &st
			return &st, nil
		}
	}
	f.status[pid] = nil
	return nil, fmt.Errorf("status unreadable: %w", err)
}

func (f *finder) commOf(pid int) string {
	if c, ok := f.comm[pid]; ok {
		return c
	}
	b, _ := f.p.ReadFile(pid, "comm")
	c := strings.TrimSuffix(string(b), "\n")
	f.comm[pid] = c
	return c
}

func (f *finder) cmdline(pid int) []string {
	b, err := f.p.ReadFile(pid, "cmdline")
	if err != nil {
		return nil
	}
	return strings.Split(strings.TrimSuffix(string(b), "\x00"), "\x00")
}

// initialUserNS finds how the initial user namespace reads: as PID 1's (the
// plugin has the host's PID namespace); where PID 1's cannot be read (some
// sandboxes protect it even from CAP_SYS_PTRACE), as kthreadd's, a kernel
// thread (PID 2, parent 0); else the kernel's fixed inode.
func (f *finder) initialUserNS() string {
	if l, err := f.p.Readlink(1, "ns/user"); err == nil && l != "" {
		return l
	}
	if st, err := f.stat(2); err == nil && st.ppid == 0 && f.commOf(2) == "kthreadd" {
		if l, err := f.p.Readlink(2, "ns/user"); err == nil && l != "" {
			return l
		}
	}
	return initUserNS
}

// rootProblem says why pid is not root in the initial user namespace ("" if
// it is).
func (f *finder) rootProblem(pid int) string {
	st, err := f.stat(pid)
	if err != nil {
		return err.Error()
	}
	if st.uids != [4]int{} {
		return fmt.Sprintf("not root: uids %d/%d/%d/%d (real/effective/saved/fs)", st.uids[0], st.uids[1], st.uids[2], st.uids[3])
	}
	ns, err := f.p.Readlink(pid, "ns/user")
	if err != nil {
		return fmt.Sprintf("user namespace unreadable: %v", err)
	}
	if ns != f.initUser {
		return fmt.Sprintf("in user namespace %s, not the initial one %s", ns, f.initUser)
	}
	return ""
}

// dockerdProblem says why pid, named dockerd, is not a candidate ("" if it
// is).
func (f *finder) dockerdProblem(pid int) string {
	exe, err := f.p.Readlink(pid, "exe")
	if err != nil {
		return fmt.Sprintf("executable unreadable: %v", err)
	}
	if filepath.Base(strings.TrimSuffix(exe, " (deleted)")) != "dockerd" {
		return fmt.Sprintf("executable %s is not dockerd", exe)
	}
	if p := f.rootProblem(pid); p != "" {
		return p
	}
	ns, err := f.p.Readlink(pid, "ns/net")
	if err != nil {
		return fmt.Sprintf("network namespace unreadable: %v", err)
	}
	if ns != f.selfNet {
		return fmt.Sprintf("in network namespace %s, not the plugin's %s", ns, f.selfNet)
	}
	return ""
}

// ancestors lists the plugin's ancestors, nearest first.
func (f *finder) ancestors() []int {
	var out []int
	seen := map[int]bool{}
	for pid := f.p.Self(); pid > 1 && !seen[pid] && len(out) < 1024; {
		seen[pid] = true
		st, err := f.stat(pid)
		if err != nil || st.ppid <= 0 {
			break
		}
		out = append(out, st.ppid)
		pid = st.ppid
	}
	return out
}

// flagValue returns the value of -name or --name (as NAME VALUE or
// NAME=VALUE) in args.
func flagValue(args []string, name string) string {
	for i, a := range args {
		for _, p := range []string{"-" + name, "--" + name} {
			if a == p && i+1 < len(args) {
				return args[i+1]
			}
			if v, ok := strings.CutPrefix(a, p+"="); ok {
				return v
			}
		}
	}
	return ""
}

func socketPath(s string) string {
	s = strings.TrimPrefix(s, "unix://")
	if s == "" {
		return ""
	}
	return filepath.Clean(s)
}

// listens reports whether pid holds a listening unix socket bound to path:
// the sockets of its network namespace (net/unix) bound to path whose inode
// is one of its file descriptors.
func (f *finder) listens(pid int, path string) bool {
	b, err := f.p.ReadFile(pid, "net/unix")
	if err != nil {
		return false
	}
	inodes := map[string]bool{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		// Num RefCount Protocol Flags Type St Inode Path
		fl := strings.Fields(sc.Text())
		if len(fl) < 8 || socketPath(fl[7]) != path {
			continue
		}
		flags, err := strconv.ParseUint(fl[3], 16, 32)
		if err != nil || flags&0x10000 == 0 { // __SO_ACCEPTCON: listening
			continue
		}
		inodes["socket:["+fl[6]+"]"] = true
	}
	if len(inodes) == 0 {
		return false
	}
	fds, _ := f.p.FDs(pid)
	for _, l := range fds {
		if inodes[l] {
			return true
		}
	}
	return false
}

func pidList(pids []int) string {
	s := make([]string, len(pids))
	for i, p := range pids {
		s[i] = strconv.Itoa(p)
	}
	return strings.Join(s, ", ")
}

// FindDockerd finds the dockerd that runs this plugin in the process tree p
// (see the rules above). On error, Ignored is still filled in.
func FindDockerd(p Proc) (Dockerd, error) {
	f := &finder{p: p, comm: map[int]string{}, status: map[int]*procStatus{}}
	var d Dockerd
	self := p.Self()
	var err error
	if f.selfNet, err = p.Readlink(self, "ns/net"); err != nil {
		return d, fmt.Errorf("reading the plugin's own network namespace: %w", err)
	}
	f.initUser = f.initialUserNS()
	pids, err := p.Pids()
	if err != nil {
		return d, fmt.Errorf("listing processes: %w", err)
	}
	sort.Ints(pids)
	var cands, containerds []int
	isCand := map[int]bool{}
	for _, pid := range pids {
		switch f.commOf(pid) {
		case "dockerd":
			if why := f.dockerdProblem(pid); why != "" {
				d.Ignored = append(d.Ignored, fmt.Sprintf("pid %d: %s", pid, why))
				continue
			}
			cands = append(cands, pid)
			isCand[pid] = true
		case "containerd":
			containerds = append(containerds, pid)
		}
	}
	noted := map[int]bool{} // candidates already in d.Ignored
	choose := func(pid int, why string) (Dockerd, error) {
		d.Pid, d.Why = pid, why
		for _, c := range cands {
			if c != pid && !noted[c] {
				d.Ignored = append(d.Ignored, fmt.Sprintf("pid %d: not tied to the plugin", c))
			}
		}
		return d, nil
	}
	if len(cands) == 0 {
		return d, errors.New("no process named dockerd runs as root in the initial user namespace and in the plugin's network namespace")
	}

	// 1. An ancestor.
	anc := f.ancestors()
	shim := 0
	chain := []string{fmt.Sprintf("%s %d", f.commOf(self), self)}
	for _, a := range anc {
		chain = append(chain, fmt.Sprintf("%s %d", f.commOf(a), a))
		if isCand[a] {
			return choose(a, "an ancestor of the plugin: "+strings.Join(chain, " <- "))
		}
		if shim == 0 && strings.HasPrefix(f.commOf(a), "containerd-shim") && f.rootProblem(a) == "" {
			shim = a
		}
	}

	// 2 and 3. Through the shim's containerd address.
	addr := ""
	if shim != 0 {
		addr = socketPath(flagValue(f.cmdline(shim), "address"))
	}
	left := cands
	untied := "the plugin has no containerd-shim ancestor run by root with an -address"
	if addr != "" {
		var tied, unknown []int
		why := map[int]string{}
		// The containerds that serve the shim: run by root, in the shim's
		// mount namespace (where its -address is a path), listening there.
		var serving []int
		childOf := map[int][]int{}
		shimMnt, _ := f.p.Readlink(shim, "ns/mnt")
		for _, c := range containerds {
			if f.rootProblem(c) != "" {
				continue
			}
			if mnt, _ := f.p.Readlink(c, "ns/mnt"); mnt == shimMnt && f.listens(c, addr) {
				serving = append(serving, c)
			}
			if st, err := f.stat(c); err == nil && isCand[st.ppid] {
				childOf[st.ppid] = append(childOf[st.ppid], c)
			}
		}
		for _, dd := range cands {
			kids := childOf[dd]
			if c := firstCommon(kids, serving); c != 0 {
				tied = append(tied, dd)
				why[dd] = fmt.Sprintf("the parent of containerd %d, which listens on %s, the address of the plugin's containerd-shim %d", c, addr, shim)
				continue
			}
			if socketPath(flagValue(f.cmdline(dd), "containerd")) == addr {
				tied = append(tied, dd)
				why[dd] = fmt.Sprintf("started with --containerd %s, the address of the plugin's containerd-shim %d", addr, shim)
				continue
			}
			if len(kids) > 0 && len(serving) > 0 {
				noted[dd] = true
				d.Ignored = append(d.Ignored, fmt.Sprintf("pid %d: its containerd %s does not serve %s, the address of the plugin's containerd-shim %d", dd, pidList(kids), addr, shim))
				continue
			}
			unknown = append(unknown, dd)
		}
		switch {
		case len(tied) == 1:
			return choose(tied[0], why[tied[0]])
		case len(tied) > 1:
			return d, fmt.Errorf("dockerds %s are all tied to the plugin's containerd-shim %d at %s: refusing to guess", pidList(tied), shim, addr)
		}
		left = unknown
		if len(serving) == 0 {
			untied = fmt.Sprintf("no containerd run by root listens on %s, the address of the plugin's containerd-shim %d", addr, shim)
		} else {
			var parents []string
			for _, c := range serving {
				if st, err := f.stat(c); err == nil {
					parents = append(parents, fmt.Sprintf("containerd %d (parent %s %d)", c, f.commOf(st.ppid), st.ppid))
				}
			}
			untied = fmt.Sprintf("the plugin's containerd-shim %d uses %s at %s, not a child of a candidate dockerd, and no candidate was started with --containerd %s", shim, strings.Join(parents, ", "), addr, addr)
		}
	}

	// 4. The only one left.
	switch len(left) {
	case 0:
		return d, fmt.Errorf("no dockerd run by root in the initial user namespace is tied to the plugin: %s", untied)
	case 1:
		return choose(left[0], "the only dockerd run by root in the initial user namespace and the plugin's network namespace; not tied to the plugin through its process tree ("+untied+")")
	}
	d.Ignored = append(d.Ignored, fmt.Sprintf("pids %s: not tied to the plugin", pidList(left)))
	return d, fmt.Errorf("dockerds %s run as root in the initial user namespace and the plugin's network namespace, and none is tied to the plugin (%s): refusing to guess", pidList(left), untied)
}

// firstCommon returns the first of a that is also in b, or 0.
func firstCommon(a, b []int) int {
	for _, x := range a {
		for _, y := range b {
			if x == y {
				return x
			}
		}
	}
	return 0
}

// dockerdLogged is the last choice logged, so that each is logged once
// (DockerdRoots is called on every attempt to reach a sandbox).
var dockerdLogged struct {
	sync.Mutex
	last string
}

func logDockerd(d Dockerd, err error) {
	key := fmt.Sprint(d.Pid, d.Why)
	if err != nil {
		key = "none: " + err.Error()
	}
	dockerdLogged.Lock()
	defer dockerdLogged.Unlock()
	if key == dockerdLogged.last {
		return
	}
	dockerdLogged.last = key
	log := logrus.NewEntry(logrus.StandardLogger())
	if len(d.Ignored) > 0 {
		log = log.WithField("ignored", d.Ignored)
	}
	if err != nil {
		log.WithError(err).Warn("no dockerd chosen as the host root: SYSFS_ROOT=auto and HOST_ROOT=auto cannot reach the host's /sys and container sandboxes through dockerd")
		return
	}
	log.WithFields(logrus.Fields{"pid": d.Pid, "root": dockerdRoot(d.Pid), "why": d.Why}).Info("dockerd chosen as the host root")
}

func dockerdRoot(pid int) string { return filepath.Join("/proc", strconv.Itoa(pid), "root") }

// DockerdRoots returns /proc/<pid>/root of the dockerd that runs this
// plugin (see FindDockerd), or nothing when none can be told: with the
// host's PID namespace (a managed plugin with pidhost), the host's file
// system as that dockerd sees it, reachable without mounting anything. The
// choice is logged once, at Info, and a warning when there is none.
func DockerdRoots() []string {
	d, err := FindDockerd(HostProc{Dir: "/proc"})
	logDockerd(d, err)
	if err != nil {
		return nil
	}
	return []string{dockerdRoot(d.Pid)}
}
