package config

import (
	"fmt"
	"math"
	"strings"
	"time"
)

// minInterval is the shortest poll interval accepted.
const minInterval = 10 * time.Millisecond

// decode resolves the generic TOML tree into a Config, reporting every
// problem into d.errs.
func (d *decoder) decode(root map[string]any) *Config {
	c := defaultConfig()
	set := &setKeys{}
	top := &table{d: d, s: d.main, m: root}
	files := append([]*table{top}, d.includes(top)...)
	d.collectTemplates(files)

	if t := top.sub("gateway"); t != nil {
		d.gateway(t, &c.Gateway)
	}
	if t := top.sub("mqtt"); t != nil {
		d.mqtt(t, &c.MQTT, set)
	}
	if t := top.sub("buffer"); t != nil {
		d.buffer(t, &c.Buffer, set)
	}
	if t := top.sub("metrics"); t != nil {
		d.metrics(t, &c.Metrics)
	}

	devices := map[string]*table{} // device name -> the table of its first definition
	links := map[string]ModbusDevice{}
	for _, f := range files {
		for _, t := range f.array("modbus") {
			dev, s := d.modbusDevice(t, &c.MQTT, devices)
			c.Modbus = append(c.Modbus, dev)
			set.modbus = append(set.modbus, s)
			checkSharedLink(t, links, dev)
		}
	}
	for _, f := range files {
		for _, t := range f.array("opcua") {
			dev, s := d.opcuaDevice(t, devices)
			c.OPCUA = append(c.OPCUA, dev)
			set.opcua = append(set.opcua, s)
		}
	}
	d.checkUnused()
	for _, f := range files[1:] {
		f.finishIncluded()
	}
	top.finish()

	applyDerivedDefaults(&c, set)
	return &c
}

func (d *decoder) metrics(t *table, m *Metrics) {
	t.str("listen", &m.Listen)
	listenOK := true
	if l := m.Listen; l != "" && t.has("listen") {
		if err := checkHostPort(l, false); err != nil {
			t.errf("listen", "%v (use \"\" to disable)", err)
			listenOK = false
		}
	}
	t.nonEmpty("username", &m.Username)
	passOK := t.secretFile("password_file", &m.Password)
	tokenOK := t.secretFile("token_file", &m.Token)
	switch {
	case m.Username != "" && !t.has("password_file"):
		t.errf("username", "needs password_file (the basic-auth password, in a file)")
	case t.has("password_file") && !t.has("username"):
		t.errf("password_file", "needs username")
	case listenOK && m.Listen != "" && !m.Loopback() && !passOK && !tokenOK && !t.has("password_file") && !t.has("token_file"):
		t.errf("listen", "%q is not a loopback address: the status page, /api/* and /debug/pprof would be open to the network; set username and password_file (basic auth) or token_file (bearer token), or listen on 127.0.0.1 and reach it through an SSH tunnel", m.Listen)
	}
	t.boolean("protect_metrics", &m.ProtectMetrics)
	if m.ProtectMetrics && !t.has("password_file") && !t.has("token_file") {
		t.errf("protect_metrics", "needs credentials to protect /metrics and /healthz with: set username and password_file (basic auth) or token_file (bearer token)")
	}
	t.finish()
}

// secretFile reads a secret that is only given as a file (trailing line
// breaks removed); an empty one is an error.
func (t *table) secretFile(key string, dst *string) bool {
	var name string
	if !t.nonEmpty(key, &name) {
		return false
	}
	data, err := readSecret(t.d.resolve(name))
	if err != nil {
		t.errf(key, "cannot read %q: %v", name, err)
		return false
	}
	s := strings.TrimRight(string(data), "\r\n")
	if s == "" {
		t.errf(key, "%q is empty", name)
		return false
	}
	*dst = s
	return true
}

