package modbustest

import "time"

// Write is one write request the simulator carried out: FC5/FC15 (Bits
// set, table coil) or FC6/FC16 (Regs set, table holding). A FC6 and a FC16
// of one register look alike; a 32-bit value written with one FC16 is one
// Write of two registers, with two FC6 it would be two Writes.
type Write struct {
	Unit  uint8
	Table string
	Addr  uint16
	Regs  []uint16
	Bits  []bool
	Time  time.Time
}

// Writes returns the write log: every write request answered without an
// exception, oldest first. Requests refused (an exception, a silent unit)
// are not in it.
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
