// Package nstest runs unit-test code in a fresh network namespace, so tests
// that create links, qdiscs or addresses never touch the host's.
package nstest

import (
	"os"
	"runtime"
	"testing"

	"github.com/vishvananda/netns"
)

// Run calls fn on a locked thread inside a new network namespace and
// returns the thread to its namespace afterwards. It skips the test, with
// the reason, where namespaces cannot be made (not root).
func Run(t testing.TB, fn func()) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create a network namespace")
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatalf("current network namespace: %v", err)
	}
	defer orig.Close()
	ns, err := netns.New()
	if err != nil {
		t.Skipf("cannot create a network namespace: %v", err)
	}
	defer ns.Close()
	defer netns.Set(orig)
	fn()
}