func (d *decoder) gateway(t *table, g *Gateway) {
	if !t.has("id") {
		t.missing("id", "missing required key")
	}
	if t.str("id", &g.ID) {
		if err := checkName(g.ID, ""); err != nil {
			t.errf("id", "%v", err)
		}
	}
	t.nonEmpty("state_dir", &g.StateDir)
	t.oneOf("log_level", &g.LogLevel, "debug", "info", "warn", "error")
	t.finish()
}

var (
	mqttSchemes    = []string{"mqtt", "mqtts", "tcp", "ssl", "tls", "ws", "wss"}
	mqttTLSSchemes = map[string]bool{"mqtts": true, "ssl": true, "tls": true, "wss": true}
)

func (d *decoder) mqtt(t *table, m *MQTT, set *setKeys) {
	tlsScheme := true // unknown until the URL parses; do not complain then
	if t.str("url", &m.URL) {
		if u, err := parseURL(m.URL, mqttSchemes...); err != nil {
			t.errf("url", "%v", err)
		} else if err := checkNetURL(u, m.URL, u.Scheme == "ws" || u.Scheme == "wss"); err != nil {
			t.errf("url", "%v", err)
		} else {
			tlsScheme = mqttTLSSchemes[u.Scheme]
		}
	} else if !t.has("url") {
		tlsScheme = false // the default URL is plain mqtt://
	}
	var qos int64
	if t.integer("qos", &qos, 0, 2) {
		m.QoS = byte(qos)
	}
	set.topicPrefix = t.has("topic_prefix")
	if t.str("topic_prefix", &m.TopicPrefix) {
		if err := checkTopicPrefix(m.TopicPrefix); err != nil {
			t.errf("topic_prefix", "%v", err)
		}
	}
	set.clientID = t.has("client_id")
	t.nonEmpty("client_id", &m.ClientID)
	t.str("username", &m.Username)
	t.secret("password", "password_file", &m.Password)
	t.file("ca_file", &m.CAFile)
	t.file("cert_file", &m.CertFile)
	t.file("key_file", &m.KeyFile)
	t.boolean("insecure_skip_verify", &m.InsecureSkipVerify)
	if t.duration("keep_alive", &m.KeepAlive) {
		if m.KeepAlive > 65535*time.Second || m.KeepAlive%time.Second != 0 {
			t.errf("keep_alive", "must be whole seconds between \"0s\" (off) and \"65535s\"")
		}
	}
	if t.duration("connect_timeout", &m.ConnectTimeout) && m.ConnectTimeout == 0 {
		t.errf("connect_timeout", "must be positive")
	}
	if t.duration("session_expiry", &m.SessionExpiry) && m.SessionExpiry > math.MaxUint32*time.Second {
		t.errf("session_expiry", "must be at most %q", (math.MaxUint32 * time.Second).String())
	}
	t.intv("max_inflight", &m.MaxInflight, 1, 65535)
	minOK := t.duration("reconnect_min", &m.ReconnectMin)
	if minOK && m.ReconnectMin == 0 {
		t.errf("reconnect_min", "must be positive")
	}
	if t.duration("reconnect_max", &m.ReconnectMax) || minOK {
		if m.ReconnectMax < m.ReconnectMin {
			key := "reconnect_max"
			if !t.has(key) {
				key = "reconnect_min"
			}
			t.errf(key, "reconnect_max (%v) is less than reconnect_min (%v)", m.ReconnectMax, m.ReconnectMin)
		}
	}
	t.oneOf("publish", &m.Publish, PublishTag, PublishDevice)
	t.boolean("retain", &m.Retain)
	t.duration("command_max_age", &m.CommandMaxAge)
	t.duration("command_max_skew", &m.CommandMaxSkew)
	t.boolean("command_accept_queued", &m.CommandAcceptQueued)
	if t.float("max_replay_rate", &m.MaxReplayRate) && m.MaxReplayRate < 0 {
		t.errf("max_replay_rate", "must be 0 (unlimited) or a positive number of messages per second")
	}
	if t.duration("message_expiry", &m.MessageExpiry) && m.MessageExpiry != 0 &&
		(m.MessageExpiry < time.Second || m.MessageExpiry > math.MaxUint32*time.Second || m.MessageExpiry%time.Second != 0) {
		t.errf("message_expiry", "must be \"0s\" (none) or whole seconds from \"1s\" to %q", (math.MaxUint32 * time.Second).String())
	}
	t.intv("dead_letter_attempts", &m.DeadLetterAttempts, 1, 1000)

	if (m.CertFile == "") != (m.KeyFile == "") && t.has("cert_file") != t.has("key_file") {
		if m.CertFile == "" {
			t.errf("key_file", "key_file needs cert_file (mutual TLS needs both)")
		} else {
			t.errf("cert_file", "cert_file needs key_file (mutual TLS needs both)")
		}
	}
	if !tlsScheme {
		for _, k := range []string{"ca_file", "cert_file", "key_file", "insecure_skip_verify"} {
			if t.has(k) && (k != "insecure_skip_verify" || m.InsecureSkipVerify) {
				t.errf(k, "TLS setting with a plain-text url: use mqtts://, ssl://, tls:// or wss://")
			}
		}
	}
	t.finish()
}

