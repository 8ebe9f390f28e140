package config

import "time"

// Defaults. This file is the only place defaults are set: the static ones
// in the default* functions, the ones derived from other settings in
// applyDerivedDefaults. A key that is absent from the file gets the value
// below; a key that is present, even with an empty string, is taken as
// written and validated.
//
//	key                                  default
//	gateway.id                           (required)
//	gateway.state_dir                    "/var/lib/ferry"
//	gateway.log_level                    "info"
//	mqtt.url                             "mqtt://127.0.0.1:1883"
//	mqtt.qos                             1
//	mqtt.topic_prefix                    "ferry/<gateway.id>"
//	mqtt.client_id                       "ferry-<gateway.id>"
//	mqtt.username, password              "" (no authentication)
//	mqtt.ca_file, cert_file, key_file    "" (system roots; no client certificate)
//	mqtt.insecure_skip_verify            false
//	mqtt.keep_alive                      "30s"
//	mqtt.connect_timeout                 "10s"
//	mqtt.session_expiry                  "24h"
//	mqtt.max_inflight                    256
//	mqtt.reconnect_min                   "100ms"
//	mqtt.reconnect_max                   "30s"
//	mqtt.publish                         "tag"
//	mqtt.retain                          false
//	mqtt.command_max_age                 "30s" ("0s" disables the check)
//	mqtt.command_max_skew                "5s" (how far a command's ts may be ahead; "0s" disables the check)
//	mqtt.command_accept_queued           false (commands held in the session without ts or expiry are refused)
//	mqtt.max_replay_rate                 0 (backlog drained as fast as the broker takes it)
//	mqtt.message_expiry                  "0s" (telemetry never expires at the broker)
//	mqtt.dead_letter_attempts            5 (refusals before a record goes to <state_dir>/deadletter.jsonl)
//	buffer.max_bytes                     "1GiB"
//	buffer.max_age                       "0s" (no age limit)
//	buffer.segment_bytes                 "64MiB", or max_bytes/8 (at least 64KiB) when that is smaller
//	buffer.sync                          "batch"
//	buffer.sync_interval                 "10ms"
//	metrics.listen                       "127.0.0.1:9108" ("" disables)
//	metrics.username, password_file      "" (required with each other; basic auth for /, /api/*, /debug/pprof)
//	metrics.token_file                   "" (bearer token for the same; one of the two is required off loopback)
//	metrics.protect_metrics              false (true: /metrics and /healthz need the credentials too)
//	include                              [] (main file only; see template.go)
//	template.name, tag                   (required)
//	template.vars                        [] (no placeholders)
//	modbus.template, opcua.template      "" (no template)
//	modbus.vars, opcua.vars              (a value for every placeholder the template declares)
//	modbus.name, url                     (required)
//	modbus.unit                          1
//	modbus.interval                      "1s"
//	modbus.timeout                       "1s"
//	modbus.max_gap                       10
//	modbus.max_registers_per_request     125
//	modbus.one_request_per_tag           false
//	modbus.order                         "ABCD"
//	modbus.publish                       mqtt.publish
//	modbus.retries                       1 (re-sends after a timeout, busy or gateway exception)
//	modbus.merge_retry                   "10m" (a request split after an exception is tried whole again; "0s" never)
//	modbus.speed                         19200 (rtu:// only)
//	modbus.data_bits                     8
//	modbus.parity                        "none"
//	modbus.stop_bits                     1
//	modbus.tag.name, table, address, type (required)
//	modbus.tag.length                    (required for type "string")
//	modbus.tag.bit                       (required for type "bool" on holding/input)
//	modbus.tag.order                     modbus.order
//	modbus.tag.scale                     1
//	modbus.tag.offset                    0
//	modbus.tag.interval                  modbus.interval
//	modbus.tag.writable                  false
//	modbus.tag.min, max                  (no limit)
//	modbus.tag.verify                    false
//	modbus.tag.min_write_interval        "0s" (no rate limit)
//	modbus.tag.retain                    mqtt.retain
//	modbus.tag.publish                   "always" ("change": report by exception)
//	modbus.tag.deadband                  0 (publish = "change": any change)
//	modbus.tag.heartbeat                 "0s" (publish = "change": no heartbeat)
//	opcua.name, endpoint                 (required)
//	opcua.security_policy                "None"
//	opcua.security_mode                  "None", or "SignAndEncrypt" when security_policy is not "None"
//	opcua.username, password             "" (anonymous)
//	opcua.user_cert_file, user_key_file  "" (X.509 user login when set; not with username)
//	opcua.cert_file, key_file            "" (generated into <state_dir>/pki)
//	opcua.server_thumbprint              ""
//	opcua.trusted_certs_dir              ""
//	opcua.mode                           "subscribe"
//	opcua.interval                       "1s" (mode "poll")
//	opcua.publishing_interval            "1s"
//	opcua.sampling_interval              opcua.publishing_interval
//	opcua.queue_size                     1
//	opcua.max_items_per_request          500
//	opcua.timeout                        "10s"
//	opcua.publish                        mqtt.publish
//	opcua.tag.name, node                 (required)
//	opcua.tag.sampling_interval          opcua.sampling_interval
//	opcua.tag.deadband_type              "" (none)
//	opcua.tag.deadband_value             0
//	opcua.tag.writable                   false
//	opcua.tag.min, max                   (no limit)
//	opcua.tag.verify                     false
//	opcua.tag.min_write_interval         "0s" (no rate limit)
//	opcua.tag.retain                     mqtt.retain

