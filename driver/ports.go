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
		if p.Direct {
			continue // no host port: opened on the container's address
		}
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
	want, direct, err := portPlan(n, ep, pm, log)
	if err != nil {
		return err
	}
	if err := d.checkLoopbackPorts(want); err != nil {
		return err
	}
	got, err := d.ports.allocate(ep.ID, want)
	if err != nil {
		return err
	}
	ep.Ports = append(got, direct...)
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
	for _, p := range direct {
		log.WithField("container", net.JoinHostPort(p.IP, strconv.Itoa(int(p.Port)))+"/"+protoName(p.Proto)).Info("port opened on the container's address (gateway mode routed)")
	}
	return nil
}

// checkLoopbackPorts refuses ports published on a loopback host address
// when no firewall rules exist (IPTABLES_BACKEND=none): reaching them needs
// route_localnet on the bridge, and without the rule that drops
// containers' packets to 127.0.0.0/8 that would open the host's loopback
// services to every container.
func (d *Driver) checkLoopbackPorts(want []api.PortBinding) error {
	if !d.fwCaps.None {
		return nil
	}
	for _, p := range want {
		if a, err := netip.ParseAddr(p.HostIP); err == nil && a.Unmap().IsLoopback() {
			return fmt.Errorf("cannot publish port %s:%d/%s: weft runs with IPTABLES_BACKEND=none, which installs no rules: no rule keeps containers off the host's loopback, so weft does not route 127.0.0.0/8 to bridges (route_localnet stays off), and published ports are not forwarded; publish without a loopback address, or set IPTABLES_BACKEND=auto (docker plugin set)",
				p.HostIP, p.HostPort, protoName(p.Proto))
		}
	}
	return nil
}

// portPlan turns Docker's port map into the bindings weft programs: want
// are published through a host port and IPv4 DNAT; direct are opened on
// the container's own address (gateway mode routed, per family, where the
// host port is not used). A binding weft cannot serve on an endpoint
// without IPv4 (an IPv6-only network) is refused, never dropped silently.
func portPlan(n *api.Network, ep *api.Endpoint, pm []api.PortBinding, log *logrus.Entry) (want, direct []api.PortBinding, err error) {
	routed4 := bridge.GatewayMode(n, false) == bridge.GwRouted
	routed6 := bridge.GatewayMode(n, true) == bridge.GwRouted && ep.Addr6.IsValid()
	seen := map[string]bool{}
	add := func(list *[]api.PortBinding, p api.PortBinding) {
		k := fmt.Sprintf("%d/%s/%d/%s/%d", p.Proto, p.HostIP, p.HostPort, p.IP, p.Port)
		if p.Direct {
			k = fmt.Sprintf("%d/%s/%d", p.Proto, p.IP, p.Port) // the host side is not used
		}
		if seen[k] && (p.HostPort != 0 || p.Direct) {
			return
		}
		seen[k] = true
		*list = append(*list, p)
	}
	for _, p := range pm {
		if p.Proto != protoTCP && p.Proto != protoUDP {
			return nil, nil, fmt.Errorf("cannot publish port %d: weft publishes tcp and udp ports only", p.Port)
		}
		if p.HostIP == "" && ep.Addr4.IsValid() {
			p.HostIP = bridge.HostBinding(n)
		}
		var a netip.Addr // invalid: every host address, both families
		if p.HostIP != "" {
			if a, err = netip.ParseAddr(p.HostIP); err != nil {
				return nil, nil, fmt.Errorf("-p host address %q: %w", p.HostIP, err)
			}
			a = a.Unmap()
		}
		any4 := !a.IsValid() || (a.Is4() && a.IsUnspecified())
		wants4 := !a.IsValid() || a.Is4()
		wants6 := !a.IsValid() || a.Is6()
		served := false
		if wants4 && ep.Addr4.IsValid() {
			q := p
			q.IP = ep.Addr4.Addr().String()
			if any4 {
				q.HostIP = ""
			}
			if routed4 {
				q.Direct, q.HostIP = true, ""
				add(&direct, q)
			} else {
				add(&want, q)
			}
			served = true
		}
		if wants6 && routed6 {
			q := p
			q.IP, q.HostIP, q.Direct = ep.Addr6.Addr().String(), "", true
			add(&direct, q)
			served = true
		}
		if served {
			continue
		}
		if !ep.Addr4.IsValid() {
			what := fmt.Sprintf("%d/%s", p.Port, protoName(p.Proto))
			if a.IsValid() && a.Is4() {
				return nil, nil, fmt.Errorf("cannot publish port %s on the IPv4 host address %s: network %.12s has no IPv4 (--ipv4=false)", what, a, n.ID)
			}
			msg := fmt.Sprintf("cannot publish port %s: network %.12s is IPv6-only (--ipv4=false), and weft publishes ports through IPv4 NAT", what, n.ID)
			if n.Type == "bridge" {
				msg += fmt.Sprintf("; create the network with IPv4 too, or with -o %s=%s to open published ports on the container's IPv6 address (the host port is not used)", bridge.OptGwMode6, bridge.GwRouted)
			} else {
				msg += "; create the network with IPv4 too"
			}
			return nil, nil, errors.New(msg)
		}
		// An IPv6 host address on a network that also has IPv4: not
		// forwarded (weft does not NAT IPv6); the IPv4 binding covers clients.
		log.WithField("host_ip", p.HostIP).Warn("not publishing on an IPv6 host address")
	}
	return want, direct, nil
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