// checkTopicPrefix validates mqtt.topic_prefix.
func checkTopicPrefix(p string) error {
	switch {
	case p == "":
		return fmt.Errorf("must not be empty")
	case strings.ContainsAny(p, "+#"):
		return fmt.Errorf("must not contain the MQTT wildcards '+' or '#'")
	case strings.ContainsRune(p, 0):
		return fmt.Errorf("must not contain NUL")
	case strings.HasPrefix(p, "/") || strings.HasSuffix(p, "/"):
		return fmt.Errorf("must not begin or end with '/'")
	case strings.Contains(p, "//"):
		return fmt.Errorf("must not contain an empty topic level (\"//\")")
	case strings.HasPrefix(p, "$"):
		return fmt.Errorf("must not begin with '$': those topics are reserved by brokers")
	}
	return nil
}

func (d *decoder) buffer(t *table, b *Buffer, set *setKeys) {
	maxOK := t.size("max_bytes", &b.MaxBytes)
	if maxOK && b.MaxBytes < 64*KiB {
		t.errf("max_bytes", "must be at least 64KiB")
		maxOK = false
	}
	t.duration("max_age", &b.MaxAge)
	if t.size("segment_bytes", &b.SegmentBytes) {
		set.segmentBytes = true
		switch {
		case b.SegmentBytes < 64*KiB:
			t.errf("segment_bytes", "must be at least 64KiB")
		case b.SegmentBytes > b.MaxBytes && (maxOK || !t.has("max_bytes")):
			t.errf("segment_bytes", "segment_bytes (%d) is larger than max_bytes (%d)", b.SegmentBytes, b.MaxBytes)
		}
	}
	t.oneOf("sync", &b.Sync, SyncAlways, SyncBatch, SyncNone)
	if t.duration("sync_interval", &b.SyncInterval) && b.SyncInterval == 0 && b.Sync == SyncBatch {
		t.errf("sync_interval", "must be positive with sync = \"batch\"")
	}
	t.finish()
}

var (
	modbusSchemes   = []string{"tcp", "tcp+tls", "udp", "rtu", "rtuovertcp", "rtuoverudp"}
	modbusTables    = []string{TableHolding, TableInput, TableCoil, TableDiscrete}
	modbusTypes     = []string{"bool", "int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64", "string"}
	modbusOrders    = []string{OrderABCD, OrderCDAB, OrderBADC, OrderDCBA}
	modbusSerialKey = []string{"speed", "data_bits", "parity", "stop_bits"}
)

// checkDuplicate records where name is defined in seen and reports a
// duplicate (its line is looked up only then: a valid config never builds
// the position index).
func (t *table) checkDuplicate(seen map[string]*table, kind, name string) {
	if first, ok := seen[name]; ok {
		p := first.s.positions().lookup(first.child("name"))
		if first.s == t.s {
			t.errf("name", "duplicate %s %q (first defined at line %d)", kind, name, p.line)
		} else {
			t.errf("name", "duplicate %s %q (first defined at %s:%d)", kind, name, first.s.file, p.line)
		}
		return
	}
	seen[name] = t
}

