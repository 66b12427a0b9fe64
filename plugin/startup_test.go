package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/docker/go-plugins-helpers/ipam"

	"github.com/weft-net/weft/driver/api"
	"github.com/weft-net/weft/ipamdriver"
	"github.com/weft-net/weft/store"
)

// TestStartupWith1000Endpoints runs the real plugin binary in a throwaway
// network namespace over a store holding 1000 endpoints, and checks that it
// answers Docker's first call within a second and has loaded everything.
func TestStartupWith1000Endpoints(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: the plugin runs in its own network namespace (unshare -n)")
	}
	if _, err := exec.LookPath("unshare"); err != nil {
		t.Skip("needs unshare (util-linux)")
	}
	if _, err := os.Stat("/usr/sbin/iptables-nft"); err != nil {
		t.Skip("needs Debian's iptables package (/usr/sbin/iptables-nft)")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "weft")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	stateDir := filepath.Join(dir, "state")
	const count = 1000
	lastEP := fillStore(t, filepath.Join(stateDir, "local.db"), count)

	sock := filepath.Join(dir, "weft.sock")
	cmd := exec.Command("unshare", "-n", bin)
	cmd.Env = append(os.Environ(), "STATE_DIR="+stateDir, "SOCKET="+sock, "LOG_LEVEL=info")
	var logs bytes.Buffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
	}()
	client := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return net.Dial("unix", sock)
	}}, Timeout: 10 * time.Second}
	call := func(method string, req any) (map[string]any, error) {
		b, _ := json.Marshal(req)
		resp, err := client.Post("http://weft/"+method, "application/json", bytes.NewReader(b))
		if err != nil {
			return nil, err
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		var out map[string]any
		_ = json.Unmarshal(body, &out)
		if resp.StatusCode != 200 {
			return out, fmt.Errorf("%s: %d %s", method, resp.StatusCode, body)
		}
		return out, nil
	}
	var answered time.Duration
	for time.Since(start) < 10*time.Second {
		if out, err := call("NetworkDriver.GetCapabilities", struct{}{}); err == nil {
			if out["Scope"] != "local" {
				t.Fatalf("capabilities %v", out)
			}
			answered = time.Since(start)
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	if answered == 0 {
		t.Fatalf("plugin never answered; log:\n%s", logs.String())
	}
	t.Logf("first answer after %s with %d stored endpoints", answered, count)
	if answered > time.Second {
		t.Fatalf("plugin took %s to answer with %d endpoints stored (limit 1s)", answered, count)
	}
	// The stored state is there (this call waits for the start-up reconcile).
	out, err := call("NetworkDriver.EndpointOperInfo", map[string]string{"NetworkID": "n" + strings.Repeat("0", 63), "EndpointID": lastEP})
	if err != nil {
		t.Fatalf("stored endpoint not loaded: %v\n%s", err, logs.String())
	}
	if _, ok := out["Value"]; !ok {
		t.Fatalf("endpoint info %v", out)
	}
	if !strings.Contains(logs.String(), fmt.Sprintf("endpoints=%d", count)) {
		t.Fatalf("log does not report %d endpoints:\n%s", count, logs.String())
	}
}

// fillStore writes one bridge network with count endpoints and their
// addresses, as the plugin itself would have.
func fillStore(t *testing.T, path string, count int) string {
	t.Helper()
	st, err := store.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ipd, err := ipamdriver.New(st, ipamdriver.Config{HostPrefixes: func() ([]netip.Prefix, error) { return nil, nil }})
	if err != nil {
		t.Fatal(err)
	}
	pool, err := ipd.RequestPool(&ipam.RequestPoolRequest{AddressSpace: ipamdriver.LocalAddressSpace, Pool: "10.250.0.0/16"})
	if err != nil {
		t.Fatal(err)
	}
	gw, err := ipd.RequestAddress(&ipam.RequestAddressRequest{PoolID: pool.PoolID, Options: map[string]string{"RequestAddressType": "com.docker.network.gateway"}})
	if err != nil {
		t.Fatal(err)
	}
	netID := "n" + strings.Repeat("0", 63)
	n := api.Network{ID: netID, Type: "bridge", Options: map[string]string{},
		Pools: []netip.Prefix{netip.MustParsePrefix("10.250.0.0/16")}, Gateways: []netip.Prefix{netip.MustParsePrefix(gw.Address)},
		State: map[string]string{"bridge": "weft-starttest", "mtu": "1500", "icc": "true", "masquerade": "true"}}
	var last string
	err = st.Update(func(tx *store.Tx) error {
		if err := tx.Put("networks", netID, n); err != nil {
			return err
		}
		for i := 0; i < count; i++ {
			a := netip.AddrFrom4([4]byte{10, 250, byte(i / 250), byte(i%250 + 2)})
			ep := api.Endpoint{ID: fmt.Sprintf("e%063d", i), NetworkID: netID, Addr4: netip.PrefixFrom(a, 16),
				MAC: "02:42:00:00:00:01", HostIf: fmt.Sprintf("wfhe%011d", i)}
			last = ep.ID
			if err := tx.Put("endpoints", netID+"/"+ep.ID, ep); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return last
}
