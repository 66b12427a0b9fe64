// Package gossip is the overlay's control plane: the swarm instances of weft
// form a memberlist cluster (the library Docker's own networkdb is built on),
// encrypted and authenticated with a cluster key. Each node announces itself
// (underlay address, WireGuard public key) in its member metadata and owns
// one table of the endpoints it hosts; tables travel as broadcasts when they
// change and in full at every push/pull, so a node that missed a message
// converges at the next exchange. A node that leaves takes its table with it.
package gossip

import (
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net"
	"net/netip"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/sirupsen/logrus"
)

// Node is what a member announces about itself.
type Node struct {
	Name string     `json:"-"`
	Addr netip.Addr `json:"a"`           // underlay address: VXLAN and WireGuard go there
	WG   string     `json:"k,omitempty"` // WireGuard public key (base64), "" without encryption
}

// Entry is one endpoint: where a MAC and IP of a network live.
type Entry struct {
	Network string `json:"n"`
	IP      string `json:"i"`
	MAC     string `json:"m"`
}

// table is one node's endpoints. Version is the owner's clock at the change,
// so a restarted node's new table wins over what others remember.
type table struct {
	Node    string  `json:"o"`
	Version int64   `json:"v"`
	Entries []Entry `json:"e"`
}

// Config starts a cluster member.
type Config struct {
	Name string     // unique and stable per node (the store's instance ID)
	Addr netip.Addr // underlay address to bind and advertise
	Port int
	Key  []byte // 16, 24 or 32 bytes: AES key for every gossip message
	WG   string // this node's WireGuard public key, if any
	// OnChange is called (from a goroutine of its own, coalesced) when
	// members or tables change.
	OnChange func()
}

// Cluster is a running member.
type Cluster struct {
	cfg   Config
	ml    *memberlist.Memberlist
	queue *memberlist.TransmitLimitedQueue

	// mu guards what follows. Never call memberlist while holding it:
	// memberlist calls the event delegate holding its own lock, and the
	// delegate takes mu.
	mu      sync.Mutex
	self    Node
	tables  map[string]table  // by node name, own included
	members map[string]member // live members, copied from the events
	kick    chan struct{}
	done    chan struct{}
}

// member is what the events told about a live member (copied: memberlist
// rewrites its own Node values under its lock).
type member struct {
	node Node // Addr invalid until it announces itself
	addr string
	ml   memberlist.Node
}

// Start creates the member and starts listening; Join connects it.
func Start(cfg Config) (*Cluster, error) {
	switch len(cfg.Key) {
	case 16, 24, 32:
	default:
		return nil, fmt.Errorf("gossip key: want 16, 24 or 32 bytes, got %d", len(cfg.Key))
	}
	c := &Cluster{cfg: cfg, self: Node{Name: cfg.Name, Addr: cfg.Addr, WG: cfg.WG},
		// Version 0: until SetEntries, peers keep what they had of this
		// node (after a restart, its endpoints are still there).
		tables:  map[string]table{cfg.Name: {Node: cfg.Name}},
		members: map[string]member{},
		kick:    make(chan struct{}, 1), done: make(chan struct{})}
	mc := memberlist.DefaultLANConfig()
	mc.Name = cfg.Name
	mc.BindAddr = cfg.Addr.String()
	mc.BindPort = cfg.Port
	mc.AdvertiseAddr = cfg.Addr.String()
	mc.AdvertisePort = cfg.Port
	mc.SecretKey = cfg.Key
	mc.GossipVerifyIncoming, mc.GossipVerifyOutgoing = true, true
	mc.Delegate = (*delegate)(c)
	mc.Events = (*events)(c)
	// Faster than the LAN defaults: endpoint tables are small, and a task
	// must reach its peers within a second or two of starting.
	mc.GossipInterval = 100 * time.Millisecond
	mc.PushPullInterval = 10 * time.Second
	mc.Logger = log.New(logWriter{}, "", 0)
	c.queue = &memberlist.TransmitLimitedQueue{NumNodes: func() int { return c.ml.NumMembers() }, RetransmitMult: 3}
	ml, err := memberlist.Create(mc)
	if err != nil {
		return nil, fmt.Errorf("start gossip on %s:%d: %w", cfg.Addr, cfg.Port, err)
	}
	c.ml = ml
	go c.notifier()
	return c, nil
}