func (d *decoder) modbusDevice(t *table, mq *MQTT, devices map[string]*table) (ModbusDevice, modbusSet) {
	dev := defaultModbusDevice()
	var set modbusSet
	if name, ok := t.nameElem("device"); ok {
		dev.Name = name
		t.checkDuplicate(devices, "device", name)
	}
	t.require("url")
	scheme := ""
	if t.str("url", &dev.URL) {
		if u, err := parseURL(dev.URL, modbusSchemes...); err != nil {
			t.errf("url", "%v", err)
		} else {
			scheme = u.Scheme
			if scheme == "rtu" {
				if strings.TrimPrefix(dev.URL[len("rtu:"):], "//") == "" {
					t.errf("url", "missing serial device in %q, e.g. rtu:///dev/ttyUSB0", dev.URL)
				}
			} else if err := checkNetURL(u, dev.URL, false); err != nil {
				t.errf("url", "%v", err)
			}
		}
	}
	var unit int64
	if t.integer("unit", &unit, 0, 255) {
		serialLine := scheme == "rtu" || scheme == "rtuovertcp" || scheme == "rtuoverudp"
		switch {
		case serialLine && (unit < 1 || unit > 247):
			t.errf("unit", "must be between 1 and 247 on a serial line, got %d (0 is broadcast)", unit)
		case !serialLine && unit > 247 && unit != 255:
			t.errf("unit", "must be 0..247, or 255, got %d", unit)
		default:
			dev.Unit = uint8(unit)
		}
	}
	if t.duration("interval", &dev.Interval) && dev.Interval < minInterval {
		t.errf("interval", "must be at least %v", minInterval)
	}
	if t.duration("timeout", &dev.Timeout) && dev.Timeout == 0 {
		t.errf("timeout", "must be positive")
	}
	t.intv("max_gap", &dev.MaxGap, 0, 125)
	t.intv("max_registers_per_request", &dev.MaxRegistersPerRequest, 1, 125)
	t.boolean("one_request_per_tag", &dev.OneRequestPerTag)
	t.oneOf("order", &dev.Order, modbusOrders...)
	set.publish = t.has("publish")
	t.oneOf("publish", &dev.Publish, PublishTag, PublishDevice)
	t.intv("speed", &dev.Speed, 1, 10_000_000)
	t.intv("data_bits", &dev.DataBits, 5, 8)
	t.oneOf("parity", &dev.Parity, "none", "even", "odd")
	t.intv("stop_bits", &dev.StopBits, 1, 2)
	t.intv("retries", &dev.Retries, 0, 10)
	t.duration("merge_retry", &dev.MergeRetry)
	if scheme != "" && scheme != "rtu" {
		for _, k := range modbusSerialKey {
			if t.has(k) {
				t.errf(k, "only applies to serial devices (rtu://)")
			}
		}
	}

	tags := map[string]*table{}
	for _, tt := range d.deviceTags(t, kindModbus) {
		tag, ts := d.modbusTag(tt, &dev, tags)
		dev.Tags = append(dev.Tags, tag)
		set.tags = append(set.tags, ts)
	}
	if len(dev.Tags) == 0 && t.emptyOrAbsent("tag") && !t.has("template") {
		t.missing("tag", "a device needs at least one tag: add a [[modbus.tag]] table after this [[modbus]] (ferry run refuses a device without tags)")
	}
	t.finish()
	return dev, set
}

// checkSharedLink: devices with the same url share one connection (several
// unit ids behind one serial line or TCP gateway), so their serial settings
// must agree.
func checkSharedLink(t *table, links map[string]ModbusDevice, dev ModbusDevice) {
	if dev.URL == "" {
		return
	}
	first, ok := links[dev.URL]
	if !ok {
		links[dev.URL] = dev
		return
	}
	if first.Speed != dev.Speed || first.DataBits != dev.DataBits || first.Parity != dev.Parity || first.StopBits != dev.StopBits {
		t.errf("url", "shares %q with device %q (one connection), but its serial settings differ: speed, data_bits, parity and stop_bits must match", shownURL(dev.URL), first.Name)
	}
}

