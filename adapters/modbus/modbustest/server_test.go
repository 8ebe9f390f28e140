package modbustest

import (
	"context"
	"errors"
	"math"
	"reflect"
	"testing"
	"time"

	"github.com/ferry-gateway/ferry/config"
	mb "github.com/simonvetter/modbus"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func client(t *testing.T, s *Server) *mb.ModbusClient {
	t.Helper()
	c, err := mb.NewClient(&mb.ClientConfiguration{URL: s.URL(), Timeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Open(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestBanksAndEncoders(t *testing.T) {
	s := New(t)
	c := client(t, s)
	s.SetHolding(0, 1, 2, 3)
	s.SetInput(10, 0xBEEF)
	s.SetCoils(5, true, false, true)
	s.SetDiscrete(7, true)
	s.SetFloat32(config.TableHolding, 100, 123.456, "CDAB")
	s.SetBit(config.TableHolding, 200, 3, true)
	s.SetString(config.TableInput, 300, "hi", 2, "ABCD")

	if got, _ := c.ReadRegisters(0, 3, mb.HOLDING_REGISTER); !reflect.DeepEqual(got, []uint16{1, 2, 3}) {
		t.Errorf("holding = %v", got)
	}
	if got, _ := c.ReadRegisters(10, 1, mb.INPUT_REGISTER); got[0] != 0xBEEF {
		t.Errorf("input = %v", got)
	}
	if got, _ := c.ReadCoils(5, 3); !reflect.DeepEqual(got, []bool{true, false, true}) {
		t.Errorf("coils = %v", got)
	}
	if got, _ := c.ReadDiscreteInputs(7, 1); !got[0] {
		t.Errorf("discrete = %v", got)
	}
	if got, _ := c.ReadRegisters(100, 2, mb.HOLDING_REGISTER); !reflect.DeepEqual(got, []uint16{0xE979, 0x42F6}) {
		t.Errorf("float32 CDAB = %x", got)
	}
	if got, _ := c.ReadRegisters(200, 1, mb.HOLDING_REGISTER); got[0] != 8 {
		t.Errorf("bit = %v", got)
	}
	if got, _ := c.ReadRegisters(300, 2, mb.INPUT_REGISTER); !reflect.DeepEqual(got, []uint16{0x6869, 0}) {
		t.Errorf("string = %x", got)
	}
	if err := c.WriteRegister(50, 42); err != nil || s.Registers(config.TableHolding, 50, 1)[0] != 42 {
		t.Errorf("write: %v %v", err, s.Registers(config.TableHolding, 50, 1))
	}
	if got := s.Registers(config.TableHolding, 65535, 5); len(got) != 1 {
		t.Errorf("Registers past the end: %v", got)
	}
}

func TestEncoders(t *testing.T) {
	for order, want := range map[string][]uint16{
		"ABCD": {0x42F6, 0xE979}, "CDAB": {0xE979, 0x42F6}, "BADC": {0xF642, 0x79E9}, "DCBA": {0x79E9, 0xF642},
	} {
		if got := Float32Words(123.456, order); !reflect.DeepEqual(got, want) {
			t.Errorf("%s: %x, want %x", order, got, want)
		}
	}
	for order, want := range map[string][]uint16{
		"ABCD": {0x0102, 0x0304, 0x0506, 0x0708}, "CDAB": {0x0708, 0x0506, 0x0304, 0x0102},
		"BADC": {0x0201, 0x0403, 0x0605, 0x0807}, "DCBA": {0x0807, 0x0605, 0x0403, 0x0201},
	} {
		if got := Words64(0x0102030405060708, order); !reflect.DeepEqual(got, want) {
			t.Errorf("%s: %x, want %x", order, got, want)
		}
	}
	if got := Float64Words(1.5, "ABCD"); got[0] != 0x3FF8 {
		t.Errorf("float64: %x", got)
	}
	if got := StringWords("abc", 2, "BADC"); !reflect.DeepEqual(got, []uint16{0x6261, 0x0063}) {
		t.Errorf("string BADC: %x", got)
	}
}

func TestFaults(t *testing.T) {
	s := New(t)
	c := client(t, s)
	before := s.Requests()

	s.SetException(config.TableHolding, 10, 5, mb.ErrIllegalDataAddress)
	if _, err := c.ReadRegisters(0, 11, mb.HOLDING_REGISTER); !errors.Is(err, mb.ErrIllegalDataAddress) {
		t.Errorf("overlapping read: %v", err)
	}
	if _, err := c.ReadRegisters(15, 1, mb.HOLDING_REGISTER); err != nil {
		t.Errorf("read after the range: %v", err)
	}
	if _, err := c.ReadRegisters(10, 1, mb.INPUT_REGISTER); err != nil {
		t.Errorf("other table: %v", err)
	}
	s.SetException(config.TableHolding, 10, 5, nil)
	if _, err := c.ReadRegisters(0, 11, mb.HOLDING_REGISTER); err != nil {
		t.Errorf("after removal: %v", err)
	}
	if got := s.Requests() - before; got != 4 {
		t.Errorf("Requests delta = %d, want 4", got)
	}

	// slow responses time the client out
	s.SetDelay(200 * time.Millisecond)
	slow, err := mb.NewClient(&mb.ClientConfiguration{URL: s.URL(), Timeout: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if err := slow.Open(); err != nil {
		t.Fatal(err)
	}
	if _, err := slow.ReadRegisters(0, 1, mb.HOLDING_REGISTER); !errors.Is(err, mb.ErrRequestTimedOut) {
		t.Errorf("delayed read: %v", err)
	}
	slow.Close()
	s.SetDelay(0)

	// down and up again on the same port
	if err := s.SetDown(true); err != nil {
		t.Fatal(err)
	}
	if _, err := c.ReadRegisters(0, 1, mb.HOLDING_REGISTER); err == nil {
		t.Error("read from a down server succeeded")
	}
	c.Close()
	if err := c.Open(); err == nil {
		t.Error("connected to a down server")
	}
	if err := s.SetDown(false); err != nil {
		t.Fatal(err)
	}
	if err := c.Open(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.ReadRegisters(0, 1, mb.HOLDING_REGISTER); err != nil {
		t.Errorf("read after restart: %v", err)
	}
}

func TestDemo(t *testing.T) {
	s := New(t)
	s.demoStep(15 * time.Second)
	temp := math.Float32frombits(uint32(s.Registers(config.TableHolding, DemoTemperatureAddr, 2)[0])<<16 |
		uint32(s.Registers(config.TableHolding, DemoTemperatureAddr+1, 1)[0]))
	if temp != 25 {
		t.Errorf("temperature at 15 s = %v, want 25", temp)
	}
	if !s.Bits(config.TableCoil, DemoAlarmAddr, 1)[0] {
		t.Error("alarm off at 25 °C")
	}
	if got := s.Registers(config.TableInput, DemoCounterAddr, 1)[0]; got != 15 {
		t.Errorf("counter = %d", got)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- s.RunDemo(ctx) }()
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if got := s.Registers(config.TableHolding, DemoRecipeAddr, 1)[0]; got != 0x5055 { // "PU"
		t.Errorf("recipe = %x", got)
	}
	d := DemoDevice("demo", s.URL(), time.Second)
	if len(d.Tags) != 9 || d.URL != s.URL() {
		t.Errorf("DemoDevice: %+v", d)
	}
}
