package modbustest

import (
	"context"
	"math"
	"time"

	"github.com/ferry-gateway/ferry/config"
)

// Demo register map, animated by RunDemo and read by DemoDevice:
//
//	holding 100-101  temperature  float32 ABCD, 20 °C + 5 °C sine over 60 s
//	holding 102      pressure     int16 ×0.1 kPa, 101.3 ± 1.5 kPa over 20 s
//	holding 103      status       bit 0 running (on 10 s, off 2 s), bit 3 door_open (every 15 s for 3 s)
//	holding 104-105  flow         float32 CDAB, 12.5 m³/h ± noise-free ripple
//	holding 106-107  setpoint     float32 ABCD, writable 0..100 (RunDemo only seeds it)
//	holding 120-127  recipe       string of 8 registers, "PUMP-A"
//	input   0        counter      uint16, +1 per second, wraps
//	coil    0        alarm        on while temperature > 24 °C
const (
	DemoTemperatureAddr = 100
	DemoPressureAddr    = 102
	DemoStatusAddr      = 103
	DemoFlowAddr        = 104
	DemoSetpointAddr    = 106
	DemoRecipeAddr      = 120
	DemoCounterAddr     = 0
	DemoAlarmAddr       = 0
)

// DemoDevice returns a resolved device config (as config.Load would return
// it) that reads the demo register map from url every interval.
func DemoDevice(name, url string, interval time.Duration) config.ModbusDevice {
	lo, hi := 0.0, 100.0
	tag := func(name, table string, addr uint16, typ, order string) config.ModbusTag {
		return config.ModbusTag{
			Name: name, Table: table, Address: addr, Type: typ, Order: order,
			Bit: -1, Scale: 1, Interval: interval,
		}
	}
	pressure := tag("pressure", config.TableHolding, DemoPressureAddr, "int16", "ABCD")
	pressure.Scale = 0.1
	running := tag("running", config.TableHolding, DemoStatusAddr, "bool", "ABCD")
	running.Bit = 0
	door := tag("door_open", config.TableHolding, DemoStatusAddr, "bool", "ABCD")
	door.Bit = 3
	setpoint := tag("setpoint", config.TableHolding, DemoSetpointAddr, "float32", "ABCD")
	setpoint.Writable, setpoint.Min, setpoint.Max = true, &lo, &hi
	recipe := tag("recipe", config.TableHolding, DemoRecipeAddr, "string", "ABCD")
	recipe.Length = 8
	return config.ModbusDevice{
		Name: name, URL: url, Unit: 1, Interval: interval, Timeout: time.Second,
		MaxGap: 16, MaxRegistersPerRequest: 125, Order: "ABCD", Publish: "tag",
		Tags: []config.ModbusTag{
			tag("temperature", config.TableHolding, DemoTemperatureAddr, "float32", "ABCD"),
			pressure, running, door,
			tag("flow", config.TableHolding, DemoFlowAddr, "float32", "CDAB"),
			setpoint, recipe,
			tag("counter", config.TableInput, DemoCounterAddr, "uint16", "ABCD"),
			tag("alarm", config.TableCoil, DemoAlarmAddr, "bool", "ABCD"),
		},
	}
}

// RunDemo seeds the demo register map and animates it every 100 ms until
// ctx is done; it returns nil then.
func (s *Server) RunDemo(ctx context.Context) error {
	const H = config.TableHolding
	s.SetFloat32(H, DemoSetpointAddr, 50, "ABCD")
	s.SetString(H, DemoRecipeAddr, "PUMP-A", 8, "ABCD")
	start := time.Now()
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		s.demoStep(time.Since(start))
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

func (s *Server) demoStep(el time.Duration) {
	const H = config.TableHolding
	sec := el.Seconds()
	temp := 20 + 5*math.Sin(2*math.Pi*sec/60)
	s.SetFloat32(H, DemoTemperatureAddr, float32(math.Round(temp*100)/100), "ABCD")
	s.SetInt16(H, DemoPressureAddr, int16(1013+math.Round(15*math.Sin(2*math.Pi*sec/20))))
	s.SetBit(H, DemoStatusAddr, 0, math.Mod(sec, 12) < 10)
	s.SetBit(H, DemoStatusAddr, 3, math.Mod(sec, 15) < 3)
	s.SetFloat32(H, DemoFlowAddr, float32(12.5+math.Round(10*math.Sin(2*math.Pi*sec/7))/10), "CDAB")
	s.SetRegisters(config.TableInput, DemoCounterAddr, uint16(int64(sec)))
	s.SetCoils(DemoAlarmAddr, temp > 24)
}
