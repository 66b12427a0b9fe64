package e2e

import (
	"fmt"
	"os"
	osexec "os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestDockerdIdentity: the plugin reaches the host's /sys and container
// sandboxes through /proc/<dockerd pid>/root, so it must pick the dockerd
// that runs it, not any process named dockerd. With impostors named dockerd
// running (one of an unprivileged user, one as uid 0 of a user namespace
// that root made, one of an unprivileged user in its own user namespace),
// the restarted plugin logs that it chose the harness's dockerd, and lists
// each impostor as ignored.
func TestDockerdIdentity(t *testing.T) {
	b, err := os.ReadFile("/run/weft-e2e/dockerd.pid")
	if err != nil {
		t.Skipf("no dockerd the harness started: %v", err)
	}
	want := strings.TrimSpace(string(b))

	dir, err := os.MkdirTemp("", "weft-impostor")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	fake := filepath.Join(dir, "dockerd")
	sleep, err := os.ReadFile("/bin/sleep")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(fake, sleep, 0o755); err != nil {
		t.Fatal(err)
	}
	nobody := []string{"setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"}
	var impostors []string
	for _, c := range []struct {
		what string
		argv []string
	}{
		{"an unprivileged user's", append(append([]string{}, nobody...), fake, "600")},
		{"root's in a user namespace (uid 0 there and here)", []string{"unshare", "-Ur", fake, "600"}},
		{"an unprivileged user's in a user namespace", append(append([]string{}, nobody...), "unshare", "-Ur", fake, "600")},
	} {
		cmd := osexec.Command(c.argv[0], c.argv[1:]...)
		if err := cmd.Start(); err != nil {
			t.Fatalf("%s impostor: %v", c.what, err)
		}
		t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
		pid := fmt.Sprint(cmd.Process.Pid)
		// setpriv and unshare exec the impostor in the same process.
		ok := false
		for end := time.Now().Add(3 * time.Second); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
			if comm, _ := os.ReadFile("/proc/" + pid + "/comm"); strings.TrimSpace(string(comm)) == "dockerd" {
				ok = true
				break
			}
		}
		if !ok {
			t.Logf("%s impostor did not start (user namespaces unavailable?): skipped", c.what)
			continue
		}
		status, _ := os.ReadFile("/proc/" + pid + "/status")
		userns, _ := os.Readlink("/proc/" + pid + "/ns/user")
		t.Logf("%s impostor: pid %s, %s, %s", c.what, pid, uidLine(string(status)), userns)
		impostors = append(impostors, pid)
	}
	if len(impostors) == 0 {
		t.Fatal("no impostor could be started")
	}

	logBefore, _ := os.ReadFile("/run/weft-e2e/dockerd.log")
	setPlugin(t, "SYSFS_ROOT=auto") // disable -f, enable: SYSFS_ROOT=auto finds dockerd at start
	eventually(t, 20*time.Second, "the plugin naming the dockerd it chose", func() error {
		b, err := os.ReadFile("/run/weft-e2e/dockerd.log")
		if err != nil {
			return err
		}
		if len(b) >= len(logBefore) {
			b = b[len(logBefore):] // only what this start logged
		}
		var chosen string
		for _, l := range strings.Split(string(b), "\n") {
			if strings.Contains(l, "no dockerd chosen") {
				t.Fatalf("the plugin chose no dockerd: %s", l)
			}
			if strings.Contains(l, "dockerd chosen as the host root") {
				chosen = l
			}
		}
		if chosen == "" {
			return fmt.Errorf("no \"dockerd chosen\" line yet")
		}
		if !strings.Contains(chosen, "pid="+want+" root=/proc/"+want+"/root") {
			t.Fatalf("the plugin chose another dockerd than the harness's (pid %s): %s", want, chosen)
		}
		for _, pid := range impostors {
			if !strings.Contains(chosen, "pid "+pid+": ") {
				t.Fatalf("impostor %s not listed as ignored: %s", pid, chosen)
			}
		}
		t.Logf("plugin log: %s", chosen)
		return nil
	})
}

func uidLine(status string) string {
	for _, l := range strings.Split(status, "\n") {
		if strings.HasPrefix(l, "Uid:") {
			return strings.Join(strings.Fields(l), " ")
		}
	}
	return "no Uid line"
}
