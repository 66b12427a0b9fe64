// Command weft is the Docker network plugin: one unix socket serving both
// the NetworkDriver and the IpamDriver APIs.
package main

import (
	"context"
	"encoding/base64"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/coreos/go-iptables/iptables"
	"github.com/docker/go-plugins-helpers/ipam"
	"github.com/docker/go-plugins-helpers/sdk"
	"github.com/sirupsen/logrus"

	"github.com/weft-net/weft/driver"
	"github.com/weft-net/weft/driver/api"
	"github.com/weft-net/weft/driver/bridge"
	"github.com/weft-net/weft/driver/ipvlan"
	"github.com/weft-net/weft/driver/macvlan"
	"github.com/weft-net/weft/driver/overlay"
	"github.com/weft-net/weft/driver/sriov"
	"github.com/weft-net/weft/firewall"
	"github.com/weft-net/weft/ipamdriver"
	"github.com/weft-net/weft/netutil"
	"github.com/weft-net/weft/store"
	"github.com/weft-net/weft/tuning"
)

// Settings come from the plugin's env (docker plugin set weft KEY=VALUE).
type Settings struct {
	LogLevel        string
	Scope           string
	DefaultPools    string
	StateDir        string
	Socket          string
	IPTablesBackend string
	ProcSys         string
	HostRoot        string
	SysfsRoot       string
	SRIOVPF         string
	// Swarm instance, overlay networks.
	GossipPort string
	VXLANPort  string
	WGPort     string
	WGBackend  string
	GossipKey  string
	ParentMap  string // NETWORK_PARENT=LOCAL_INTERFACE,...
}

func env(key, def string) string {
	if v, ok := os.LookupEnv(key); ok && v != "" {
		return v
	}
	return def
}

func loadSettings() Settings {
	return Settings{
		LogLevel:        env("LOG_LEVEL", "info"),
		Scope:           env("SCOPE", "local"),
		DefaultPools:    env("DEFAULT_POOLS", ipamdriver.DefaultPools),
		StateDir:        env("STATE_DIR", "/var/lib/weft"),
		Socket:          env("SOCKET", "/run/docker/plugins/weft.sock"),
		IPTablesBackend: env("IPTABLES_BACKEND", "auto"),
		ProcSys:         env("PROC_SYS", "/proc/sys"),
		// With the host's PID namespace (pidhost), /proc/<dockerd>/root is
		// the host's root as dockerd sees it: containers' namespaces (the
		// Join's SandboxKey) and a writable /proc/sys are reachable there
		// without mounting anything. "" when weft runs on the host itself.
		HostRoot: env("HOST_ROOT", "auto"),
		// Where SR-IOV VFs are discovered. A managed plugin's own /sys is
		// read-only, so "auto" is the host's /sys through dockerd's root
		// (writable, for numvfs), or /sys when no dockerd is found.
		SysfsRoot: env("SYSFS_ROOT", "auto"),
		// netlink configures VFs through the PF; record only records the
		// calls, for tests with a fake SYSFS_ROOT.
		SRIOVPF: env("SRIOV_PF", "netlink"),
		// Ports of the overlay: not Docker's (7946, 4789), so weft's
		// overlay and Docker's can run on the same hosts.
		GossipPort: env("GOSSIP_PORT", "7947"),
		VXLANPort:  env("VXLAN_PORT", "4800"),
		WGPort:     env("WG_PORT", "51830"),
		WGBackend:  env("WG_BACKEND", "auto"),
		GossipKey:  env("GOSSIP_KEY", ""),
		ParentMap:  env("PARENT_MAP", ""),
	}
}

func main() {
	if err := run(loadSettings()); err != nil {
		logrus.WithError(err).Error("weft stopped")
		fmt.Fprintln(os.Stderr, "weft:", err)
		os.Exit(1)
	}
}

