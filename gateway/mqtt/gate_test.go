package mqtt

import (
	"bytes"
	"context"
	"testing"

	"github.com/eclipse/paho.golang/packets"
	"github.com/eclipse/paho.golang/paho/session/state"
	"github.com/eclipse/paho.golang/paho/store/memory"

	"github.com/ferry-gateway/ferry/gateway/mqtt/session"
)

// TestGateSeqWithPacket: the buffer seq reaches the session store with
// the record's packet, through paho's session (sessionGate.addRecord);
// every other packet added to the session meanwhile (state messages,
// command answers) carries none, and a PUBREL keeps its PUBLISH's seq.
func TestGateSeqWithPacket(t *testing.T) {
	dir := t.TempDir()
	st, err := session.Open(dir, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ss := state.New(st, memory.New())
	var wire bytes.Buffer
	if err := ss.ConAckReceived(&wire, &packets.Connect{CleanStart: true}, &packets.Connack{}); err != nil {
		t.Fatal(err)
	}
	g := &sessionGate{SessionManager: ss, p: &Publisher{store: st}}
	ctx := context.Background()
	resp := func() chan packets.ControlPacket { return make(chan packets.ControlPacket, 1) }
	rec := &packets.Publish{Topic: "p/plc/t", QoS: 2, Payload: []byte(`{"seq":42}`), Properties: &packets.Properties{}}
	if err := g.addRecord(ctx, 42, rec, resp()); err != nil {
		t.Fatal(err)
	}
	other := &packets.Publish{Topic: "p/status", QoS: 1, Payload: []byte(`{}`), Properties: &packets.Properties{}}
	if err := g.AddToSession(ctx, other, resp()); err != nil {
		t.Fatal(err)
	}
	rec2 := &packets.Publish{Topic: "p/plc/t", QoS: 2, Payload: []byte(`{"seq":43}`), Properties: &packets.Properties{}}
	if err := g.addRecord(ctx, 43, rec2, resp()); err != nil {
		t.Fatal(err)
	}
	if rec.PacketID == 0 || other.PacketID == 0 || rec2.PacketID == 0 {
		t.Fatalf("packet ids not set by the session: %d %d %d", rec.PacketID, other.PacketID, rec2.PacketID)
	}
	want := map[uint16]uint64{rec.PacketID: 42, other.PacketID: 0, rec2.PacketID: 43}
	for id, seq := range want {
		if got := st.SeqOf(id); got != seq {
			t.Errorf("packet %d: seq %d, want %d", id, got, seq)
		}
	}
	// The broker's PUBREC: paho replaces the PUBLISH with a PUBREL, which
	// keeps the seq.
	pubrec := &packets.ControlPacket{FixedHeader: packets.FixedHeader{Type: packets.PUBREC},
		Content: &packets.Pubrec{PacketID: rec.PacketID}}
	if err := ss.PacketReceived(pubrec, nil); err != nil {
		t.Fatal(err)
	}
	if got := st.SeqOf(rec.PacketID); got != 42 {
		t.Errorf("after PUBREC: seq %d, want 42", got)
	}
	st.Flush()
	// A restart finds the seqs on disk.
	st2, err := session.Open(dir, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer st2.Close()
	if live, _ := st2.StartState(); len(live) != 2 || live[0] != 42 || live[1] != 43 {
		t.Fatalf("reopened: live seqs %v, want [42 43]", live)
	}
}
