// Package config loads and validates ferry's TOML configuration.
//
// Load returns a fully resolved *Config: every default applied, every
// ${ENV} reference expanded, every *_file secret read, every value checked.
// When the file is invalid, Load returns an Errors value listing every
// problem found, each with the file, position (where the TOML parser gives
// one) and the key path, e.g. modbus[plc1].tag[temperature].address.
//
// Unknown keys are errors (with a "did you mean" suggestion), durations
// must be strings ("250ms"; a bare integer is refused), sizes are strings
// such as "512MiB" or integer bytes. ${VAR} and ${VAR:-default} are
// expanded in every string value and $$ is a literal dollar; secrets
// (mqtt.password, opcua.password) may instead be read from a *_file twin;
// relative file names are resolved against the config file's directory.
// Every default lives in defaults.go, in a table ready for the README.
//
// Many identical devices share a [[template]] of tags, and a plant's
// templates and devices may live in files of their own, added with
// include = ["meters/*.toml"]: see template.go.
//
// The types in this file are the resolved model the rest of ferry consumes;
// they carry no TOML decoding concerns.
package config

import (
	"fmt"
	"net"
	"strings"
	"time"
)

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
	MaxReplayRate      float64       // messages/s published from backlog; 0: unlimited
	MessageExpiry      time.Duration // MQTT 5 Message Expiry of telemetry; 0: none
	DeadLetterAttempts int           // refusals (reason code >= 0x80) before a record goes to the dead-letter file

	// Commands beyond command_max_age (see the README's Commands).
	CommandMaxSkew      time.Duration // a command whose ts is further ahead is refused; 0: no check
	CommandAcceptQueued bool          // carry out commands held in the session with neither ts nor Message Expiry
}

// Publish modes: one message per tag, or one per device and poll cycle.
const (
	PublishTag    = "tag"
	PublishDevice = "device"
)

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
	// Credentials for the status page, /api/* and /debug/pprof, required
	// when Listen is not loopback: basic auth (Username with Password,
	// from password_file) or a bearer Token (from token_file).
	Username, Password string
	Token              string
	// ProtectMetrics puts /metrics and /healthz behind the same
	// credentials; by default they stay open for scrapers and probes.
	ProtectMetrics bool
}

// Loopback reports whether Listen accepts connections from this machine
// only: a loopback IP or "localhost". An empty host (every interface), an
// unspecified or other address, and any other name are not loopback.
func (m Metrics) Loopback() bool {
	host, _, err := net.SplitHostPort(m.Listen)
	if err != nil {
		return false
	}
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// Modbus tables.
const (
	TableHolding  = "holding"
	TableInput    = "input"
	TableCoil     = "coil"
	TableDiscrete = "discrete"
)

// Byte and word orders of multi-register Modbus values, named after where
// the bytes A (most significant) to D land: ABCD is big-endian (the Modbus
// norm), CDAB swaps the 16-bit words, BADC swaps the bytes in each word,
// DCBA is little-endian.
const (
	OrderABCD = "ABCD"
	OrderCDAB = "CDAB"
	OrderBADC = "BADC"
	OrderDCBA = "DCBA"
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
	Retries                int    // re-sends of a request after a timeout or a busy/gateway exception
	// MergeRetry is how long a request split after a Modbus exception stays
	// split before the whole request is tried again; 0 keeps it split until
	// restart.
	MergeRetry time.Duration
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
	MinInt           *int64 // min exactly, when written as an integer
	MaxInt           *int64 // max exactly, when written as an integer
	Verify           bool
	MinWriteInterval time.Duration
	Retain           bool
	// Report by exception.
	OnChange  bool          // publish = "change": only changes (and quality changes) are delivered
	Deadband  float64       // absolute; a numeric change must exceed it (publish = "change")
	Heartbeat time.Duration // with OnChange: deliver at least this often anyway; 0 never
}

// Tag publish modes (modbus.tag.publish).
const (
	TagPublishAlways = "always"
	TagPublishChange = "change"
)

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

// OPC UA security policies.
const (
	PolicyNone                = "None"
	PolicyBasic256Sha256      = "Basic256Sha256"
	PolicyAes128Sha256RsaOaep = "Aes128_Sha256_RsaOaep"
	PolicyAes256Sha256RsaPss  = "Aes256_Sha256_RsaPss"
)

// OPC UA message security modes.
const (
	SecurityModeNone           = "None"
	SecurityModeSign           = "Sign"
	SecurityModeSignAndEncrypt = "SignAndEncrypt"
)

// OPC UA acquisition modes.
const (
	ModeSubscribe = "subscribe"
	ModePoll      = "poll"
)

// OPC UA deadband types.
const (
	DeadbandAbsolute = "absolute"
	DeadbandPercent  = "percent"
)

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
	UserCertFile       string // X.509 user login (with UserKeyFile) instead of anonymous or username
	UserKeyFile        string
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
	MinInt           *int64 // min exactly, when written as an integer
	MaxInt           *int64 // max exactly, when written as an integer
	Verify           bool
	MinWriteInterval time.Duration
	Retain           bool
}

// Summary returns the one-line summary `ferry check` prints for a valid
// config, e.g. "ferry.toml: valid: 2 devices (1 modbus, 1 opcua), 5 tags".
func (c *Config) Summary() string {
	tags := 0
	for _, d := range c.Modbus {
		tags += len(d.Tags)
	}
	for _, d := range c.OPCUA {
		tags += len(d.Tags)
	}
	return fmt.Sprintf("%s: valid: %s (%d modbus, %d opcua), %s",
		c.Path, plural(len(c.Modbus)+len(c.OPCUA), "device"), len(c.Modbus), len(c.OPCUA), plural(tags, "tag"))
}

func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}
