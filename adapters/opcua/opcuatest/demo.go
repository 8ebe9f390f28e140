package opcuatest

import (
	"context"
	"math"
	"time"
)

// Demo variables, in NamespaceURI.
const (
	DemoSpindleSpeed = "Spindle.Speed"   // Double, rpm
	DemoPartCount    = "Parts.Count"     // UInt32
	DemoProgram      = "Program.Name"    // String
	DemoAxes         = "Axes.Position"   // Double[3]
	DemoDoorOpen     = "Door.Open"       // Boolean
	DemoLastCycle    = "Cycle.LastStart" // DateTime
)

// NewDemo returns a stopped simulator holding the demo variables of a
// small CNC machine.
func NewDemo() *Server {
	s := New()
	s.Add(DemoSpindleSpeed, 1200.0)
	s.Add(DemoPartCount, uint32(0))
	s.Add(DemoProgram, "O1000-BRACKET")
	s.Add(DemoAxes, []float64{0, 0, 0})
	s.Add(DemoDoorOpen, false)
	s.Add(DemoLastCycle, time.Now().UTC())
	return s
}

// RunDemo changes the demo variables every 500 ms until ctx is cancelled.
func (s *Server) RunDemo(ctx context.Context) error {
	t := time.NewTicker(500 * time.Millisecond)
	defer t.Stop()
	var parts uint32
	door := false
	for k := 0; ; k++ {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		x := float64(k) / 4
		s.Set(DemoSpindleSpeed, math.Round((1200+150*math.Sin(x))*10)/10)
		s.Set(DemoAxes, []float64{math.Round(100*math.Sin(x)) / 10, math.Round(100*math.Cos(x)) / 10, float64(k%20) / 2})
		if k%4 == 3 {
			parts++
			s.Set(DemoPartCount, parts)
			s.Set(DemoLastCycle, time.Now().UTC())
		}
		if open := k%10 == 9; open != door {
			door = open
			s.Set(DemoDoorOpen, open)
		}
	}
}
