// Package opcuatest is an in-process OPC UA server for tests and for
// `ferry demo`, on gopcua's server package (security None, anonymous). Its
// variables live in the namespace NamespaceURI as string node ids
// ("s=NAME"); a value set with Set is notified to subscribers at once. The
// server can be stopped and started again on the same port, optionally
// with its namespace moved to another index, to exercise a client's
// healing.
//
// gopcua's server has gaps (see LIBRARIES.md): no sampling or deadband,
// and a write to an unknown namespace panics. Writes of the simulator's
// variables are type-checked and logged here (write.go).
package opcuatest

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"sort"
	"sync"
	"time"

	"github.com/gopcua/opcua/id"
	"github.com/gopcua/opcua/server"
	"github.com/gopcua/opcua/ua"
)

// NamespaceURI is the namespace of the simulator's variables.
const NamespaceURI = "urn:ferry:opcuatest"

type variable struct {
	value  any
	status ua.StatusCode
	ts     time.Time
}

// Server is the simulator. Its methods are safe for concurrent use.
type Server struct {
	mu        sync.Mutex
	port      int
	shift     int // extra namespaces registered before ours
	srv       *server.Server
	ns        *server.NodeNameSpace
	cancel    context.CancelFunc
	maxPerSub uint32
	proxy     *proxy
	vars      map[string]*variable
	running   bool
	logger    *slog.Logger
	writes    []Write         // accepted writes (write.go)
	readOnly  map[string]bool // variables refusing writes
}

// New returns a stopped simulator with no variables; Add some, then Start.
func New() *Server {
	return &Server{vars: map[string]*variable{}, logger: slog.New(slog.DiscardHandler)}
}

// Start listens on a free loopback port (or, after Stop, on the port it
// had) and serves the variables added so far.
func (s *Server) Start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.running {
		return nil
	}
	var pub net.Listener
	var err error
	for range 100 { // the port of a previous run may still be in TIME_WAIT
		if pub, err = net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", s.port)); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		return fmt.Errorf("opcuatest: listen: %w", err)
	}
	s.port = pub.Addr().(*net.TCPAddr).Port
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		pub.Close()
		return err
	}
	inner := l.Addr().(*net.TCPAddr).Port
	l.Close()
	srv := server.New(
		server.EndPoint("127.0.0.1", inner),  // listened on (the first)
		server.EndPoint("127.0.0.1", s.port), // what clients ask for
		server.EnableSecurity("None", ua.MessageSecurityModeNone),
		server.EnableAuthMode(ua.UserTokenTypeAnonymous),
		server.SetLogger(s.logger),
		server.ServerName("ferry opcuatest"),
	)
	for i := range s.shift {
		server.NewNodeNameSpace(srv, fmt.Sprintf("urn:ferry:opcuatest:filler%d", i))
	}
	ns := server.NewNodeNameSpace(srv, NamespaceURI)
	if objs := srv.Node(ua.NewNumericNodeID(0, id.ObjectsFolder)); objs != nil {
		objs.AddRef(ns.Objects(), server.RefTypeIDOrganizes, true)
	}
	s.srv, s.ns = srv, ns
	s.install(srv, ns)
	if s.maxPerSub > 0 {
		if ns0, err := srv.Namespace(0); err == nil {
			limit := s.maxPerSub
			ns0.AddNode(server.NewVariableNode(ua.NewNumericNodeID(0, id.Server_ServerCapabilities_MaxMonitoredItemsPerSubscription),
				"MaxMonitoredItemsPerSubscription", func() *ua.DataValue { return server.DataValueFromValue(limit) }))
		}
	}
	names := make([]string, 0, len(s.vars))
	for name := range s.vars {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		s.addNodeLocked(name)
	}
	ctx, cancel := context.WithCancel(context.Background())
	if err := srv.Start(ctx); err != nil {
		cancel()
		pub.Close()
		return fmt.Errorf("opcuatest: start: %w", err)
	}
	s.cancel = cancel
	s.proxy = newProxy(pub, fmt.Sprintf("127.0.0.1:%d", inner))
	s.running = true
	return nil
}

func (s *Server) addNodeLocked(name string) {
	n := server.NewVariableNode(ua.NewStringNodeID(s.ns.ID(), name), name, func() *ua.DataValue { return s.dataValue(name) })
	s.ns.AddNode(s.ns.Objects().AddVariable(n))
}

