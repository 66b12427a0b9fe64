package e2e

import (
	"fmt"
	"net/http"
	"os"
	osexec "os/exec"
	"path/filepath"
	"testing"
	"time"
)

// TestInstallFromRegistryAndUpgrade installs weft from a registry (a local
// one on 127.0.0.1, apt's docker-registry), builds a network with running
// containers, and upgrades the plugin to a new tag: the containers keep
// their connectivity and published port, and weft still knows every
// network and address afterwards (state lives on the host, not in the
// plugin's rootfs, which the upgrade replaces).
func TestInstallFromRegistryAndUpgrade(t *testing.T) {
	if _, err := osexec.LookPath("docker-registry"); err != nil {
		t.Fatal("docker-registry missing (scripts/e2e-env.sh installs it)")
	}
	pluginDir, _ := filepath.Abs("../build/plugin")
	if _, err := os.Stat(filepath.Join(pluginDir, "config.json")); err != nil {
		t.Fatalf("no plugin directory at %s (make install builds it): %v", pluginDir, err)
	}
	dir := t.TempDir()
	cfg := filepath.Join(dir, "config.yml")
	_ = os.WriteFile(cfg, []byte(fmt.Sprintf("version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: 127.0.0.1:5099\n", filepath.Join(dir, "data"))), 0o644)
	reg := osexec.Command("docker-registry", "serve", cfg)
	if err := reg.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = reg.Process.Kill(); _ = reg.Wait() })
	eventually(t, 15*time.Second, "registry up", func() error {
		resp, err := http.Get("http://127.0.0.1:5099/v2/")
		if err == nil {
			resp.Body.Close()
		}
		return err
	})

	v1, v2 := "127.0.0.1:5099/weft-e2e:v1", "127.0.0.1:5099/weft-e2e:v2"
	for _, ref := range []string{v1, v2} {
		// Docker 20.10 refuses a plugin whose rootfs is byte-identical to an
		// installed one: give each build a marker of its own.
		build := filepath.Join(dir, "build-"+ref[len(ref)-2:])
		sh(t, fmt.Sprintf("cp -a %s %s && echo %s > %s/rootfs/etc/weft-build", pluginDir, build, ref, build))
		mustDocker(t, "plugin", "create", ref, build)
		mustDocker(t, "plugin", "push", ref)
		mustDocker(t, "plugin", "rm", "-f", ref)
	}

	// One local weft instance per host: the suite's plugin steps aside.
	mustDocker(t, "plugin", "disable", "-f", plugin)
	t.Cleanup(func() { _, _ = docker("plugin", "enable", plugin) })
	state := filepath.Join(dir, "state")
	if err := os.MkdirAll(state, 0o700); err != nil { // Docker does not create mount sources
		t.Fatal(err)
	}
	mustDocker(t, "plugin", "install", "--grant-all-permissions", v1, "state.source="+state)
	t.Cleanup(func() {
		_, _ = docker("plugin", "disable", "-f", v1)
		_, _ = docker("plugin", "rm", "-f", v1)
	})

	net := uniq("upg")
	mustDocker(t, "network", "create", "-d", v1, "--ipam-driver", v1, net)
	names := []string{uniq("c"), uniq("c")}
	t.Cleanup(func() {
		for _, n := range names {
			_, _ = docker("rm", "-f", n)
		}
		_, _ = docker("network", "rm", net)
	})
	mustDocker(t, "run", "-d", "--name", names[0], "--network", net, image, "sleep", "3600")
	mustDocker(t, "run", "-d", "--name", names[1], "--network", net, "-p", "18300:80", image, "httpd", "-f", "-p", "80", "-h", "/www")
	eventually(t, 5*time.Second, "published port before the upgrade", func() error { _, err := httpGet("127.0.0.1:18300"); return err })

	mustDocker(t, "plugin", "disable", "-f", v1)
	// Without --skip-remote-check the CLI asks for confirmation and, with
	// no terminal, silently does nothing.
	mustDocker(t, "plugin", "upgrade", "--grant-all-permissions", "--skip-remote-check", v1, v2)
	// Docker 20.10 keeps showing a custom mount source after an upgrade but
	// starts the plugin with the image's default until the setting is
	// applied again (seen: without this the plugin came up on an empty
	// store). README says to do this.
	t.Logf("state mount after upgrade: %s", mustDocker(t, "plugin", "inspect", "-f", "{{range .Settings.Mounts}}{{.Name}}={{.Source}}{{end}}", v1))
	mustDocker(t, "plugin", "set", v1, "state.source="+state)
	mustDocker(t, "plugin", "enable", v1)
	// The rootfs was replaced by v2's (its marker file says so).
	id := mustDocker(t, "plugin", "inspect", "-f", "{{.Id}}", v1)
	marker, err := os.ReadFile(filepath.Join(mustDocker(t, "info", "-f", "{{.DockerRootDir}}"), "plugins", id, "rootfs/etc/weft-build"))
	if err != nil || string(marker) != v2+"\n" {
		t.Fatalf("plugin rootfs after the upgrade: %q %v, want v2's marker", marker, err)
	}
	if _, err := os.Stat(filepath.Join(state, "local.db")); err != nil {
		t.Fatalf("state not in the host directory: %v", err)
	}

	if !canPing(names[0], names[1]) {
		t.Fatal("containers lost connectivity across the upgrade")
	}
	wantPage(t, "published port after the upgrade", "127.0.0.1:18300", httpGet)
	// The upgraded plugin still knows the network and its addresses.
	names = append(names, uniq("c"))
	mustDocker(t, "run", "-d", "--name", names[2], "--network", net, image, "sleep", "3600")
	ip3 := ipOf(t, names[2], net)
	if ip3 == ipOf(t, names[0], net) || ip3 == ipOf(t, names[1], net) {
		t.Fatalf("new container after the upgrade got a used address %s", ip3)
	}
	if !canPing(names[2], names[0]) {
		t.Fatal("a container started after the upgrade cannot reach an older one")
	}
}
