package modbustest

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"github.com/ferry-gateway/ferry/config"
	mb "github.com/simonvetter/modbus"
)

// Function codes answered over RTU.
const (
	fcReadCoils            = 0x01
	fcReadDiscreteInputs   = 0x02
	fcReadHoldingRegisters = 0x03
	fcReadInputRegisters   = 0x04
)

// ServeRTU answers Modbus RTU requests read from rw (a serial port, a
// pseudo-terminal, a TCP connection) from the server's banks, with the
// same faults as over TCP, until rw fails or is closed; it returns nil
// then. Frames are checked with their CRC-16; a frame with a bad CRC is
// dropped with whatever was buffered (the line resynchronises), as is a
// request for a unit that does not answer (SetUnits) and a broadcast
// (unit 0). Reads (function codes 1 to 4) are answered; any other function
// gets the exception "illegal function".
func (s *Server) ServeRTU(rw io.ReadWriter) error {
	buf := make([]byte, 0, 512)
	chunk := make([]byte, 256)
	for {
		n, err := rw.Read(chunk)
		buf = append(buf, chunk[:n]...)
		for {
			frame, rest, ok := nextFrame(buf)
			if !ok {
				break
			}
			buf = append(buf[:0], rest...)
			if frame == nil {
				continue
			}
			if resp := s.rtuAnswer(frame); resp != nil {
				if _, werr := rw.Write(resp); werr != nil {
					return nil
				}
			}
		}
		if err != nil {
			return nil
		}
	}
}

// nextFrame cuts the first request frame off buf. ok is false when more
// bytes are needed; frame is nil (and rest empty) when buf held garbage.
func nextFrame(buf []byte) (frame, rest []byte, ok bool) {
	if len(buf) < 2 {
		return nil, buf, false
	}
	size := 0
	switch buf[1] {
	case 0x01, 0x02, 0x03, 0x04, 0x05, 0x06:
		size = 8
	case 0x0F, 0x10:
		if len(buf) < 7 {
			return nil, buf, false
		}
		size = 9 + int(buf[6])
	default:
		return nil, nil, true // unknown function: drop everything
	}
	if len(buf) < size {
		return nil, buf, false
	}
	if crc16(buf[:size-2]) != uint16(buf[size-2])|uint16(buf[size-1])<<8 {
		return nil, nil, true
	}
	return buf[:size], buf[size:], true
}

// rtuAnswer returns the response frame to req, or nil for no answer.
func (s *Server) rtuAnswer(req []byte) []byte {
	unit, fc := req[0], req[1]
	if unit == 0 || !s.answers(unit) {
		s.requests.Add(1)
		return nil
	}
	h := handler{s}
	var pdu []byte
	var err error
	if fc < 1 || fc > 4 {
		s.requests.Add(1)
		err = mb.ErrIllegalFunction
	} else {
		addr := uint16(req[2])<<8 | uint16(req[3])
		qty := uint16(req[4])<<8 | uint16(req[5])
		switch fc {
		case fcReadCoils, fcReadDiscreteInputs:
			table := config.TableCoil
			if fc == fcReadDiscreteInputs {
				table = config.TableDiscrete
			}
			var bits []bool
			if qty == 0 || qty > 2000 {
				s.requests.Add(1)
				err = mb.ErrIllegalDataValue
			} else if bits, err = h.bitsReq(unit, table, addr, qty, false, nil); err == nil {
				b := make([]byte, (len(bits)+7)/8)
				for i, on := range bits {
					if on {
						b[i/8] |= 1 << (i % 8)
					}
				}
				pdu = append([]byte{fc, byte(len(b))}, b...)
			}
		default:
			table := config.TableHolding
			if fc == fcReadInputRegisters {
				table = config.TableInput
			}
			var regs []uint16
			if qty == 0 || qty > 125 {
				s.requests.Add(1)
				err = mb.ErrIllegalDataValue
			} else if regs, err = h.regsReq(unit, table, addr, qty, false, nil); err == nil {
				pdu = []byte{fc, byte(2 * len(regs))}
				for _, r := range regs {
					pdu = append(pdu, byte(r>>8), byte(r))
				}
			}
		}
	}
	if err != nil {
		if errors.Is(err, mb.ErrGWTargetFailedToRespond) {
			return nil // a missing unit on a line is silent
		}
		pdu = []byte{fc | 0x80, exceptionCode(err)}
	}
	frame := append([]byte{unit}, pdu...)
	c := crc16(frame)
	return append(frame, byte(c), byte(c>>8))
}