func (s *Server) dataValue(name string) *ua.DataValue {
	s.mu.Lock()
	v := s.vars[name]
	var val any
	var st ua.StatusCode
	var ts time.Time
	if v != nil {
		val, st, ts = v.value, v.status, v.ts
	}
	s.mu.Unlock()
	dv := &ua.DataValue{
		EncodingMask:    ua.DataValueServerTimestamp | ua.DataValueSourceTimestamp,
		SourceTimestamp: ts,
		ServerTimestamp: time.Now(),
	}
	if v == nil {
		dv.EncodingMask |= ua.DataValueStatusCode
		dv.Status = ua.StatusBadNodeIDUnknown
		return dv
	}
	if st != ua.StatusOK {
		dv.EncodingMask |= ua.DataValueStatusCode
		dv.Status = st
	}
	if val != nil {
		vv, err := ua.NewVariant(val)
		if err != nil {
			dv.EncodingMask |= ua.DataValueStatusCode
			dv.Status = ua.StatusBadTypeMismatch
			return dv
		}
		dv.EncodingMask |= ua.DataValueValue
		dv.Value = vv
	}
	return dv
}

// Stop closes the listener and every connection, as a crashed server
// would. Values are kept for the next Start.
func (s *Server) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.running {
		return
	}
	s.running = false
	// Drop the connections first (gopcua's server then sees EOF on every
	// channel), then close the server, then end its goroutines.
	s.proxy.close()
	_ = s.srv.Close()
	s.cancel()
	// gopcua's server leaves the goroutines of open subscriptions running
	// after Close; a crashed server would not have them either.
	if ss := s.srv.SubscriptionService; ss != nil {
		ss.Mu.Lock()
		ids := make([]uint32, 0, len(ss.Subs))
		for id := range ss.Subs {
			ids = append(ids, id)
		}
		ss.Mu.Unlock()
		for _, id := range ids {
			ss.DeleteSubscription(id)
		}
	}
}

// Close stops the server for good.
func (s *Server) Close() { s.Stop() }

// Restart stops the server and starts a new one on the same port. With
// moveNamespace, one more namespace is registered before the simulator's,
// so its namespace index changes (as it may when a real server restarts).
func (s *Server) Restart(moveNamespace bool) error {
	s.Stop()
	if moveNamespace {
		s.mu.Lock()
		s.shift++
		s.mu.Unlock()
	}
	return s.Start()
}

// SetMaxItemsPerSubscription makes the server publish n as its
// ServerCapabilities.MaxMonitoredItemsPerSubscription from the next Start
// (gopcua's server does not enforce it; well-behaved clients honour it).
func (s *Server) SetMaxItemsPerSubscription(n uint32) {
	s.mu.Lock()
	s.maxPerSub = n
	s.mu.Unlock()
}

// URL is the endpoint, opc.tcp://127.0.0.1:PORT.
func (s *Server) URL() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return fmt.Sprintf("opc.tcp://127.0.0.1:%d", s.port)
}

// NamespaceIndex is the current index of NamespaceURI.
func (s *Server) NamespaceIndex() uint16 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return uint16(1 + s.shift)
}

// NodeID returns the node id of a variable with its current namespace
// index, "ns=N;s=NAME".
func (s *Server) NodeID(name string) string {
	return fmt.Sprintf("ns=%d;s=%s", s.NamespaceIndex(), name)
}

// NSUNodeID returns the node id of a variable by namespace URI,
// "nsu=urn:ferry:opcuatest;s=NAME", which survives namespace moves.
func (s *Server) NSUNodeID(name string) string {
	return "nsu=" + NamespaceURI + ";s=" + name
}

// Add creates a variable holding v (any type gopcua's Variant accepts),
// or sets it if it exists.
func (s *Server) Add(name string, v any) {
	s.mu.Lock()
	_, exists := s.vars[name]
	s.vars[name] = &variable{value: v, ts: time.Now()}
	if !exists && s.running {
		s.addNodeLocked(name)
	}
	s.mu.Unlock()
}

// Set changes a variable's value (status Good) and notifies subscribers.
func (s *Server) Set(name string, v any) { s.SetWithStatus(name, v, ua.StatusOK) }

// SetWithStatus changes a variable's value and status code and notifies
// subscribers.
func (s *Server) SetWithStatus(name string, v any, status ua.StatusCode) {
	s.mu.Lock()
	s.vars[name] = &variable{value: v, status: status, ts: time.Now()}
	srv, ns, running := s.srv, s.ns, s.running
	s.mu.Unlock()
	if running {
		srv.ChangeNotification(ua.NewStringNodeID(ns.ID(), name))
	}
}

// Names returns the variable names, sorted.
func (s *Server) Names() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	names := make([]string, 0, len(s.vars))
	for n := range s.vars {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}