// Sizes.
const (
	KiB int64 = 1 << 10
	MiB int64 = 1 << 20
	GiB int64 = 1 << 30
)

func defaultConfig() Config {
	return Config{
		Gateway: Gateway{
			StateDir: "/var/lib/ferry",
			LogLevel: "info",
		},
		MQTT: MQTT{
			URL:                "mqtt://127.0.0.1:1883",
			QoS:                1,
			KeepAlive:          30 * time.Second,
			ConnectTimeout:     10 * time.Second,
			SessionExpiry:      24 * time.Hour,
			MaxInflight:        256,
			ReconnectMin:       100 * time.Millisecond,
			ReconnectMax:       30 * time.Second,
			Publish:            PublishTag,
			CommandMaxAge:      30 * time.Second,
			CommandMaxSkew:     5 * time.Second,
			DeadLetterAttempts: 5,
		},
		Buffer: Buffer{
			MaxBytes:     1 * GiB,
			SegmentBytes: 64 * MiB,
			Sync:         SyncBatch,
			SyncInterval: 10 * time.Millisecond,
		},
		Metrics: Metrics{
			Listen: "127.0.0.1:9108",
		},
	}
}

func defaultModbusDevice() ModbusDevice {
	return ModbusDevice{
		Unit:                   1,
		Interval:               time.Second,
		Timeout:                time.Second,
		MaxGap:                 10,
		MaxRegistersPerRequest: 125,
		Order:                  OrderABCD,
		Speed:                  19200,
		DataBits:               8,
		Parity:                 "none",
		StopBits:               1,
		Retries:                1,
		MergeRetry:             10 * time.Minute,
	}
}

func defaultModbusTag() ModbusTag {
	return ModbusTag{
		Bit:   -1,
		Scale: 1,
	}
}

func defaultOPCUADevice() OPCUADevice {
	return OPCUADevice{
		SecurityPolicy:     PolicyNone,
		SecurityMode:       SecurityModeNone,
		Mode:               ModeSubscribe,
		Interval:           time.Second,
		PublishingInterval: time.Second,
		QueueSize:          1,
		MaxItemsPerRequest: 500,
		Timeout:            10 * time.Second,
	}
}

func defaultOPCUATag() OPCUATag {
	return OPCUATag{}
}

// setKeys records which keys with derived defaults were present in the
// file.
type setKeys struct {
	topicPrefix, clientID bool
	segmentBytes          bool
	modbus                []modbusSet
	opcua                 []opcuaSet
}

type modbusSet struct {
	publish bool
	tags    []struct{ order, interval, retain bool }
}

type opcuaSet struct {
	securityMode, samplingInterval, publish bool
	tags                                    []struct{ samplingInterval, retain bool }
}

// applyDerivedDefaults fills in the defaults that depend on other
// settings, for every key that was absent from the file.
func applyDerivedDefaults(c *Config, set *setKeys) {
	if !set.topicPrefix {
		c.MQTT.TopicPrefix = "ferry/" + c.Gateway.ID
	}
	if !set.clientID {
		c.MQTT.ClientID = "ferry-" + c.Gateway.ID
	}
	if !set.segmentBytes && c.Buffer.MaxBytes/8 < c.Buffer.SegmentBytes {
		c.Buffer.SegmentBytes = max(c.Buffer.MaxBytes/8, 64*KiB)
	}
	for i := range c.Modbus {
		d, s := &c.Modbus[i], set.modbus[i]
		if !s.publish {
			d.Publish = c.MQTT.Publish
		}
		for j := range d.Tags {
			t, ts := &d.Tags[j], s.tags[j]
			if !ts.order {
				t.Order = d.Order
			}
			if !ts.interval {
				t.Interval = d.Interval
			}
			if !ts.retain {
				t.Retain = c.MQTT.Retain
			}
		}
	}
	for i := range c.OPCUA {
		d, s := &c.OPCUA[i], set.opcua[i]
		if !s.securityMode && d.SecurityPolicy != PolicyNone {
			d.SecurityMode = SecurityModeSignAndEncrypt
		}
		if !s.samplingInterval {
			d.SamplingInterval = d.PublishingInterval
		}
		if !s.publish {
			d.Publish = c.MQTT.Publish
		}
		for j := range d.Tags {
			t, ts := &d.Tags[j], s.tags[j]
			if !ts.samplingInterval {
				t.SamplingInterval = d.SamplingInterval
			}
			if !ts.retain {
				t.Retain = c.MQTT.Retain
			}
		}
	}
}
