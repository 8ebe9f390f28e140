package main

import (
	"context"
	"fmt"
	"io"
	"log"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/auth"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/ferry-gateway/ferry/adapters/modbus/modbustest"
	"github.com/ferry-gateway/ferry/adapters/opcua/opcuatest"
	"github.com/ferry-gateway/ferry/config"
	"github.com/ferry-gateway/ferry/gateway"
)

// demoConfig is the config the demo runs, in the same TOML a user writes;
// %s are the state directory, the broker URL, the Modbus simulator URL and
// the OPC UA simulator URL.
const demoConfig = `# ferry demo: in-process Modbus and OPC UA simulators and an embedded MQTT 5 broker.
[gateway]
id = "demo"
state_dir = %q

[mqtt]
url = %q
qos = 1

[buffer]
sync = "batch"

[metrics]
listen = ""

[[modbus]]
name = "plc1"
url = %q
interval = "1s"
timeout = "500ms"

  [[modbus.tag]]
  name = "temperature"
  table = "holding"
  address = 100
  type = "float32"

  [[modbus.tag]]
  name = "pressure"
  table = "holding"
  address = 102
  type = "int16"
  scale = 0.1

  [[modbus.tag]]
  name = "running"
  table = "holding"
  address = 103
  type = "bool"
  bit = 0

  [[modbus.tag]]
  name = "flow"
  table = "holding"
  address = 104
  type = "float32"
  order = "CDAB"

  [[modbus.tag]]
  name = "setpoint"
  table = "holding"
  address = 106
  type = "float32"
  writable = true
  min = 0.0
  max = 100.0

  [[modbus.tag]]
  name = "recipe"
  table = "holding"
  address = 120
  type = "string"
  length = 8

  [[modbus.tag]]
  name = "counter"
  table = "input"
  address = 0
  type = "uint16"

  [[modbus.tag]]
  name = "alarm"
  table = "coil"
  address = 0
  type = "bool"

[[opcua]]
name = "cnc1"
endpoint = %q
security_policy = "None"
mode = "subscribe"
publishing_interval = "500ms"

  [[opcua.tag]]
  name = "spindle_speed"
  node = "nsu=urn:ferry:opcuatest;s=Spindle.Speed"

  [[opcua.tag]]
  name = "part_count"
  node = "nsu=urn:ferry:opcuatest;s=Parts.Count"

  [[opcua.tag]]
  name = "program"
  node = "nsu=urn:ferry:opcuatest;s=Program.Name"

  [[opcua.tag]]
  name = "axes"
  node = "nsu=urn:ferry:opcuatest;s=Axes.Position"

  [[opcua.tag]]
  name = "door_open"
  node = "nsu=urn:ferry:opcuatest;s=Door.Open"

  [[opcua.tag]]
  name = "last_cycle"
  node = "nsu=urn:ferry:opcuatest;s=Cycle.LastStart"
`

func cmdDemo(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("demo", "demo [-duration D] [-v]", stderr)
	duration := fs.Duration("duration", 0, "stop after this long (0: run until Ctrl-C)")
	verbose := fs.Bool("v", false, "log what the gateway does (info level)")
	if code := parseFlags(fs, args, 0); code >= 0 {
		return code
	}
	level := slog.LevelWarn
	if *verbose {
		level = slog.LevelInfo
	}
	logger := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	if err := runDemo(ctx, *duration, stdout, logger); err != nil {
		fmt.Fprintf(stderr, "ferry demo: %v\n", err)
		return exitFailure
	}
	return exitOK
}

