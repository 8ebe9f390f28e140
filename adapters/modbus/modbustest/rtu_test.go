package modbustest

import (
	"bytes"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/ferry-gateway/ferry/config"
	mb "github.com/simonvetter/modbus"
)

func TestCRC16(t *testing.T) {
	// Read holding registers 0..9 of unit 1: the CRC is sent C5 CD.
	if got := crc16([]byte{0x01, 0x03, 0x00, 0x00, 0x00, 0x0A}); got != 0xCDC5 {
		t.Errorf("crc16 = %#04x, want 0xcdc5", got)
	}
}

func TestNextFrame(t *testing.T) {
	req := []byte{0x01, 0x03, 0x00, 0x00, 0x00, 0x0A, 0xC5, 0xCD}
	if f, rest, ok := nextFrame(append(req, 0x01)); !ok || !bytes.Equal(f, req) || len(rest) != 1 {
		t.Errorf("frame %x rest %x ok %v", f, rest, ok)
	}
	if _, _, ok := nextFrame(req[:5]); ok {
		t.Error("short frame accepted")
	}
	bad := append([]byte(nil), req...)
	bad[7] ^= 1
	if f, rest, ok := nextFrame(bad); !ok || f != nil || len(rest) != 0 {
		t.Errorf("bad CRC: frame %x rest %x", f, rest)
	}
}

// TestRTUOverTCPClient talks to the RTU responder with the simonvetter
// client: values, exceptions, silent units.
func TestRTUOverTCPClient(t *testing.T) {
	s := New(t)
	url, err := s.ListenRTUOverTCP()
	if err != nil {
		t.Fatal(err)
	}
	s.SetHolding(10, 1, 2, 3)
	s.SetCoils(3, true, false, true)
	s.SetException(config.TableInput, 0, 1, mb.ErrIllegalDataAddress)
	c, err := mb.NewClient(&mb.ClientConfiguration{URL: url, Timeout: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Open(); err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got, err := c.ReadRegisters(10, 3, mb.HOLDING_REGISTER); err != nil || got[2] != 3 {
		t.Errorf("holding: %v %v", got, err)
	}
	if got, err := c.ReadCoils(3, 3); err != nil || !got[0] || got[1] || !got[2] {
		t.Errorf("coils: %v %v", got, err)
	}
	if _, err := c.ReadRegisters(0, 1, mb.INPUT_REGISTER); err != mb.ErrIllegalDataAddress {
		t.Errorf("exception: %v", err)
	}
	s.SetUnits(2)
	if _, err := c.ReadRegisters(10, 1, mb.HOLDING_REGISTER); err != mb.ErrRequestTimedOut {
		t.Errorf("silent unit: %v", err)
	}
	s.SetUnits()
	if _, err := c.ReadRegisters(10, 1, mb.HOLDING_REGISTER); err != nil {
		t.Errorf("after the silent unit: %v", err)
	}
	if s.Close() != nil {
		t.Error("close")
	}
	if _, err := net.DialTimeout("tcp", strings.TrimPrefix(url, "rtuovertcp://"), time.Second); err == nil {
		t.Error("RTU listener still open after Close")
	}
}

// TestUnitsTCP: over Modbus TCP a missing unit gets the gateway exception.
func TestUnitsTCP(t *testing.T) {
	s := New(t)
	c := client(t, s)
	s.SetUnits(5)
	if _, err := c.ReadRegisters(0, 1, mb.HOLDING_REGISTER); err != mb.ErrGWTargetFailedToRespond {
		t.Errorf("unit 1 with only 5 answering: %v", err)
	}
	c.SetUnitId(5)
	if _, err := c.ReadRegisters(0, 1, mb.HOLDING_REGISTER); err != nil {
		t.Errorf("unit 5: %v", err)
	}
	if s.MaxInFlight() != 1 {
		t.Errorf("MaxInFlight = %d", s.MaxInFlight())
	}
}
