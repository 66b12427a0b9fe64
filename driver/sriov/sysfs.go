package sriov

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
)

// Sysfs reads a physical function's SR-IOV attributes under Root (normally
// /sys; tests point it at a fake tree). Only what the kernel documents is
// used: class/net/<pf>/device/{sriov_totalvfs,sriov_numvfs,virtfn<N>/net/<vf>}.
type Sysfs struct {
	Root string
}

// ErrNoPF and ErrNotSRIOV tell a missing interface from one that is not a PF.
var (
	ErrNoPF     = errors.New("no such network interface")
	ErrNotSRIOV = errors.New("not an SR-IOV physical function")
)

func (s Sysfs) dev(pf string) string { return filepath.Join(s.Root, "class", "net", pf, "device") }

func (s Sysfs) readInt(pf, file string) (int, error) {
	if _, err := os.Stat(filepath.Join(s.Root, "class", "net", pf)); err != nil {
		return 0, fmt.Errorf("%s (looked in %s): %w", pf, filepath.Join(s.Root, "class", "net"), ErrNoPF)
	}
	b, err := os.ReadFile(filepath.Join(s.dev(pf), file))
	if errors.Is(err, fs.ErrNotExist) {
		return 0, fmt.Errorf("%s has no %s: %w", pf, file, ErrNotSRIOV)
	}
	if err != nil {
		return 0, fmt.Errorf("read %s of %s: %w", file, pf, err)
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 0, fmt.Errorf("%s of %s: %q is not a number", file, pf, strings.TrimSpace(string(b)))
	}
	return n, nil
}

// TotalVFs is how many VFs the PF can have.
func (s Sysfs) TotalVFs(pf string) (int, error) { return s.readInt(pf, "sriov_totalvfs") }

// NumVFs is how many VFs the PF has now.
func (s Sysfs) NumVFs(pf string) (int, error) { return s.readInt(pf, "sriov_numvfs") }

// SetNumVFs creates (n > 0) or removes (n = 0) the PF's VFs. The kernel
// refuses to change one non-zero count into another.
func (s Sysfs) SetNumVFs(pf string, n int) error {
	if err := os.WriteFile(filepath.Join(s.dev(pf), "sriov_numvfs"), []byte(strconv.Itoa(n)), 0o644); err != nil {
		return fmt.Errorf("set sriov_numvfs=%d on %s: %w", n, pf, err)
	}
	return nil
}

var virtfn = regexp.MustCompile(`^virtfn(\d+)$`)

// VFs maps each VF index to its network interface. A VF bound to a driver
// without a netdev (vfio-pci, say) has none and is left out.
func (s Sysfs) VFs(pf string) (map[int]string, error) {
	ents, err := os.ReadDir(s.dev(pf))
	if err != nil {
		return nil, fmt.Errorf("list VFs of %s: %w", pf, err)
	}
	out := map[int]string{}
	for _, e := range ents {
		m := virtfn.FindStringSubmatch(e.Name())
		if m == nil {
			continue
		}
		idx, _ := strconv.Atoi(m[1])
		nets, err := os.ReadDir(filepath.Join(s.dev(pf), e.Name(), "net"))
		if err != nil || len(nets) == 0 {
			continue
		}
		names := make([]string, 0, len(nets))
		for _, n := range nets {
			names = append(names, n.Name())
		}
		sort.Strings(names)
		out[idx] = names[0]
	}
	return out, nil
}

// MTU is the PF's MTU, or 0 when sysfs does not say.
func (s Sysfs) MTU(pf string) int {
	b, err := os.ReadFile(filepath.Join(s.Root, "class", "net", pf, "mtu"))
	if err != nil {
		return 0
	}
	n, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return n
}