func run(s Settings) error {
	lvl, err := logrus.ParseLevel(s.LogLevel)
	if err != nil {
		return fmt.Errorf("setting LOG_LEVEL=%q: want debug, info, warn or error", s.LogLevel)
	}
	logrus.SetLevel(lvl)
	// dockerd logs a plugin's stderr at level error: keep stderr for failures.
	logrus.SetOutput(os.Stdout)
	logrus.SetFormatter(&logrus.TextFormatter{FullTimestamp: true, DisableColors: true})
	switch s.Scope {
	case "local", "global":
	default:
		return fmt.Errorf("setting SCOPE=%q: want local (networks on this host) or global (the swarm instance: install a second copy, e.g. as weft-swarm, with SCOPE=global)", s.Scope)
	}
	pools, err := ipamdriver.ParsePools(s.DefaultPools)
	if err != nil {
		return err
	}
	netutil.ProcSys = s.ProcSys

	// Listen first: dockerd gives a fresh plugin only a few seconds.
	if err := os.MkdirAll(filepath.Dir(s.Socket), 0o755); err != nil {
		return fmt.Errorf("socket directory: %w", err)
	}
	_ = os.Remove(s.Socket)
	ln, err := net.Listen("unix", s.Socket)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", s.Socket, err)
	}
	defer ln.Close()

	st, err := store.Open(filepath.Join(s.StateDir, s.Scope+".db"))
	if err != nil {
		return err
	}
	defer st.Close()

	iptBackend := s.IPTablesBackend
	if s.Scope == "global" {
		// The swarm instance's types (macvlan, ipvlan) need no rules, and
		// its chains must not be the local instance's on the same host.
		iptBackend = "none"
	}
	backend, why, err := firewall.DetectBackend(iptBackend)
	if err != nil {
		return err
	}
	var fw *firewall.Firewall
	var v4, v6 *iptables.IPTables
	var err6 error
	if backend != "none" {
		if v4, v6, err6, err = firewall.Open(backend); err != nil {
			return err
		}
	}
	switch {
	case s.Scope == "global":
		// The overlay installs its own WEFTS-* rules (overlayType).
		fw = firewall.New(nil, nil)
	case backend == "none":
		// For kernels without netfilter (the kernel lab): macvlan and
		// ipvlan need no rules, but bridge networks get no NAT or isolation.
		logrus.Warn("IPTABLES_BACKEND=none: weft installs no firewall rules; bridge networks have no NAT, isolation or published ports")
		fw = firewall.New(nil, nil)
	case v6 == nil:
		logrus.WithError(err6).Warn("ip6tables unavailable: bridge networks with --ipv6 are refused (their IPv6 rules could not be installed)")
		fw = firewall.New(v4, nil)
	default:
		fw = firewall.New(v4, v6)
	}
	if s.Scope == "local" {
		logrus.WithFields(logrus.Fields{"backend": backend, "why": why}).Info("iptables backend chosen")
	}

	ipd, err := ipamdriver.New(st, ipamdriver.Config{DefaultPools: pools, Swarm: s.Scope == "global"})
	if err != nil {
		return err
	}
	label, err := driver.Label(s.Scope, st)
	if err != nil {
		return err
	}
	vfs, err := sriovType(s)
	if err != nil {
		return err
	}
	types := []api.NetworkType{&macvlan.Type{Scope: label}, &ipvlan.Type{Scope: label}}
	var ovl *overlay.Type
	if s.Scope == "local" {
		// Swarm networks span hosts: a bridge or a host's VF does not.
		types = append(types, &bridge.Type{Scope: label, NoLoopbackGuard: backend == "none"}, vfs)
	} else {
		if ovl, err = overlayType(s, st, label); err != nil {
			return err
		}
		defer ovl.Shutdown()
		types = append(types, ovl)
	}
	drv, err := driver.New(st, fw, s.Scope, label, types...)
	if err != nil {
		return err
	}
	drv.SetInside(tuning.Inside{HostRoot: s.HostRoot, Timeout: 30 * time.Second})
	if s.Scope == "local" {
		drv.SetFirewallCaps(firewallCaps(backend, v6, err6))
	}
	pm, err := driver.ParseParentMap(s.ParentMap)
	if err != nil {
		return err
	}
	drv.SetParentMap(pm)
	nn, ne := drv.Counts()
	logrus.WithFields(logrus.Fields{"socket": s.Socket, "state": st.Path(), "networks": nn, "endpoints": ne}).Info("weft listening")

	srv := &http.Server{Handler: newMux(drv, ipd), ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := drv.Reconcile(); err != nil {
			logrus.WithError(err).Error("reconcile at start found problems")
		}
		if ovl != nil {
			ovl.Resume()
		}
	}()
	stop := make(chan struct{})
	defer close(stop)
	go drv.Watch(stop, 10*time.Second)
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	select {
	case <-sig:
		// Finish calls in flight (a veth half-labelled is a leftover), then
		// stop. Kernel state stays: containers keep running while weft is away.
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
		logrus.Info("weft shutting down; networks stay in place")
		return nil
	case err := <-errc:
		return fmt.Errorf("serve: %w", err)
	}
}

