package e2e

import (
	"fmt"
	"os"
	osexec "os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestCompose brings up a compose project whose network uses weft as driver
// and IPAM, and checks that its services reach each other by name.
func TestCompose(t *testing.T) {
	if _, err := osexec.LookPath("docker-compose"); err != nil {
		t.Skip("docker-compose is not installed (scripts/e2e-env.sh installs it)")
	}
	dir := t.TempDir()
	project := uniq("compose")
	yml := fmt.Sprintf(`version: "3.7"
services:
  web:
    image: %[1]s
    command: ["httpd", "-f", "-p", "80", "-h", "/www"]
    networks: [app]
  client:
    image: %[1]s
    command: ["sleep", "3600"]
    networks: [app]
networks:
  app:
    driver: %[2]s
    driver_opts:
      com.docker.network.driver.mtu: "1400"
    ipam:
      driver: %[2]s
      config:
        - subnet: 10.96.0.0/24
`, image, plugin)
	if err := os.WriteFile(filepath.Join(dir, "docker-compose.yml"), []byte(yml), 0o644); err != nil {
		t.Fatal(err)
	}
	compose := func(args ...string) (string, error) {
		return exec("docker-compose", append([]string{"-p", project, "-f", filepath.Join(dir, "docker-compose.yml")}, args...)...)
	}
	t.Cleanup(func() {
		if out, err := compose("down", "--remove-orphans"); err != nil {
			t.Errorf("compose down: %v %s", err, out)
		}
	})
	if out, err := compose("up", "-d"); err != nil {
		t.Fatalf("compose up: %v\n%s", err, out)
	}
	client := project + "_client_1"
	if out, err := execIn(client, "sh", "-c", "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 web 80"); err != nil || !strings.Contains(out, page) {
		t.Fatalf("client cannot fetch from web by service name: %v %q", err, out)
	}
	if mtu := mustDocker(t, "exec", client, "cat", "/sys/class/net/eth0/mtu"); mtu != "1400" {
		t.Fatalf("driver_opts mtu not applied: %s", mtu)
	}
	if ip := ipOf(t, client, project+"_app"); !strings.HasPrefix(ip, "10.96.0.") {
		t.Fatalf("client address %s not from the compose subnet", ip)
	}
}
