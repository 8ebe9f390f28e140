package main

import (
	"os"
	"strings"
	"testing"

	"github.com/ferry-gateway/ferry/config"
)

// TestReadmeExample keeps the README's annotated example identical to
// examples/ferry.toml and checks that it is a valid config.
func TestReadmeExample(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	example, err := os.ReadFile("../../examples/ferry.toml")
	if err != nil {
		t.Fatal(err)
	}
	_, after, ok := strings.Cut(string(readme), "### Annotated example")
	if !ok {
		t.Fatal("README has no annotated example section")
	}
	_, block, ok := strings.Cut(after, "```toml\n")
	block, _, ok2 := strings.Cut(block, "```")
	if !ok || !ok2 {
		t.Fatal("README's annotated example has no toml block")
	}
	if block != string(example) {
		t.Error("the README's annotated example differs from examples/ferry.toml")
	}
	env := map[string]string{
		"FERRY_BROKER_HOST":    "broker.test",
		"FERRY_MQTT_PASSWORD":  "secret",
		"FERRY_OPCUA_PASSWORD": "secret",
	}
	cfg, err := config.Parse("examples/ferry.toml", example, func(k string) string { return env[k] })
	if err != nil {
		t.Fatalf("examples/ferry.toml is invalid:\n%v", err)
	}
	if len(cfg.Modbus) == 0 || len(cfg.OPCUA) == 0 {
		t.Errorf("the example should show both adapters: %s", cfg.Summary())
	}
}

// TestReadmeCommands checks the two commands the README promises.
func TestReadmeCommands(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	ci, err := os.ReadFile("../../scripts/test") // the README's one test command, which .ci/run runs
	if err != nil {
		t.Fatal(err)
	}
	for _, cmd := range []string{"go run ./cmd/ferry demo", "go test -race ./..."} {
		if !strings.Contains(string(readme), "```sh\n"+cmd+"\n```") {
			t.Errorf("README does not show %q as a command", cmd)
		}
	}
	if !strings.Contains(string(ci), "\ngo test -race ./...\n") {
		t.Error("scripts/test does not run the README's test command")
	}
}
