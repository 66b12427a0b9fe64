package netutil

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// procSysRoots lists where sysctls may be written: ProcSys first, then the
// host's /proc/sys through dockerd's root (a managed plugin's own /proc/sys
// is read-only; with pidhost the host's is reachable there). Writes to
// /proc/sys/net apply to the writer's network namespace, the host's here.
var procSysRoots = func() []string {
	roots := []string{ProcSys}
	for _, r := range DockerdRoots() {
		roots = append(roots, filepath.Join(r, "proc/sys"))
	}
	return roots
}

// SetIPv6Conf sets net.ipv6.conf.IF.KEY (rtnetlink cannot set IPv6
// devconf). Nothing is done when the value is already there, or when the
// host has no IPv6 for the interface (no such file: nothing to protect).
func SetIPv6Conf(ifname, key, value string) error {
	rel := filepath.Join("net/ipv6/conf", ifname, key)
	b, err := os.ReadFile(filepath.Join(ProcSys, rel))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err == nil && strings.TrimSpace(string(b)) == value {
		return nil
	}
	var errs []error
	for _, root := range procSysRoots() {
		err := os.WriteFile(filepath.Join(root, rel), []byte(value), 0o644)
		if err == nil {
			return nil
		}
		errs = append(errs, err)
	}
	return fmt.Errorf("set net.ipv6.conf.%s.%s=%s: %w", ifname, key, value, errors.Join(errs...))
}

// RefuseRouterAdvertisements makes the interface ignore IPv6 Router
// Advertisements (accept_ra=0) and take no address from their prefixes
// (autoconf=0): a container must not change the host's routes or
// addresses by sending one.
func RefuseRouterAdvertisements(ifname string) error {
	for _, k := range []string{"accept_ra", "autoconf"} {
		if err := SetIPv6Conf(ifname, k, "0"); err != nil {
			return fmt.Errorf("%w; a container could change the host's IPv6 routes with Router Advertisements", err)
		}
	}
	return nil
}
