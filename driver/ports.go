package driver

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"sync"

	"github.com/docker/go-plugins-helpers/network"
	"github.com/sirupsen/logrus"

	"github.com/weft-net/weft/driver/api"
	"github.com/weft-net/weft/driver/bridge"
)

const (
	protoTCP = 6
	protoUDP = 17
)

// portReserver holds a socket open on every published host port, as
// docker-proxy does: another program (or container) asking for the same
// port gets "address in use" instead of silently losing its traffic to our
// DNAT rule. The sockets never see traffic: DNAT happens before delivery.
type portReserver struct {
	mu    sync.Mutex
	socks map[string][]io.Closer // endpoint ID -> sockets
}

func newPortReserver() *portReserver { return &portReserver{socks: map[string][]io.Closer{}} }

func protoName(p int) string {
	if p == protoUDP {
		return "udp"
	}
	return "tcp"
}

func listen(proto int, ip string, port uint16) (io.Closer, uint16, error) {
	addr := net.JoinHostPort(ip, strconv.Itoa(int(port)))
	if proto == protoUDP {
		c, err := net.ListenPacket("udp4", addr)
		if err != nil {
			return nil, 0, err
		}
		return c, uint16(c.LocalAddr().(*net.UDPAddr).Port), nil
	}
	l, err := net.Listen("tcp4", addr)
	if err != nil {
		return nil, 0, err
	}
	return l, uint16(l.Addr().(*net.TCPAddr).Port), nil
}

// reserve opens sockets for already-chosen ports (after a restart).
func (r *portReserver) reserve(epID string, ports []api.PortBinding) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	var errs []error
	for _, p := range ports {
		c, _, err := listen(p.Proto, hostIPOrAny(p.HostIP), p.HostPort)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		r.socks[epID] = append(r.socks[epID], c)
	}
	return errors.Join(errs...)
}

// allocate picks host ports for the requested bindings and reserves them;
// on error nothing stays reserved.
func (r *portReserver) allocate(epID string, req []api.PortBinding) ([]api.PortBinding, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var opened []io.Closer
	fail := func(err error) ([]api.PortBinding, error) {
		for _, c := range opened {
			_ = c.Close()
		}
		return nil, err
	}
	var out []api.PortBinding
	for _, p := range req {
		first, last := p.HostPort, p.HostPortEnd
		if last < first {
			last = first
		}
		var c io.Closer
		var got uint16
		var err error
		for port := uint32(first); port <= uint32(last); port++ {
			if c, got, err = listen(p.Proto, hostIPOrAny(p.HostIP), uint16(port)); err == nil {
				break
			}
		}
		if err != nil {
			what := fmt.Sprintf("host port %d/%s", first, protoName(p.Proto))
			if last != first {
				what = fmt.Sprintf("host ports %d-%d/%s", first, last, protoName(p.Proto))
			}
			return fail(fmt.Errorf("cannot publish %s on %s: already in use by another container or program; choose another host port with -p: %w",
				what, hostIPOrAny(p.HostIP), err))
		}
		opened = append(opened, c)
		p.HostPort, p.HostPortEnd = got, got
		out = append(out, p)
	}
	r.socks[epID] = append(r.socks[epID], opened...)
	return out, nil
}

func (r *portReserver) release(epID string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, c := range r.socks[epID] {
		_ = c.Close()
	}
	delete(r.socks, epID)
}

func hostIPOrAny(ip string) string {
	if ip == "" {
		return "0.0.0.0"
	}
	return ip
}

// parsePortMap decodes Docker's com.docker.network.portmap option.
func parsePortMap(opts map[string]interface{}) ([]api.PortBinding, error) {
	raw, ok := opts[optPortMap]
	if !ok || raw == nil {
		return nil, nil
	}
	b, err := json.Marshal(raw)
	if err != nil {
		return nil, fmt.Errorf("port map: %w", err)
	}
	var pm []api.PortBinding
	if err := json.Unmarshal(b, &pm); err != nil {
		return nil, fmt.Errorf("port map %s: %w", b, err)
	}
	return pm, nil
}

