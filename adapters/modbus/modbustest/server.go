// Package modbustest is an in-process Modbus device simulator for tests
// and for ferry demo: four thread-safe banks (holding, input, coil,
// discrete; 65536 entries each), typed setters in any byte order, and fault
// injection (server down, slow responses, exception ranges, units that do
// not answer) with a request counter. It answers Modbus TCP on a loopback
// port, and Modbus RTU on any byte stream (ServeRTU): a pseudo-terminal
// (ServeRTUFile, PtyPair) or RTU over TCP (ListenRTUOverTCP).
package modbustest

import (
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ferry-gateway/ferry/config"
	mb "github.com/simonvetter/modbus"
)

// Option configures Start.
type Option func(*options)

type options struct {
	addr string
}

// WithAddr listens on addr ("127.0.0.1:5020") instead of a free loopback
// port.
func WithAddr(addr string) Option { return func(o *options) { o.addr = addr } }

// Server is a running simulator. All methods are safe for concurrent use.
type Server struct {
	addr string // host:port it listens on

	mu         sync.Mutex
	holding    [1 << 16]uint16
	input      [1 << 16]uint16
	coil       [1 << 16]bool
	discrete   [1 << 16]bool
	exceptions []exception
	delay      time.Duration
	down       bool
	closed     bool
	wake       chan struct{} // closed (and renewed) by SetDown(true) and Close to cut delays short

	writes []Write // every write request, in order (see Writes)

	units     map[uint8]bool          // nil: every unit answers
	unitDelay map[uint8]time.Duration // extra delay per unit

	srv         *mb.ModbusServer // guarded by mu
	requests    atomic.Int64
	inflight    atomic.Int64
	maxInflight atomic.Int64

	rtuMu     sync.Mutex
	rtuClosed bool
	rtuClose  []io.Closer // listeners, connections, serial files
	rtuWG     sync.WaitGroup
}

type exception struct {
	table      string
	start, end int // [start, end)
	err        error
}

// Start starts a simulator on a free port of 127.0.0.1 (or WithAddr's).
// The simonvetter server does not expose its listener, so a free port is
// found by listening on :0 and closing; the rare race with another process
// taking the port in between is retried.
func Start(opts ...Option) (*Server, error) {
	var o options
	for _, f := range opts {
		f(&o)
	}
	var lastErr error
	for attempt := 0; attempt < 5; attempt++ {
		addr := o.addr
		if addr == "" {
			var err error
			if addr, err = freeAddr(); err != nil {
				return nil, err
			}
		}
		s := &Server{addr: addr, wake: make(chan struct{})}
		if err := s.listen(); err != nil {
			lastErr = err
			if o.addr != "" {
				break
			}
			continue
		}
		return s, nil
	}
	return nil, fmt.Errorf("modbustest: start: %w", lastErr)
}

// listen starts a new simonvetter server on s.addr. A stopped
// ModbusServer is never restarted: its accept goroutine reads the listener
// field without the lock, which a restart would write (a data race).
func (s *Server) listen() error {
	srv, err := mb.NewServer(&mb.ServerConfiguration{
		URL:        "tcp://" + s.addr,
		Timeout:    30 * time.Second,
		MaxClients: 64,
		Logger:     log.New(io.Discard, "", 0),
	}, handler{s})
	if err != nil {
		return err
	}
	if err := srv.Start(); err != nil {
		return err
	}
	s.srv = srv
	return nil
}

func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	addr := l.Addr().String()
	return addr, l.Close()
}

// TB is the part of testing.TB that New uses (so this package does not
// import testing).
type TB interface {
	Helper()
	Fatalf(format string, args ...any)
	Cleanup(func())
}