func isRegisterTable(table string) bool { return table == TableHolding || table == TableInput }

func (d *decoder) modbusTag(t *table, dev *ModbusDevice, seen map[string]*table) (ModbusTag, struct{ order, interval, retain bool }) {
	tag := defaultModbusTag()
	var set struct{ order, interval, retain bool }
	if name, ok := t.nameElem("tag"); ok {
		tag.Name = name
		t.checkDuplicate(seen, "tag", name)
	}
	t.require("table", "address", "type")
	tableOK := t.oneOf("table", &tag.Table, modbusTables...)
	var addr int64
	addrOK := t.integer("address", &addr, 0, 65535)
	tag.Address = uint16(addr)
	typeOK := t.oneOf("type", &tag.Type, modbusTypes...)
	set.order = t.oneOf("order", &tag.Order, modbusOrders...)
	bitOK := t.intv("bit", &tag.Bit, 0, 15)
	lengthOK := t.intv("length", &tag.Length, 1, 123)
	if t.float("scale", &tag.Scale) && tag.Scale == 0 {
		t.errf("scale", "must not be zero")
	}
	t.float("offset", &tag.Offset)
	set.interval = t.duration("interval", &tag.Interval)
	if set.interval && tag.Interval < minInterval {
		t.errf("interval", "must be at least %v", minInterval)
	}
	t.boolean("writable", &tag.Writable)
	t.limits(&tag.Min, &tag.Max, &tag.MinInt, &tag.MaxInt)
	t.boolean("verify", &tag.Verify)
	t.duration("min_write_interval", &tag.MinWriteInterval)
	set.retain = t.boolean("retain", &tag.Retain)
	var publish string
	if t.oneOf("publish", &publish, TagPublishAlways, TagPublishChange) {
		tag.OnChange = publish == TagPublishChange
	}
	if t.float("deadband", &tag.Deadband) && tag.Deadband < 0 {
		t.errf("deadband", "must not be negative")
	}
	t.duration("heartbeat", &tag.Heartbeat)
	if !tag.OnChange {
		for _, k := range []string{"deadband", "heartbeat"} {
			if t.has(k) {
				t.errf(k, "only applies with publish = \"change\"")
			}
		}
	}

	if !tableOK || !typeOK {
		t.finish()
		return tag, set
	}
	bits := !isRegisterTable(tag.Table)
	numeric := tag.Type != "bool" && tag.Type != "string"
	switch {
	case bits && tag.Type != "bool":
		t.errf("type", "%s is not possible on a %s table: coils and discrete inputs hold single bits, use type \"bool\"", tag.Type, tag.Table)
	case !bits && tag.Type == "bool" && !t.has("bit"):
		t.missing("bit", "required for type \"bool\" on %s registers: which bit of the register, 0..15", tag.Table)
	}
	if t.has("bit") {
		switch {
		case bits:
			t.errf("bit", "only applies to holding and input registers; coils and discrete inputs are single bits already")
		case tag.Type != "bool":
			t.errf("bit", "only applies to type \"bool\"")
		}
	}
	if !bitOK && tag.Bit != -1 {
		tag.Bit = -1
	}
	if tag.Type == "string" && !t.has("length") {
		t.missing("length", "required for type \"string\": the number of registers, 1..123")
	}
	if t.has("length") && tag.Type != "string" {
		t.errf("length", "only applies to type \"string\"")
	}
	if addrOK && (tag.Type != "string" || lengthOK) && !bits {
		n := tag.Registers()
		if end := int(addr) + n - 1; end > 65535 {
			t.errf("address", "%s at %d overflows the table: needs registers %d..%d", tag.Type, addr, addr, end)
		}
		if n > dev.MaxRegistersPerRequest {
			key := "type"
			if tag.Type == "string" {
				key = "length"
			}
			t.errf(key, "needs %d registers, more than the device's max_registers_per_request (%d)", n, dev.MaxRegistersPerRequest)
		}
	}
	if t.has("order") {
		switch {
		case tag.Type == "string":
			t.errf("order", "does not apply to type \"string\"")
		case tag.Registers() < 2 || bits:
			t.errf("order", "only applies to 32- and 64-bit types; %s is a single register", tag.Type)
		}
	}
	if !numeric {
		for _, k := range []string{"scale", "offset", "min", "max", "deadband"} {
			if t.has(k) {
				t.errf(k, "only applies to numeric types, not %s", tag.Type)
			}
		}
	}
	if tag.Writable && (tag.Table == TableInput || tag.Table == TableDiscrete) {
		t.errf("writable", "%s tables are read-only in Modbus; only coil and holding tags can be writable", tag.Table)
	}
	d.checkWriteOnly(t, tag.Writable)
	t.finish()
	return tag, set
}

