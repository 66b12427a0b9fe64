// Command ethfeatures prints ethtool features of an interface, one
// NAME=true|false line each: what `ethtool -k` would show. The e2e tests
// run it inside containers (busybox has no ethtool), built static.
//
//	ethfeatures IFNAME FEATURE...
package main

import (
	"fmt"
	"os"

	"github.com/safchain/ethtool"
)

func main() {
	if len(os.Args) < 3 {
		fmt.Fprintln(os.Stderr, "usage: ethfeatures IFNAME FEATURE...")
		os.Exit(2)
	}
	e, err := ethtool.NewEthtool()
	if err != nil {
		fmt.Fprintln(os.Stderr, "ethtool:", err)
		os.Exit(1)
	}
	defer e.Close()
	f, err := e.Features(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, "features of", os.Args[1]+":", err)
		os.Exit(1)
	}
	for _, name := range os.Args[2:] {
		on, ok := f[name]
		if !ok {
			fmt.Fprintln(os.Stderr, "no feature", name)
			os.Exit(1)
		}
		fmt.Printf("%s=%v\n", name, on)
	}
}