// New starts a simulator for a test and closes it when the test ends.
func New(t TB, opts ...Option) *Server {
	t.Helper()
	s, err := Start(opts...)
	if err != nil {
		t.Fatalf("modbustest: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// URL is the client URL of the simulator, tcp://127.0.0.1:PORT.
func (s *Server) URL() string { return "tcp://" + s.addr }

// Addr is the host:port the simulator listens on.
func (s *Server) Addr() string { return s.addr }

// Port is the TCP port the simulator listens on.
func (s *Server) Port() int {
	_, p, _ := net.SplitHostPort(s.addr)
	n, _ := strconv.Atoi(p)
	return n
}

// Close stops the simulator and drops every connection (RTU ones too).
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	close(s.wake)
	srv := s.srv
	s.mu.Unlock()
	err := srv.Stop()
	s.closeRTU()
	return err
}

// SetUnits makes only the given unit ids answer, as the devices behind a
// gateway or on a serial line: a request for another unit gets the
// exception "gateway target device failed to respond" over Modbus TCP and
// no answer at all over RTU. No argument: every unit answers again.
func (s *Server) SetUnits(units ...uint8) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(units) == 0 {
		s.units = nil
		return
	}
	s.units = map[uint8]bool{}
	for _, u := range units {
		s.units[u] = true
	}
}

// SetUnitDelay delays the responses to unit by d (on top of SetDelay).
func (s *Server) SetUnitDelay(unit uint8, d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.unitDelay == nil {
		s.unitDelay = map[uint8]time.Duration{}
	}
	s.unitDelay[unit] = d
}

// answers reports whether unit answers.
func (s *Server) answers(unit uint8) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.units == nil || s.units[unit]
}

// SetDown(true) stops listening and drops every connection, as a device
// that is switched off; SetDown(false) listens again on the same port.
func (s *Server) SetDown(down bool) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return errors.New("modbustest: closed")
	}
	if down == s.down {
		return nil
	}
	s.down = down
	if down {
		close(s.wake)
		s.wake = make(chan struct{})
		return s.srv.Stop()
	}
	var err error
	for range 50 { // the old listener's port may take a moment to be free
		if err = s.listen(); err == nil {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return err
}

// SetDelay delays every response by d (0 for none), to make clients time
// out. Delays are cut short by SetDown(true) and Close.
func (s *Server) SetDelay(d time.Duration) {
	s.mu.Lock()
	s.delay = d
	s.mu.Unlock()
}

// SetException makes every request that touches table addresses
// [addr, addr+count) fail with err, a Modbus error such as
// modbus.ErrIllegalDataAddress or modbus.ErrServerDeviceBusy (which the
// server sends as the matching exception code). A nil err removes the
// exceptions of exactly that range.
func (s *Server) SetException(table string, addr uint16, count int, err error) {
	mustTable(table)
	s.mu.Lock()
	defer s.mu.Unlock()
	ex := exception{table: table, start: int(addr), end: int(addr) + count, err: err}
	kept := s.exceptions[:0]
	for _, e := range s.exceptions {
		if e.table != ex.table || e.start != ex.start || e.end != ex.end {
			kept = append(kept, e)
		}
	}
	s.exceptions = kept
	if err != nil {
		s.exceptions = append(s.exceptions, ex)
	}
}

// ClearExceptions removes every exception range.
func (s *Server) ClearExceptions() {
	s.mu.Lock()
	s.exceptions = nil
	s.mu.Unlock()
}

// Requests is the number of requests handled so far (reads and writes,
// exceptions included).
func (s *Server) Requests() int64 { return s.requests.Load() }

// MaxInFlight is the largest number of requests the simulator was handling
// at the same time (over all connections).
func (s *Server) MaxInFlight() int64 { return s.maxInflight.Load() }

func (s *Server) enter() func() {
	n := s.inflight.Add(1)
	for {
		m := s.maxInflight.Load()
		if n <= m || s.maxInflight.CompareAndSwap(m, n) {
			break
		}
	}
	return func() { s.inflight.Add(-1) }
}

// SetRegisters sets consecutive registers of table (holding or input) from
// addr on. Values past 65535 are dropped.
func (s *Server) SetRegisters(table string, addr uint16, v ...uint16) {
	s.mu.Lock()
	defer s.mu.Unlock()
	copy(s.regs(table)[addr:], v)
}

// Registers returns n registers of table (holding or input) from addr on.
func (s *Server) Registers(table string, addr uint16, n int) []uint16 {
	s.mu.Lock()
	defer s.mu.Unlock()
	b := s.regs(table)[addr:]
	return append([]uint16(nil), b[:min(n, len(b))]...)
}

// SetBits sets consecutive bits of table (coil or discrete) from addr on.
func (s *Server) SetBits(table string, addr uint16, v ...bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	copy(s.bits(table)[addr:], v)
}

// Bits returns n bits of table (coil or discrete) from addr on.
func (s *Server) Bits(table string, addr uint16, n int) []bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	b := s.bits(table)[addr:]
	return append([]bool(nil), b[:min(n, len(b))]...)
}

