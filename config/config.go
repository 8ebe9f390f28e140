// Package config loads and validates ferry's TOML configuration.
//
// Load returns a fully resolved *Config: every default applied, every
// ${ENV} reference expanded, every *_file secret read, every value checked.
// When the file is invalid, Load returns an Errors value listing every
// problem found, each with the file, position (where the TOML parser gives
// one) and the key path, e.g. modbus[plc1].tag[temperature].address.
//
// The types in this file are the resolved model the rest of ferry consumes;
// they carry no TOML decoding concerns.
package config

import "time"

// Config is a loaded, validated and defaulted configuration.
type Config struct {
	Path    string // the file it was loaded from
	Gateway Gateway
	MQTT    MQTT
	Buffer  Buffer
	Metrics Metrics
	Modbus  []ModbusDevice
	OPCUA   []OPCUADevice
}

// Gateway is the [gateway] section.
type Gateway struct {
	ID       string // required; [A-Za-z0-9_-]+
	StateDir string // buffer, MQTT session, OPC UA PKI
	LogLevel string // debug, info, warn, error
}

// MQTT is the [mqtt] section.
type MQTT struct {
	URL                string // mqtt://host:port or mqtts://host:port
	QoS                byte   // 0, 1 or 2 for telemetry
	TopicPrefix        string // P in the topic contract
	ClientID           string
	Username           string
	Password           string // from password or password_file
	CAFile             string
	CertFile           string
	KeyFile            string
	InsecureSkipVerify bool
	KeepAlive          time.Duration
	ConnectTimeout     time.Duration
	SessionExpiry      time.Duration
	MaxInflight        int
	ReconnectMin       time.Duration
	ReconnectMax       time.Duration
	Publish            string // "tag" or "device"
	Retain             bool   // retain telemetry messages
	CommandMaxAge      time.Duration
}

// Sync modes of the buffer.
const (
	SyncAlways = "always"
	SyncBatch  = "batch"
	SyncNone   = "none"
)

// Buffer is the [buffer] section.
type Buffer struct {
	MaxBytes     int64
	MaxAge       time.Duration // 0: no age limit
	SegmentBytes int64
	Sync         string // SyncAlways, SyncBatch or SyncNone
	SyncInterval time.Duration
}

// Metrics is the [metrics] section.
type Metrics struct {
	Listen string // empty disables the HTTP endpoint
}

// Modbus tables.
const (
	TableHolding  = "holding"
	TableInput    = "input"
	TableCoil     = "coil"
	TableDiscrete = "discrete"
)

// ModbusDevice is one [[modbus]] table.
type ModbusDevice struct {
	Name                   string
	URL                    string // tcp://, rtu://, rtuovertcp://
	Unit                   uint8
	Interval               time.Duration
	Timeout                time.Duration
	MaxGap                 int    // registers a coalesced read may skip
	MaxRegistersPerRequest int    // 1..125
	OneRequestPerTag       bool   // for picky devices
	Order                  string // default byte/word order of its tags
	Publish                string // "tag" or "device"; defaults to mqtt.publish
	// Serial line settings (rtu:// only).
	Speed    int
	DataBits int
	Parity   string // none, even, odd
	StopBits int
	Tags     []ModbusTag
}

// ModbusTag is one [[modbus.tag]] table.
type ModbusTag struct {
	Name             string
	Table            string // TableHolding, TableInput, TableCoil, TableDiscrete
	Address          uint16
	Type             string // bool, int16, uint16, int32, uint32, int64, uint64, float32, float64, string
	Order            string // ABCD, CDAB, BADC, DCBA (resolved: tag, else device, else ABCD)
	Bit              int    // -1 when unset; 0..15 picks one bit of a register
	Length           int    // registers, for type string
	Scale            float64
	Offset           float64
	Interval         time.Duration // resolved: tag, else device
	Writable         bool
	Min              *float64
	Max              *float64
	Verify           bool
	MinWriteInterval time.Duration
	Retain           bool
}

// Registers returns how many 16-bit registers (or bits, for coil and
// discrete tables) the tag occupies.
func (t ModbusTag) Registers() int {
	switch t.Type {
	case "bool", "int16", "uint16":
		return 1
	case "int32", "uint32", "float32":
		return 2
	case "int64", "uint64", "float64":
		return 4
	case "string":
		return t.Length
	}
	return 1
}

// OPCUADevice is one [[opcua]] table.
type OPCUADevice struct {
	Name               string
	Endpoint           string
	SecurityPolicy     string // None, Basic256Sha256, Aes128_Sha256_RsaOaep, Aes256_Sha256_RsaPss
	SecurityMode       string // None, Sign, SignAndEncrypt
	Username           string
	Password           string // from password or password_file
	CertFile           string // client certificate; generated into state_dir/pki when empty
	KeyFile            string
	ServerThumbprint   string // hex SHA-256 of the server certificate (DER)
	TrustedCertsDir    string
	Mode               string        // "subscribe" or "poll"
	Interval           time.Duration // poll mode
	PublishingInterval time.Duration
	SamplingInterval   time.Duration
	QueueSize          uint32
	MaxItemsPerRequest int
	Timeout            time.Duration
	Publish            string
	Tags               []OPCUATag
}

// OPCUATag is one [[opcua.tag]] table.
type OPCUATag struct {
	Name             string
	Node             string
	SamplingInterval time.Duration // resolved: tag, else device
	DeadbandType     string        // "", "absolute", "percent"
	DeadbandValue    float64
	Writable         bool
	Min              *float64
	Max              *float64
	Verify           bool
	MinWriteInterval time.Duration
	Retain           bool
}