// checkWriteOnly reports write settings on a tag that is not writable.
func (d *decoder) checkWriteOnly(t *table, writable bool) {
	if writable {
		return
	}
	for _, k := range []string{"verify", "min_write_interval"} {
		if t.has(k) {
			t.errf(k, "only applies to writable tags (writable = true)")
		}
	}
}

var (
	opcuaPolicies = []string{PolicyNone, PolicyBasic256Sha256, PolicyAes128Sha256RsaOaep, PolicyAes256Sha256RsaPss}
	opcuaModes    = []string{SecurityModeNone, SecurityModeSign, SecurityModeSignAndEncrypt}
)

func (d *decoder) opcuaDevice(t *table, devices map[string]*table) (OPCUADevice, opcuaSet) {
	dev := defaultOPCUADevice()
	var set opcuaSet
	if name, ok := t.nameElem("device"); ok {
		dev.Name = name
		t.checkDuplicate(devices, "device", name)
	}
	t.require("endpoint")
	if t.str("endpoint", &dev.Endpoint) {
		if u, err := parseURL(dev.Endpoint, "opc.tcp"); err != nil {
			t.errf("endpoint", "%v", err)
		} else if err := checkNetURL(u, dev.Endpoint, true); err != nil {
			t.errf("endpoint", "%v", err)
		}
	}
	policyOK := t.oneOf("security_policy", &dev.SecurityPolicy, opcuaPolicies...)
	set.securityMode = t.has("security_mode")
	if t.oneOf("security_mode", &dev.SecurityMode, opcuaModes...) && (policyOK || !t.has("security_policy")) {
		if (dev.SecurityPolicy == PolicyNone) != (dev.SecurityMode == SecurityModeNone) {
			t.errf("security_mode", "security_mode %q does not match security_policy %q: use None with None, Sign or SignAndEncrypt with the others", dev.SecurityMode, dev.SecurityPolicy)
		}
	}
	t.str("username", &dev.Username)
	t.secret("password", "password_file", &dev.Password)
	if dev.Password != "" && dev.Username == "" {
		key := "password"
		if t.has("password_file") {
			key = "password_file"
		}
		t.errf(key, "a password needs a username")
	}
	t.file("user_cert_file", &dev.UserCertFile)
	t.file("user_key_file", &dev.UserKeyFile)
	switch {
	case t.has("user_cert_file") != t.has("user_key_file"):
		if t.has("user_cert_file") {
			t.errf("user_cert_file", "user_cert_file needs user_key_file")
		} else {
			t.errf("user_key_file", "user_key_file needs user_cert_file")
		}
	case t.has("user_cert_file") && dev.Username != "":
		t.errf("user_cert_file", "log in either with username/password or with user_cert_file, not both")
	}
	t.file("cert_file", &dev.CertFile)
	t.file("key_file", &dev.KeyFile)
	if t.has("cert_file") != t.has("key_file") {
		if t.has("cert_file") {
			t.errf("cert_file", "cert_file needs key_file")
		} else {
			t.errf("key_file", "key_file needs cert_file")
		}
	}
	if t.str("server_thumbprint", &dev.ServerThumbprint) {
		tp, err := normalizeThumbprint(dev.ServerThumbprint)
		if err != nil {
			t.errf("server_thumbprint", "%v", err)
		}
		dev.ServerThumbprint = tp
	}
	t.file("trusted_certs_dir", &dev.TrustedCertsDir)
	if policyOK && dev.SecurityPolicy != PolicyNone && !t.has("server_thumbprint") && !t.has("trusted_certs_dir") {
		t.errf("security_policy", "with security_policy %q the server must be authenticated: set server_thumbprint or trusted_certs_dir", dev.SecurityPolicy)
	}
	t.oneOf("mode", &dev.Mode, ModeSubscribe, ModePoll)
	if t.duration("interval", &dev.Interval) && dev.Interval < minInterval {
		t.errf("interval", "must be at least %v", minInterval)
	}
	if t.duration("publishing_interval", &dev.PublishingInterval) && dev.PublishingInterval == 0 {
		t.errf("publishing_interval", "must be positive")
	}
	set.samplingInterval = t.duration("sampling_interval", &dev.SamplingInterval)
	var qs int64
	if t.integer("queue_size", &qs, 1, math.MaxUint32) {
		dev.QueueSize = uint32(qs)
	}
	t.intv("max_items_per_request", &dev.MaxItemsPerRequest, 1, 100_000)
	if t.duration("timeout", &dev.Timeout) && dev.Timeout == 0 {
		t.errf("timeout", "must be positive")
	}
	set.publish = t.has("publish")
	t.oneOf("publish", &dev.Publish, PublishTag, PublishDevice)

	tags := map[string]*table{}
	for _, tt := range d.deviceTags(t, kindOPCUA) {
		tag, ts := d.opcuaTag(tt, tags)
		dev.Tags = append(dev.Tags, tag)
		set.tags = append(set.tags, ts)
	}
	if len(dev.Tags) == 0 && t.emptyOrAbsent("tag") && !t.has("template") {
		t.missing("tag", "a device needs at least one tag: add an [[opcua.tag]] table after this [[opcua]]")
	}
	t.finish()
	return dev, set
}