// SetHolding sets holding registers from addr on.
func (s *Server) SetHolding(addr uint16, v ...uint16) {
	s.SetRegisters(config.TableHolding, addr, v...)
}

// SetInput sets input registers from addr on.
func (s *Server) SetInput(addr uint16, v ...uint16) { s.SetRegisters(config.TableInput, addr, v...) }

// SetCoils sets coils from addr on.
func (s *Server) SetCoils(addr uint16, v ...bool) { s.SetBits(config.TableCoil, addr, v...) }

// SetDiscrete sets discrete inputs from addr on.
func (s *Server) SetDiscrete(addr uint16, v ...bool) { s.SetBits(config.TableDiscrete, addr, v...) }

// SetBit sets bit (0..15) of register addr of table (holding or input).
func (s *Server) SetBit(table string, addr uint16, bit uint, on bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.regs(table)
	if on {
		r[addr] |= 1 << (bit & 15)
	} else {
		r[addr] &^= 1 << (bit & 15)
	}
}

// SetInt16 sets one register.
func (s *Server) SetInt16(table string, addr uint16, v int16) {
	s.SetRegisters(table, addr, uint16(v))
}

// SetUint32 sets two registers in order (ABCD, CDAB, BADC, DCBA).
func (s *Server) SetUint32(table string, addr uint16, v uint32, order string) {
	s.SetRegisters(table, addr, Words32(v, order)...)
}

// SetInt32 sets two registers in order.
func (s *Server) SetInt32(table string, addr uint16, v int32, order string) {
	s.SetRegisters(table, addr, Words32(uint32(v), order)...)
}

// SetFloat32 sets two registers in order.
func (s *Server) SetFloat32(table string, addr uint16, f float32, order string) {
	s.SetRegisters(table, addr, Float32Words(f, order)...)
}

// SetUint64 sets four registers in order.
func (s *Server) SetUint64(table string, addr uint16, v uint64, order string) {
	s.SetRegisters(table, addr, Words64(v, order)...)
}

// SetInt64 sets four registers in order.
func (s *Server) SetInt64(table string, addr uint16, v int64, order string) {
	s.SetRegisters(table, addr, Words64(uint64(v), order)...)
}

// SetFloat64 sets four registers in order.
func (s *Server) SetFloat64(table string, addr uint16, f float64, order string) {
	s.SetRegisters(table, addr, Float64Words(f, order)...)
}

// SetString sets length registers to str, NUL-padded, in order (ABCD or
// CDAB: high byte first; BADC or DCBA: low byte first).
func (s *Server) SetString(table string, addr uint16, str string, length int, order string) {
	s.SetRegisters(table, addr, StringWords(str, length, order)...)
}

// regs and bits return the bank of table; the caller holds mu. They panic on
// a table of the wrong kind: a programming error in the caller.
func (s *Server) regs(table string) []uint16 {
	switch table {
	case config.TableHolding:
		return s.holding[:]
	case config.TableInput:
		return s.input[:]
	}
	panic(fmt.Sprintf("modbustest: %q is not a register table", table))
}

