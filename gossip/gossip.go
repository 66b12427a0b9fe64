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

	mu     sync.Mutex
	self   Node
	tables map[string]table // by node name, own included
	kick   chan struct{}
	done   chan struct{}
}

// Start creates the member and starts listening; Join connects it.
func Start(cfg Config) (*Cluster, error) {
	switch len(cfg.Key) {
	case 16, 24, 32:
	default:
		return nil, fmt.Errorf("gossip key: want 16, 24 or 32 bytes, got %d", len(cfg.Key))
	}
	c := &Cluster{cfg: cfg, self: Node{Name: cfg.Name, Addr: cfg.Addr, WG: cfg.WG},
		tables: map[string]table{cfg.Name: {Node: cfg.Name, Version: time.Now().UnixNano()}},
		kick:   make(chan struct{}, 1), done: make(chan struct{})}
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
	c.queue.QueueBroadcast(broadcast(raw))
}

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
	for _, m := range c.ml.Members() {
		if m.Name == c.cfg.Name {
			continue
		}
		var n Node
		if err := json.Unmarshal(m.Meta, &n); err != nil || !n.Addr.IsValid() {
			continue // not a weft member, or one that has not announced itself yet
		}
		n.Name = m.Name
		out = append(out, Peer{Node: n, Entries: c.tables[m.Name].Entries})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Addrs returns host:port of every live member (for persisting seeds).
func (c *Cluster) Addrs() []string {
	var out []string
	for _, m := range c.ml.Members() {
		out = append(out, net.JoinHostPort(m.Addr.String(), strconv.Itoa(int(m.Port))))
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
	for _, t := range d.tables {
		all = append(all, t)
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
	(*Cluster)(e).changed()
}

func (e *events) NotifyLeave(n *memberlist.Node) {
	logrus.WithFields(logrus.Fields{"member": n.Name, "addr": n.Addr.String()}).Info("gossip: member left; its endpoints are removed")
	e.mu.Lock()
	delete(e.tables, n.Name)
	e.mu.Unlock()
	(*Cluster)(e).changed()
}

func (e *events) NotifyUpdate(*memberlist.Node) { (*Cluster)(e).changed() }

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