// Join contacts peers (host:port); it succeeds when one answers.
func (c *Cluster) Join(peers []string) (int, error) {
	var others []string
	self := net.JoinHostPort(c.cfg.Addr.String(), strconv.Itoa(c.cfg.Port))
	for _, p := range peers {
		if p != self {
			others = append(others, p)
		}
	}
	if len(others) == 0 {
		return 0, nil
	}
	n, err := c.ml.Join(others)
	if err != nil {
		return n, fmt.Errorf("join gossip peers %v: %w", others, err)
	}
	return n, nil
}

// Shutdown stops the member; with leave it first tells the others, who
// then drop its table at once instead of after failure detection.
func (c *Cluster) Shutdown(leave bool) {
	if leave {
		_ = c.ml.Leave(2 * time.Second)
	}
	_ = c.ml.Shutdown()
	close(c.done)
}

// SetEntries replaces this node's endpoint table and tells the others.
func (c *Cluster) SetEntries(es []Entry) {
	es = append([]Entry(nil), es...)
	sort.Slice(es, func(i, j int) bool {
		if es[i].Network != es[j].Network {
			return es[i].Network < es[j].Network
		}
		return es[i].IP < es[j].IP
	})
	c.mu.Lock()
	old := c.tables[c.cfg.Name]
	if slices.Equal(old.Entries, es) {
		c.mu.Unlock()
		return
	}
	v := max(time.Now().UnixNano(), old.Version+1)
	t := table{Node: c.cfg.Name, Version: v, Entries: es}
	c.tables[c.cfg.Name] = t
	c.mu.Unlock()
	raw, _ := json.Marshal(t)
	if len(raw) <= maxBroadcast {
		c.queue.QueueBroadcast(broadcast(raw))
		return
	}
	// Too big for a gossip packet, which memberlist would silently never
	// send: over TCP to each member instead.
	c.mu.Lock()
	var to []memberlist.Node
	for name, m := range c.members {
		if name != c.cfg.Name {
			to = append(to, m.ml)
		}
	}
	c.mu.Unlock()
	for _, n := range to {
		go func(n memberlist.Node) {
			if err := c.ml.SendReliable(&n, raw); err != nil {
				logrus.WithError(err).WithField("member", n.Name).Debug("gossip: sending the endpoint table failed; the next push/pull carries it")
			}
		}(n)
	}
}

// maxBroadcast is the largest table sent by gossip (UDP, one packet with
// memberlist's overhead); bigger ones go over TCP.
const maxBroadcast = 1000

// SetWG changes the announced WireGuard public key.
func (c *Cluster) SetWG(key string) error {
	c.mu.Lock()
	c.self.WG = key
	c.mu.Unlock()
	if err := c.ml.UpdateNode(2 * time.Second); err != nil {
		return fmt.Errorf("announce WireGuard key: %w", err)
	}
	return nil
}

// Peer is another live member with its endpoints.
type Peer struct {
	Node
	Entries []Entry
}