func (d *decoder) opcuaTag(t *table, seen map[string]*table) (OPCUATag, struct{ samplingInterval, retain bool }) {
	tag := defaultOPCUATag()
	var set struct{ samplingInterval, retain bool }
	if name, ok := t.nameElem("tag"); ok {
		tag.Name = name
		t.checkDuplicate(seen, "tag", name)
	}
	t.require("node")
	if t.str("node", &tag.Node) {
		if err := checkNodeID(tag.Node); err != nil {
			t.errf("node", "%v", err)
		}
	}
	set.samplingInterval = t.duration("sampling_interval", &tag.SamplingInterval)
	typeOK := t.oneOf("deadband_type", &tag.DeadbandType, DeadbandAbsolute, DeadbandPercent)
	if t.float("deadband_value", &tag.DeadbandValue) {
		switch {
		case tag.DeadbandValue < 0:
			t.errf("deadband_value", "must not be negative")
		case typeOK && tag.DeadbandType == DeadbandPercent && tag.DeadbandValue > 100:
			t.errf("deadband_value", "must be at most 100 with deadband_type = \"percent\"")
		case !t.has("deadband_type"):
			t.errf("deadband_value", "needs deadband_type (\"absolute\" or \"percent\")")
		}
	} else if typeOK && !t.has("deadband_value") {
		t.missing("deadband_value", "required with deadband_type")
	}
	t.boolean("writable", &tag.Writable)
	t.limits(&tag.Min, &tag.Max, &tag.MinInt, &tag.MaxInt)
	t.boolean("verify", &tag.Verify)
	t.duration("min_write_interval", &tag.MinWriteInterval)
	set.retain = t.boolean("retain", &tag.Retain)
	d.checkWriteOnly(t, tag.Writable)
	t.finish()
	return tag, set
}