func exceptionCode(err error) byte {
	for code, e := range map[byte]error{
		0x01: mb.ErrIllegalFunction, 0x02: mb.ErrIllegalDataAddress, 0x03: mb.ErrIllegalDataValue,
		0x04: mb.ErrServerDeviceFailure, 0x05: mb.ErrAcknowledge, 0x06: mb.ErrServerDeviceBusy,
		0x08: mb.ErrMemoryParityError, 0x0A: mb.ErrGWPathUnavailable, 0x0B: mb.ErrGWTargetFailedToRespond,
	} {
		if errors.Is(err, e) {
			return code
		}
	}
	return 0x04
}

// crc16 is the Modbus CRC-16 (polynomial 0xA001 reflected, initial 0xFFFF),
// sent low byte first.
func crc16(b []byte) uint16 {
	crc := uint16(0xFFFF)
	for _, x := range b {
		crc ^= uint16(x)
		for range 8 {
			if crc&1 != 0 {
				crc = crc>>1 ^ 0xA001
			} else {
				crc >>= 1
			}
		}
	}
	return crc
}

// track registers c to be closed by Close and runs serve in the
// background. It reports false (and closes c) when the server is closed.
func (s *Server) track(c io.Closer, serve func()) bool {
	s.rtuMu.Lock()
	defer s.rtuMu.Unlock()
	if s.rtuClosed {
		c.Close()
		return false
	}
	s.rtuClose = append(s.rtuClose, c)
	s.rtuWG.Add(1)
	go func() {
		defer s.rtuWG.Done()
		serve()
	}()
	return true
}

func (s *Server) closeRTU() {
	s.rtuMu.Lock()
	s.rtuClosed = true
	cs := s.rtuClose
	s.rtuClose = nil
	s.rtuMu.Unlock()
	for _, c := range cs {
		c.Close()
	}
	s.rtuWG.Wait()
}

// ServeRTUFile opens path (the slave end of a pseudo-terminal pair, or a
// serial port) and answers RTU on it in the background until Close.
func (s *Server) ServeRTUFile(path string) error {
	f, err := os.OpenFile(path, os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		return fmt.Errorf("modbustest: %w", err)
	}
	if !s.track(f, func() { _ = s.ServeRTU(f) }) {
		return errors.New("modbustest: closed")
	}
	return nil
}

// ListenRTUOverTCP answers Modbus RTU framed over TCP (what serial-to-
// Ethernet converters speak) on a free loopback port until Close, and
// returns the client URL, rtuovertcp://127.0.0.1:PORT.
func (s *Server) ListenRTUOverTCP() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("modbustest: %w", err)
	}
	ok := s.track(l, func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			s.track(c, func() { _ = s.ServeRTU(c) })
		}
	})
	if !ok {
		return "", errors.New("modbustest: closed")
	}
	return "rtuovertcp://" + l.Addr().String(), nil
}

// PtyPair starts `socat` to create a connected pair of pseudo-terminals,
// DIR/client and DIR/device, in a temporary directory, and returns their
// paths; socat is stopped when the test ends. Without socat the test
// fails: install it (apt-get install socat).
func PtyPair(t interface {
	TB
	TempDir() string
}) (client, device string) {
	t.Helper()
	bin, err := exec.LookPath("socat")
	if err != nil {
		t.Fatalf("modbustest: socat not found: install socat (apt-get install socat) to run the RTU tests: %v", err)
	}
	dir := t.TempDir()
	client, device = filepath.Join(dir, "client"), filepath.Join(dir, "device")
	cmd := exec.Command(bin, "pty,raw,echo=0,link="+client, "pty,raw,echo=0,link="+device)
	if err := cmd.Start(); err != nil {
		t.Fatalf("modbustest: start socat: %v", err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, e1 := os.Stat(client)
		_, e2 := os.Stat(device)
		if e1 == nil && e2 == nil {
			return client, device
		}
		if time.Now().After(deadline) {
			t.Fatalf("modbustest: socat did not create %s and %s", client, device)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