func (s *Server) bits(table string) []bool {
	switch table {
	case config.TableCoil:
		return s.coil[:]
	case config.TableDiscrete:
		return s.discrete[:]
	}
	panic(fmt.Sprintf("modbustest: %q is not a bit table", table))
}

func mustTable(table string) {
	switch table {
	case config.TableHolding, config.TableInput, config.TableCoil, config.TableDiscrete:
		return
	}
	panic(fmt.Sprintf("modbustest: unknown table %q", table))
}

// begin counts a request, applies the delay and the exceptions. It returns
// with mu held when err is nil.
func (s *Server) begin(unit uint8, table string, addr, qty uint16) error {
	s.requests.Add(1)
	s.mu.Lock()
	d, wake := s.delay+s.unitDelay[unit], s.wake
	ok := s.units == nil || s.units[unit]
	s.mu.Unlock()
	if !ok {
		return mb.ErrGWTargetFailedToRespond
	}
	if d > 0 {
		t := time.NewTimer(d)
		select {
		case <-t.C:
		case <-wake:
			t.Stop()
			return mb.ErrServerDeviceBusy
		}
	}
	s.mu.Lock()
	lo, hi := int(addr), int(addr)+int(qty)
	for _, e := range s.exceptions {
		if e.table == table && lo < e.end && e.start < hi {
			s.mu.Unlock()
			return e.err
		}
	}
	return nil
}

type handler struct{ s *Server }

func (h handler) HandleCoils(req *mb.CoilsRequest) ([]bool, error) {
	return h.bitsReq(req.UnitId, config.TableCoil, req.Addr, req.Quantity, req.IsWrite, req.Args)
}

func (h handler) HandleDiscreteInputs(req *mb.DiscreteInputsRequest) ([]bool, error) {
	return h.bitsReq(req.UnitId, config.TableDiscrete, req.Addr, req.Quantity, false, nil)
}

func (h handler) HandleHoldingRegisters(req *mb.HoldingRegistersRequest) ([]uint16, error) {
	return h.regsReq(req.UnitId, config.TableHolding, req.Addr, req.Quantity, req.IsWrite, req.Args)
}

func (h handler) HandleInputRegisters(req *mb.InputRegistersRequest) ([]uint16, error) {
	return h.regsReq(req.UnitId, config.TableInput, req.Addr, req.Quantity, false, nil)
}

func (h handler) bitsReq(unit uint8, table string, addr, qty uint16, write bool, args []bool) ([]bool, error) {
	s := h.s
	defer s.enter()()
	if err := s.begin(unit, table, addr, qty); err != nil {
		return nil, err
	}
	defer s.mu.Unlock()
	b := s.bits(table)
	if int(addr)+int(qty) > len(b) {
		return nil, mb.ErrIllegalDataAddress
	}
	if write {
		copy(b[addr:], args)
		s.writes = append(s.writes, Write{Unit: unit, Table: table, Addr: addr, Bits: append([]bool(nil), args...), Time: time.Now()})
		return nil, nil
	}
	return append([]bool(nil), b[addr:int(addr)+int(qty)]...), nil
}

func (h handler) regsReq(unit uint8, table string, addr, qty uint16, write bool, args []uint16) ([]uint16, error) {
	s := h.s
	defer s.enter()()
	if err := s.begin(unit, table, addr, qty); err != nil {
		return nil, err
	}
	defer s.mu.Unlock()
	r := s.regs(table)
	if int(addr)+int(qty) > len(r) {
		return nil, mb.ErrIllegalDataAddress
	}
	if write {
		copy(r[addr:], args)
		s.writes = append(s.writes, Write{Unit: unit, Table: table, Addr: addr, Regs: append([]uint16(nil), args...), Time: time.Now()})
		return nil, nil
	}
	return append([]uint16(nil), r[addr:int(addr)+int(qty)]...), nil
}
