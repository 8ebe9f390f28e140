package main

import "github.com/ferry-gateway/ferry/internal/mosquittotest"

// startBroker launches mosquitto in dir on a free loopback port (never
// 1883), anonymous, with unlimited queues (an offline persistent subscriber
// loses nothing) and logging only errors and warnings to its log buffer.
// With persistence its database lives in dir and is saved when the broker
// is stopped with SIGTERM, so sessions and queued messages survive
// StopWith(syscall.SIGTERM) and Relaunch.
func startBroker(dir string, persistence bool) (*mosquittotest.Broker, error) {
	opts := []mosquittotest.Option{mosquittotest.WithLogTypes("error", "warning")}
	if persistence {
		opts = append(opts, mosquittotest.WithPersistence())
	}
	return mosquittotest.Launch(dir, opts...)
}