// Peers returns the live members other than this one, sorted by name.
func (c *Cluster) Peers() []Peer {
	var out []Peer
	c.mu.Lock()
	defer c.mu.Unlock()
	for name, m := range c.members {
		if name == c.cfg.Name || !m.node.Addr.IsValid() {
			continue // this node, or one that has not announced itself yet
		}
		out = append(out, Peer{Node: m.node, Entries: c.tables[name].Entries})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Addrs returns host:port of every live member (for persisting seeds).
func (c *Cluster) Addrs() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for _, m := range c.members {
		out = append(out, m.addr)
	}
	sort.Strings(out)
	return out
}

func (c *Cluster) changed() {
	select {
	case c.kick <- struct{}{}:
	default:
	}
}

// notifier calls OnChange outside memberlist's goroutines, which must not block.
func (c *Cluster) notifier() {
	for {
		select {
		case <-c.done:
			return
		case <-c.kick:
			if c.cfg.OnChange != nil {
				c.cfg.OnChange()
			}
		}
	}
}

// merge takes a remote table if it is newer and its owner is not this node.
func (c *Cluster) merge(t table) bool {
	if t.Node == "" || t.Node == c.cfg.Name {
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if old, ok := c.tables[t.Node]; ok && old.Version >= t.Version {
		return false
	}
	c.tables[t.Node] = t
	return true
}

type delegate Cluster

func (d *delegate) NodeMeta(limit int) []byte {
	d.mu.Lock()
	raw, _ := json.Marshal(d.self)
	d.mu.Unlock()
	if len(raw) > limit {
		return nil
	}
	return raw
}

func (d *delegate) NotifyMsg(b []byte) {
	var t table
	if err := json.Unmarshal(b, &t); err != nil {
		logrus.WithError(err).Warn("gossip: malformed endpoint table")
		return
	}
	if (*Cluster)(d).merge(t) {
		(*Cluster)(d).changed()
	}
}

func (d *delegate) GetBroadcasts(overhead, limit int) [][]byte {
	return d.queue.GetBroadcasts(overhead, limit)
}

func (d *delegate) LocalState(bool) []byte {
	d.mu.Lock()
	defer d.mu.Unlock()
	all := make([]table, 0, len(d.tables))
	for name, t := range d.tables {
		if _, live := d.members[name]; live || name == d.cfg.Name {
			all = append(all, t) // a departed node's table is not passed on
		}
	}
	raw, _ := json.Marshal(all)
	return raw
}

func (d *delegate) MergeRemoteState(b []byte, _ bool) {
	var all []table
	if err := json.Unmarshal(b, &all); err != nil {
		logrus.WithError(err).Warn("gossip: malformed state from a peer")
		return
	}
	changed := false
	for _, t := range all {
		changed = (*Cluster)(d).merge(t) || changed
	}
	if changed {
		(*Cluster)(d).changed()
	}
}

type events Cluster

func (e *events) NotifyJoin(n *memberlist.Node) {
	logrus.WithFields(logrus.Fields{"member": n.Name, "addr": n.Addr.String()}).Info("gossip: member joined")
	e.remember(n)
	(*Cluster)(e).changed()
}

// remember copies a member's record (called by memberlist with its lock held).
func (e *events) remember(n *memberlist.Node) {
	m := member{addr: net.JoinHostPort(n.Addr.String(), strconv.Itoa(int(n.Port))),
		ml: memberlist.Node{Name: n.Name, Addr: append(net.IP(nil), n.Addr...), Port: n.Port}}
	if err := json.Unmarshal(n.Meta, &m.node); err != nil {
		m.node = Node{}
	}
	m.node.Name = n.Name
	e.mu.Lock()
	e.members[n.Name] = m
	e.mu.Unlock()
}

func (e *events) NotifyLeave(n *memberlist.Node) {
	logrus.WithFields(logrus.Fields{"member": n.Name, "addr": n.Addr.String()}).Info("gossip: member left; its endpoints are removed")
	e.mu.Lock()
	delete(e.tables, n.Name)
	delete(e.members, n.Name)
	e.mu.Unlock()
	(*Cluster)(e).changed()
}

func (e *events) NotifyUpdate(n *memberlist.Node) {
	e.remember(n)
	(*Cluster)(e).changed()
}

// broadcast is a table message; a newer one replaces an older in the queue
// because Invalidates compares owners.
type broadcast []byte

func (b broadcast) Invalidates(other memberlist.Broadcast) bool {
	o, ok := other.(broadcast)
	return ok && ownerOf(b) == ownerOf(o)
}
func (b broadcast) Message() []byte { return b }
func (b broadcast) Finished()       {}

func ownerOf(b []byte) string {
	var t struct {
		Node string `json:"o"`
	}
	_ = json.Unmarshal(b, &t)
	return t.Node
}

// logWriter sends memberlist's own log lines to logrus at debug level,
// except warnings and errors.
type logWriter struct{}

func (logWriter) Write(p []byte) (int, error) {
	s := string(p)
	switch {
	case strings.Contains(s, "[ERR]") || strings.Contains(s, "[WARN]"):
		logrus.WithField("from", "memberlist").Warn(strings.TrimSpace(s))
	default:
		logrus.WithField("from", "memberlist").Debug(strings.TrimSpace(s))
	}
	return len(p), nil
}

var _ io.Writer = logWriter{}
