package swarmtest

import (
	"bytes"
	"encoding/binary"
	"net"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// capture records every frame on an interface (in the named network
// namespace, "" for this one) until the returned function is called, which
// returns the frames. It is tcpdump without the dependency: an AF_PACKET
// socket on a thread that is thrown away afterwards.
func capture(t *testing.T, nsName, ifname string) func() [][]byte {
	t.Helper()
	var (
		mu     sync.Mutex
		frames [][]byte
		stop   = make(chan struct{})
		done   = make(chan struct{})
		ready  = make(chan error, 1)
	)
	go func() {
		defer close(done)
		runtime.LockOSThread() // never unlocked: the thread dies with the goroutine
		if nsName != "" {
			h, err := netns.GetFromName(nsName)
			if err != nil {
				ready <- err
				return
			}
			defer h.Close()
			if err := netns.Set(h); err != nil {
				ready <- err
				return
			}
		}
		ifi, err := net.InterfaceByName(ifname)
		if err != nil {
			ready <- err
			return
		}
		proto := htons(unix.ETH_P_ALL)
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, int(proto))
		if err != nil {
			ready <- err
			return
		}
		defer unix.Close(fd)
		if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: proto, Ifindex: ifi.Index}); err != nil {
			ready <- err
			return
		}
		_ = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Usec: 100000})
		ready <- nil
		buf := make([]byte, 65536)
		for {
			select {
			case <-stop:
				return
			default:
			}
			n, _, err := unix.Recvfrom(fd, buf, 0)
			if err != nil || n <= 0 {
				continue
			}
			mu.Lock()
			frames = append(frames, append([]byte(nil), buf[:n]...))
			mu.Unlock()
		}
	}()
	if err := <-ready; err != nil {
		t.Fatalf("capture on %s in %q: %v", ifname, nsName, err)
	}
	return func() [][]byte {
		close(stop)
		<-done
		mu.Lock()
		defer mu.Unlock()
		return frames
	}
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// udpInfo parses an Ethernet frame holding IPv4 or IPv6 UDP.
func udpInfo(f []byte) (dport uint16, payload []byte, ok bool) {
	if len(f) < 14 {
		return 0, nil, false
	}
	et := binary.BigEndian.Uint16(f[12:14])
	p := f[14:]
	switch et {
	case 0x0800:
		if len(p) < 20 || p[9] != 17 {
			return 0, nil, false
		}
		p = p[int(p[0]&0x0f)*4:]
	case 0x86dd:
		if len(p) < 40 || p[6] != 17 {
			return 0, nil, false
		}
		p = p[40:]
	default:
		return 0, nil, false
	}
	if len(p) < 8 {
		return 0, nil, false
	}
	return binary.BigEndian.Uint16(p[2:4]), p[8:], true
}

// vxlanVNI returns the VNI of a VXLAN payload.
func vxlanVNI(p []byte) (int, bool) {
	if len(p) < 8 || p[0]&0x08 == 0 {
		return 0, false
	}
	return int(p[4])<<16 | int(p[5])<<8 | int(p[6]), true
}

func countWith(frames [][]byte, marker []byte) int {
	n := 0
	for _, f := range frames {
		if bytes.Contains(f, marker) {
			n++
		}
	}
	return n
}

// craftVXLAN builds a VXLAN payload carrying an Ethernet frame with an ICMP
// echo request from src to dst (valid IPv4 header: br_netfilter checks it).
func craftVXLAN(vni int, dstMAC net.HardwareAddr, src, dst net.IP, marker []byte) []byte {
	icmp := append([]byte{8, 0, 0, 0, 0x12, 0x34, 0, 1}, marker...)
	cs := checksum(icmp)
	icmp[2], icmp[3] = byte(cs>>8), byte(cs)
	ip := make([]byte, 20)
	ip[0], ip[8], ip[9] = 0x45, 64, 1
	binary.BigEndian.PutUint16(ip[2:], uint16(20+len(icmp)))
	copy(ip[12:16], src.To4())
	copy(ip[16:20], dst.To4())
	cs = checksum(ip)
	ip[10], ip[11] = byte(cs>>8), byte(cs)
	eth := append(append(append([]byte{}, dstMAC...), 0x02, 0x00, 0xde, 0xad, 0xbe, 0xef), 0x08, 0x00)
	vx := []byte{0x08, 0, 0, 0, byte(vni >> 16), byte(vni >> 8), byte(vni), 0}
	return append(append(append(vx, eth...), ip...), icmp...)
}

func checksum(b []byte) uint16 {
	var s uint32
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	for s>>16 != 0 {
		s = s&0xffff + s>>16
	}
	return ^uint16(s)
}

// sendUDP sends payload count times from this namespace.
func sendUDP(t *testing.T, network, addr string, payload []byte, count int) {
	t.Helper()
	c, err := net.Dial(network, addr)
	if err != nil {
		t.Fatalf("dial %s %s: %v", network, addr, err)
	}
	defer c.Close()
	for i := 0; i < count; i++ {
		if _, err := c.Write(payload); err != nil {
			t.Fatalf("send to %s: %v", addr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