// firewallCaps says what the local instance's firewall can do: with
// IPTABLES_BACKEND=none nothing, without a working ip6tables no IPv6 rules
// (IPv6 bridge networks are then refused).
func firewallCaps(backend firewall.Backend, v6 *iptables.IPTables, err6 error) driver.FirewallCaps {
	if backend == "none" {
		return driver.FirewallCaps{None: true}
	}
	if v6 == nil {
		return driver.FirewallCaps{NoIPv6: true, Err6: err6}
	}
	return driver.FirewallCaps{}
}

// overlayType builds the swarm instance's overlay type from the settings.
func overlayType(s Settings, st *store.Store, label string) (*overlay.Type, error) {
	var cfg overlay.Settings
	for _, p := range []struct {
		name, val string
		dst       *int
	}{{"GOSSIP_PORT", s.GossipPort, &cfg.GossipPort}, {"VXLAN_PORT", s.VXLANPort, &cfg.VXLANPort}, {"WG_PORT", s.WGPort, &cfg.WGPort}} {
		v, err := strconv.Atoi(p.val)
		if err != nil || v < 1 || v > 65535 {
			return nil, fmt.Errorf("setting %s=%q: want a UDP/TCP port, 1 to 65535", p.name, p.val)
		}
		*p.dst = v
	}
	switch s.WGBackend {
	case "auto":
	case "kernel", "userspace":
		cfg.WGBackend = s.WGBackend
	default:
		return nil, fmt.Errorf("setting WG_BACKEND=%q: want auto (kernel WireGuard when the kernel has it, else wireguard-go), kernel or userspace", s.WGBackend)
	}
	if s.GossipKey != "" {
		k, err := base64.StdEncoding.DecodeString(s.GossipKey)
		if err != nil || (len(k) != 16 && len(k) != 24 && len(k) != 32) {
			return nil, fmt.Errorf("setting GOSSIP_KEY: want 16, 24 or 32 random bytes in base64 (e.g. head -c 32 /dev/urandom | base64)")
		}
		cfg.ClusterKey = k
	}
	cfg.KeyFile = filepath.Join(s.StateDir, "wireguard-"+s.Scope+".key")
	backend, why, err := firewall.DetectBackend(s.IPTablesBackend)
	if err != nil {
		return nil, err
	}
	logrus.WithFields(logrus.Fields{"backend": backend, "why": why}).Info("iptables backend chosen for the overlay's WEFTS-* rules")
	var rules overlay.IPTablesRules
	if backend != "none" {
		v4, v6, err6, err := firewall.Open(backend)
		if err != nil {
			return nil, err
		}
		if err6 != nil {
			logrus.WithError(err6).Warn("ip6tables unavailable: encrypted overlay networks cannot be created")
		}
		rules = overlay.IPTablesRules{V4: v4, V6: v6}
	}
	id, err := st.InstanceID()
	if err != nil {
		return nil, err
	}
	host, _ := os.Hostname()
	return &overlay.Type{Scope: label, Member: host + "-" + id, Cfg: cfg, St: st, Rules: rules}, nil
}

// sriovType builds the SR-IOV network type from the settings.
func sriovType(s Settings) (*sriov.Type, error) {
	root := s.SysfsRoot
	if root == "auto" {
		root = "/sys"
		if r := netutil.DockerdRoots(); len(r) > 0 {
			root = filepath.Join(r[0], "sys")
		}
	}
	t := &sriov.Type{Sysfs: sriov.Sysfs{Root: root}, VFWait: 10 * time.Second}
	switch s.SRIOVPF {
	case "netlink":
		t.PF = sriov.NetlinkPF{}
	case "record":
		t.PF = &sriov.RecordPF{Path: filepath.Join(root, "weft-pf-record.json")}
		logrus.WithField("file", filepath.Join(root, "weft-pf-record.json")).Warn("SRIOV_PF=record: VF settings are recorded, not applied to any NIC")
	default:
		return nil, fmt.Errorf("setting SRIOV_PF=%q: want netlink (configure VFs through the PF) or record (tests: record the calls in SYSFS_ROOT/weft-pf-record.json)", s.SRIOVPF)
	}
	return t, nil
}