// runDemo runs the demo until ctx is done or, when duration > 0, until
// duration has passed since the gateway became ready.
func runDemo(ctx context.Context, duration time.Duration, stdout io.Writer, logger *slog.Logger) error {
	stateDir, err := os.MkdirTemp("", "ferry-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(stateDir)

	broker, brokerURL, err := startDemoBroker(logger)
	if err != nil {
		return fmt.Errorf("embedded broker: %w", err)
	}
	defer broker.Close()

	sim, err := modbustest.Start()
	if err != nil {
		return fmt.Errorf("modbus simulator: %w", err)
	}
	defer sim.Close()
	// gopcua logs through the standard logger; the demo shows MQTT only.
	prevLog := log.Writer()
	log.SetOutput(io.Discard)
	defer log.SetOutput(prevLog)
	uaSim := opcuatest.NewDemo()
	if err := uaSim.Start(); err != nil {
		return fmt.Errorf("opcua simulator: %w", err)
	}
	defer uaSim.Close()

	simCtx, stopSim := context.WithCancel(ctx)
	var simDone sync.WaitGroup
	simDone.Go(func() { _ = sim.RunDemo(simCtx) })
	simDone.Go(func() { _ = uaSim.RunDemo(simCtx) })
	defer simDone.Wait()
	defer stopSim()

	path := filepath.Join(stateDir, "ferry.toml")
	text := fmt.Sprintf(demoConfig, filepath.Join(stateDir, "state"), brokerURL, sim.URL(), uaSim.URL())
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		return err
	}
	cfg, err := config.Load(path)
	if err != nil {
		return fmt.Errorf("demo config: %w", err)
	}

	var mu sync.Mutex // one line at a time on stdout
	err = broker.Subscribe(cfg.MQTT.TopicPrefix+"/#", 1, func(_ *mochi.Client, _ packets.Subscription, pk packets.Packet) {
		mu.Lock()
		defer mu.Unlock()
		fmt.Fprintf(stdout, "%s  %-30s %s\n", time.Now().Format("15:04:05.000"), pk.TopicName, pk.Payload)
	})
	if err != nil {
		return fmt.Errorf("subscribe: %w", err)
	}

	fmt.Fprintf(stdout, "ferry demo: Modbus simulator at %s, OPC UA simulator at %s, MQTT 5 broker at %s, buffer in %s\n", sim.URL(), uaSim.URL(), brokerURL, stateDir)
	fmt.Fprintf(stdout, "ferry demo: subscribed to %s/# — Ctrl-C stops\n\n", cfg.MQTT.TopicPrefix)
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	var cmdDone sync.WaitGroup
	defer cmdDone.Wait()
	ready := func() {
		if duration > 0 {
			time.AfterFunc(duration, stop)
		}
		cmdDone.Go(func() { demoCommand(runCtx, broker, cfg.MQTT.TopicPrefix, stdout, &mu) })
	}
	return gateway.Run(runCtx, cfg, gateway.Options{Logger: logger, Version: version, ShutdownGrace: 2 * time.Second, OnReady: ready})
}

// demoCommand shows one command round trip a second after start: it
// writes the setpoint through MQTT; the result arrives on .../set/result
// and the next poll publishes the new value.
func demoCommand(ctx context.Context, broker *mochi.Server, prefix string, stdout io.Writer, mu *sync.Mutex) {
	select {
	case <-ctx.Done():
		return
	case <-time.After(time.Second):
	}
	topic := prefix + "/plc1/setpoint/set"
	mu.Lock()
	fmt.Fprintf(stdout, "\nferry demo: sending a command: %s 42.5 (the result comes back on %s/result)\n\n", topic, topic)
	mu.Unlock()
	if err := broker.Publish(topic, []byte("42.5"), false, 1); err != nil {
		mu.Lock()
		fmt.Fprintf(stdout, "ferry demo: command not sent: %v\n", err)
		mu.Unlock()
	}
}

// startDemoBroker starts an embedded MQTT 5 broker on a free loopback port.
// It keeps no state on disk.
func startDemoBroker(logger *slog.Logger) (*mochi.Server, string, error) {
	srv := mochi.New(&mochi.Options{
		InlineClient: true,
		Logger:       logger.With("component", "demo-broker"),
	})
	if err := srv.AddHook(new(auth.AllowHook), nil); err != nil {
		return nil, "", err
	}
	tcp := listeners.NewTCP(listeners.Config{ID: "demo", Address: "127.0.0.1:0"})
	if err := srv.AddListener(tcp); err != nil {
		return nil, "", err
	}
	if err := srv.Serve(); err != nil {
		return nil, "", err
	}
	return srv, "mqtt://" + tcp.Address(), nil
}
