package mqtt

import (
	"bufio"
	"net"
	"path/filepath"
	"sync"
	"testing"

	"github.com/eclipse/paho.golang/packets"

	"github.com/ferry-gateway/ferry/adapters"
	"github.com/ferry-gateway/ferry/gateway/record"
)

// silentRefuser is a tiny MQTT 5 broker that behaves like mosquitto 2.0.11
// at its worst: a PUBLISH to the refused topic makes it close the
// connection without sending the PUBACK 0x87 (mosquitto queues it and
// closes before writing it). Other PUBLISHes are acknowledged.
type silentRefuser struct {
	ln      net.Listener
	refused string
	wg      sync.WaitGroup
	mu      sync.Mutex
	conns   int
	session bool
}

func startSilentRefuser(t *testing.T, refused string) *silentRefuser {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &silentRefuser{ln: ln, refused: refused}
	b.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			b.wg.Go(func() { b.serve(c) })
		}
	})
	t.Cleanup(func() { ln.Close(); b.wg.Wait() })
	return b
}

func (b *silentRefuser) serve(c net.Conn) {
	defer c.Close()
	r := bufio.NewReader(c)
	for {
		pk, err := packets.ReadPacket(r)
		if err != nil {
			return
		}
		switch p := pk.Content.(type) {
		case *packets.Connect:
			b.mu.Lock()
			present := b.session && !p.CleanStart
			b.session = true
			b.conns++
			b.mu.Unlock()
			(&packets.Connack{SessionPresent: present}).WriteTo(c)
		case *packets.Publish:
			if p.Topic == b.refused {
				return // closed without a PUBACK
			}
			if p.QoS == 1 {
				(&packets.Puback{PacketID: p.PacketID}).WriteTo(c)
			}
		case *packets.Pingreq:
			(&packets.Pingresp{}).WriteTo(c)
		case *packets.Disconnect:
			return
		}
	}
}

func (b *silentRefuser) connections() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.conns
}

// TestSilentRefusal: a record whose every sending makes the broker close
// the connection without acknowledging anything is taken as refused after
// poisonStrikes such connections (dead-lettered, its topic held), and the
// records behind it are delivered; without that the record was sent again
// first on every connection for ever and nothing behind it got through.
func TestSilentRefusal(t *testing.T) {
	refused := prefix + "/denied/x"
	b := startSilentRefuser(t, refused)
	l := newMemLog(1)
	cfg := testConfig(t, "mqtt://"+b.ln.Addr().String())
	cfg.StatusTopic = ""
	cfg.DeadLetterFile = filepath.Join(t.TempDir(), "dead.jsonl")
	p, err := New(cfg, l)
	if err != nil {
		t.Fatal(err)
	}
	denied, err := l.Append(record.AppendReading(nil, refused, false, adapters.Reading{Value: adapters.IntValue(1), Quality: adapters.Good, Time: ts0}))
	if err != nil {
		t.Fatal(err)
	}
	appendReadings(t, l, 0, 20)
	running(t, p)
	l.waitAllAcked(t, long)
	st := p.Stats()
	if st.DeadLettered != 1 || st.Acked != 20 {
		t.Errorf("stats %+v, want seq %d dead-lettered and 20 acked", st, denied)
	}
	if n := b.connections(); n < poisonStrikes || n > 3*poisonStrikes {
		t.Errorf("%d connections, want about %d", n, poisonStrikes+1)
	}
}