// handle registers one protocol call: decode the JSON request, call fn,
// encode the reply or {"Err": ...} for Docker to show the user.
func handle[Req any, Resp any](mux *http.ServeMux, path string, fn func(*Req) (Resp, error)) {
	mux.HandleFunc(path, func(w http.ResponseWriter, r *http.Request) {
		req := new(Req)
		if r.ContentLength != 0 {
			if err := sdk.DecodeRequest(w, r, req); err != nil {
				return
			}
		}
		start := time.Now()
		resp, err := fn(req)
		log := logrus.WithFields(logrus.Fields{"call": path, "took": time.Since(start).Round(time.Microsecond)})
		if err != nil {
			log.WithError(err).Warn("call failed")
			sdk.EncodeResponse(w, map[string]string{"Err": err.Error()}, true)
			return
		}
		log.Debug("call")
		sdk.EncodeResponse(w, resp, false)
	})
}

type empty struct{}

func noResp[Req any](fn func(*Req) error) func(*Req) (empty, error) {
	return func(r *Req) (empty, error) { return empty{}, fn(r) }
}

// ipamCaps adds RequiresRequestReplay, which the helpers' type lacks.
type ipamCaps struct {
	RequiresMACAddress    bool
	RequiresRequestReplay bool
}

func newMux(d *driver.Driver, i *ipamdriver.Driver) *http.ServeMux {
	mux := http.NewServeMux()
	handle(mux, "/Plugin.Activate", func(*empty) (map[string][]string, error) {
		return map[string][]string{"Implements": {"NetworkDriver", "IpamDriver"}}, nil
	})
	handle(mux, "/NetworkDriver.GetCapabilities", func(*empty) (*driver.Capabilities, error) { return d.GetCapabilities() })
	handle(mux, "/NetworkDriver.GwAllocCheck", d.GwAllocCheck) // Docker 28+
	handle(mux, "/NetworkDriver.AllocateNetwork", d.AllocateNetwork)
	handle(mux, "/NetworkDriver.FreeNetwork", noResp(d.FreeNetwork))
	handle(mux, "/NetworkDriver.CreateNetwork", noResp(d.CreateNetwork))
	handle(mux, "/NetworkDriver.DeleteNetwork", noResp(d.DeleteNetwork))
	handle(mux, "/NetworkDriver.CreateEndpoint", d.CreateEndpoint)
	handle(mux, "/NetworkDriver.DeleteEndpoint", noResp(d.DeleteEndpoint))
	handle(mux, "/NetworkDriver.EndpointOperInfo", d.EndpointInfo)
	handle(mux, "/NetworkDriver.Join", d.Join)
	handle(mux, "/NetworkDriver.Leave", noResp(d.Leave))
	handle(mux, "/NetworkDriver.DiscoverNew", noResp(d.DiscoverNew))
	handle(mux, "/NetworkDriver.DiscoverDelete", noResp(d.DiscoverDelete))
	handle(mux, "/NetworkDriver.ProgramExternalConnectivity", noResp(d.ProgramExternalConnectivity))
	handle(mux, "/NetworkDriver.RevokeExternalConnectivity", noResp(d.RevokeExternalConnectivity))

	handle(mux, "/IpamDriver.GetCapabilities", func(*empty) (ipamCaps, error) { return ipamCaps{}, nil })
	handle(mux, "/IpamDriver.GetDefaultAddressSpaces", func(*empty) (*ipam.AddressSpacesResponse, error) { return i.GetDefaultAddressSpaces() })
	handle(mux, "/IpamDriver.RequestPool", i.RequestPool)
	handle(mux, "/IpamDriver.ReleasePool", noResp(i.ReleasePool))
	handle(mux, "/IpamDriver.RequestAddress", i.RequestAddress)
	handle(mux, "/IpamDriver.ReleaseAddress", noResp(i.ReleaseAddress))
	return mux
}