// ProgramExternalConnectivity publishes the endpoint's ports (docker run -p/-P).
func (d *Driver) ProgramExternalConnectivity(req *network.ProgramExternalConnectivityRequest) error {
	d.wait()
	d.mu.Lock()
	defer d.mu.Unlock()
	ep, ok := d.eps[req.EndpointID]
	if !ok {
		return fmt.Errorf("weft has no endpoint %.12s", req.EndpointID)
	}
	n := d.nets[ep.NetworkID]
	if n == nil {
		return fmt.Errorf("weft has no network %.12s", ep.NetworkID)
	}
	log := logrus.WithFields(logrus.Fields{"network": short(n.ID), "endpoint": short(ep.ID)})
	pm, err := parsePortMap(req.Options)
	if err != nil {
		return err
	}
	if len(pm) == 0 || len(ep.Ports) > 0 {
		return nil // nothing to publish, or already published (repeated call)
	}
	if n.Internal {
		return fmt.Errorf("network %.12s is --internal: ports cannot be published on it", n.ID)
	}
	if !ep.Addr4.IsValid() {
		return errors.New("weft publishes ports to IPv4 addresses and this endpoint has none")
	}
	var want []api.PortBinding
	seen := map[string]bool{}
	for _, p := range pm {
		if p.Proto != protoTCP && p.Proto != protoUDP {
			return fmt.Errorf("cannot publish port %d: weft publishes tcp and udp ports only", p.Port)
		}
		if p.HostIP == "" {
			p.HostIP = bridge.HostBinding(n)
		}
		if p.HostIP != "" {
			a, err := netip.ParseAddr(p.HostIP)
			if err != nil {
				return fmt.Errorf("-p host address %q: %w", p.HostIP, err)
			}
			if a.Is6() {
				// IPv6 host addresses are not forwarded (yet); the IPv4 binding covers clients.
				log.WithField("host_ip", p.HostIP).Warn("not publishing on an IPv6 host address")
				continue
			}
			if a.IsUnspecified() {
				p.HostIP = ""
			}
		}
		p.IP = ep.Addr4.Addr().String()
		k := fmt.Sprintf("%d/%s/%d/%d", p.Proto, p.HostIP, p.HostPort, p.Port)
		if seen[k] && p.HostPort != 0 {
			continue
		}
		seen[k] = true
		want = append(want, p)
	}
	got, err := d.ports.allocate(ep.ID, want)
	if err != nil {
		return err
	}
	ep.Ports = got
	success := false
	defer func() {
		if !success {
			ep.Ports = nil
			d.ports.release(ep.ID)
			_ = d.syncFirewall()
		}
	}()
	if err := d.syncFirewall(); err != nil {
		return err
	}
	if err := d.saveEndpoint(ep); err != nil {
		return err
	}
	success = true
	for _, p := range got {
		log.WithFields(logrus.Fields{"host": fmt.Sprintf("%s:%d/%s", hostIPOrAny(p.HostIP), p.HostPort, protoName(p.Proto)),
			"container": fmt.Sprintf("%s:%d", p.IP, p.Port)}).Info("port published")
	}
	return nil
}

// RevokeExternalConnectivity removes the endpoint's published ports.
func (d *Driver) RevokeExternalConnectivity(req *network.RevokeExternalConnectivityRequest) error {
	d.wait()
	d.mu.Lock()
	defer d.mu.Unlock()
	ep, ok := d.eps[req.EndpointID]
	if !ok || len(ep.Ports) == 0 {
		return nil
	}
	// Commit first; then the kernel and the reserved sockets follow.
	prev := ep.Ports
	ep.Ports = nil
	if err := d.saveEndpoint(ep); err != nil {
		ep.Ports = prev
		return err
	}
	d.ports.release(ep.ID)
	return d.syncFirewall()
}
