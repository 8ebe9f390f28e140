package opcuatest

import (
	"reflect"
	"time"

	"github.com/gopcua/opcua/id"
	"github.com/gopcua/opcua/server"
	"github.com/gopcua/opcua/ua"
)

// Write is one write the simulator accepted.
type Write struct {
	Name  string
	Value any
	Time  time.Time
}

// Writes returns the write log: every accepted write of a variable's
// value, oldest first. Refused writes are not in it.
func (s *Server) Writes() []Write {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Write(nil), s.writes...)
}

// ClearWrites empties the write log.
func (s *Server) ClearWrites() {
	s.mu.Lock()
	s.writes = nil
	s.mu.Unlock()
}

// SetReadOnly makes writes of the variable name fail with BadNotWritable
// (ro true) or succeed again.
func (s *Server) SetReadOnly(name string, ro bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.readOnly == nil {
		s.readOnly = map[string]bool{}
	}
	s.readOnly[name] = ro
}

// writableNS is the simulator's namespace as the server sees it. It fills
// two gaps of gopcua's server: writes are checked (the variable exists and
// is writable, the value has the variable's type, else BadNodeIdUnknown,
// BadNotWritable, BadTypeMismatch) and logged, and DataType reads return
// the built-in type of the variable's value rather than a placeholder.
type writableNS struct {
	*server.NodeNameSpace
	s *Server
}

// install replaces the server's entry of ns by the wrapper (before Start).
func (s *Server) install(srv *server.Server, ns *server.NodeNameSpace) {
	all := srv.Namespaces()
	for i, n := range all {
		if n == server.NameSpace(ns) {
			all[i] = &writableNS{NodeNameSpace: ns, s: s}
		}
	}
}

func (w *writableNS) Attribute(n *ua.NodeID, a ua.AttributeID) *ua.DataValue {
	if a == ua.AttributeIDDataType {
		w.s.mu.Lock()
		v := w.s.vars[n.StringID()]
		w.s.mu.Unlock()
		if v != nil && v.value != nil {
			if t, ok := builtinType(v.value); ok {
				return server.DataValueFromValue(ua.NewNumericNodeID(0, t))
			}
		}
	}
	return w.NodeNameSpace.Attribute(n, a)
}

func (w *writableNS) SetAttribute(n *ua.NodeID, a ua.AttributeID, dv *ua.DataValue) ua.StatusCode {
	if a != ua.AttributeIDValue {
		return ua.StatusBadNotWritable
	}
	name := n.StringID()
	s := w.s
	s.mu.Lock()
	v := s.vars[name]
	switch {
	case v == nil || n.Type() != ua.NodeIDTypeString:
		s.mu.Unlock()
		return ua.StatusBadNodeIDUnknown
	case s.readOnly[name]:
		s.mu.Unlock()
		return ua.StatusBadNotWritable
	case dv == nil || dv.Value == nil || reflect.TypeOf(dv.Value.Value()) != reflect.TypeOf(v.value):
		s.mu.Unlock()
		return ua.StatusBadTypeMismatch
	}
	val := dv.Value.Value()
	now := time.Now()
	s.vars[name] = &variable{value: val, ts: now}
	s.writes = append(s.writes, Write{Name: name, Value: val, Time: now})
	srv := s.srv
	s.mu.Unlock()
	srv.ChangeNotification(n)
	return ua.StatusOK
}

func builtinType(v any) (uint32, bool) {
	switch v.(type) {
	case bool:
		return id.Boolean, true
	case int8:
		return id.SByte, true
	case uint8:
		return id.Byte, true
	case int16:
		return id.Int16, true
	case uint16:
		return id.UInt16, true
	case int32:
		return id.Int32, true
	case uint32:
		return id.UInt32, true
	case int64:
		return id.Int64, true
	case uint64:
		return id.UInt64, true
	case float32:
		return id.Float, true
	case float64:
		return id.Double, true
	case string:
		return id.String, true
	}
	return 0, false
}
