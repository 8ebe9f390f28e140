package config

import (
	"errors"
	"fmt"
	"math"
	"net"
	"net/url"
	"slices"
	"sort"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// expandEnv expands ${NAME} and ${NAME:-default} in s; $$ is a literal
// dollar. A $ followed by anything else is kept as is. The default is
// literal text up to the first '}' (no nesting). ${NAME} with NAME unset is
// an error; ${NAME:-default} uses the default when NAME is unset or empty.
func expandEnv(s string, getenv func(string) string) (string, error) {
	if !strings.Contains(s, "$") {
		return s, nil
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c != '$' || i+1 >= len(s) {
			b.WriteByte(c)
			continue
		}
		switch s[i+1] {
		case '$':
			b.WriteByte('$')
			i++
		case '{':
			end := strings.IndexByte(s[i+2:], '}')
			if end < 0 {
				return "", fmt.Errorf("unterminated ${ in %q", clip(s))
			}
			expr := s[i+2 : i+2+end]
			name, def, hasDef := strings.Cut(expr, ":-")
			if !validEnvName(name) {
				return "", fmt.Errorf("invalid environment variable name %q in ${%s} (use $$ for a literal dollar)", clip(name), clip(expr))
			}
			v := getenv(name)
			switch {
			case v != "":
			case hasDef:
				v = def
			default:
				return "", &envUnsetError{fmt.Errorf("environment variable %s is not set or empty (use ${%s:-default} for a fallback)", name, name)}
			}
			b.WriteString(v)
			i += 2 + end
		default:
			b.WriteByte(c)
		}
	}
	return b.String(), nil
}

// envUnsetError is expandEnv's error for a variable that is not set: the
// only one that does not quote the value, so the only one shown for a
// secret.
type envUnsetError struct{ error }

func validEnvName(s string) bool {
	if s == "" || s[0] >= '0' && s[0] <= '9' {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9') {
			return false
		}
	}
	return true
}

var sizeUnits = map[string]int64{
	"":    1,
	"b":   1,
	"kb":  1000,
	"mb":  1000 * 1000,
	"gb":  1000 * 1000 * 1000,
	"tb":  1000 * 1000 * 1000 * 1000,
	"kib": 1 << 10,
	"mib": 1 << 20,
	"gib": 1 << 30,
	"tib": 1 << 40,
}

// parseSize parses a size such as "512MiB", "64KB", "1 GiB" or "1048576":
// a whole number and an optional unit, B, KB, MB, GB, TB (powers of 1000)
// or KiB, MiB, GiB, TiB (powers of 1024), case-insensitive.
func parseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	i := 0
	for i < len(t) && t[i] >= '0' && t[i] <= '9' {
		i++
	}
	unit, ok := sizeUnits[strings.ToLower(strings.TrimSpace(t[i:]))]
	if i == 0 || !ok {
		return 0, fmt.Errorf("invalid size %q: use a whole number with a unit such as \"512MiB\", \"1GiB\" or \"64KB\"", clip(s))
	}
	n, err := strconv.ParseInt(t[:i], 10, 64)
	if err != nil || n > math.MaxInt64/unit {
		return 0, fmt.Errorf("size %q is too large", clip(s))
	}
	return n * unit, nil
}

// describeRune names a character for a message: 'x' (U+0078).
func describeRune(r rune) string {
	if r == utf8.RuneError {
		return "invalid UTF-8"
	}
	if unicode.IsPrint(r) && r != ' ' {
		return fmt.Sprintf("%q (U+%04X)", r, r)
	}
	return fmt.Sprintf("U+%04X", r)
}

// maxNameLen bounds a device or tag name (bytes): names are topic levels,
// label values and log fields, and a topic is at most 65535 bytes.
const maxNameLen = 128

// checkName validates a gateway id (kind ""), device or tag name: it
// becomes an MQTT topic level. Device and tag names may use the letters
// and digits of any script ("пресс", "温度"; topic levels are UTF-8, and
// Prometheus label values and JSON are too), combining marks, '_' and '-';
// no space, punctuation, '+', '#', '/' or control character. The gateway
// id is also part of the MQTT client id, which brokers need only accept
// in ASCII, so it is limited to A-Z a-z 0-9 '_' '-' (CONTRACT.md).
func checkName(s, kind string) error {
	if s == "" {
		return errors.New("must not be empty")
	}
	if len(s) > maxNameLen {
		return fmt.Errorf("name %q is longer than %d bytes", clip(s), maxNameLen)
	}
	for _, r := range s {
		if r == '_' || r == '-' || r < utf8.RuneSelf && (r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9') {
			continue
		}
		if kind == "" {
			return fmt.Errorf("invalid gateway id %q: only ASCII letters A-Z and a-z, digits 0-9, '_' and '-' are allowed (it is part of the MQTT client id and topic prefix), not %s", s, describeRune(r))
		}
		if r != utf8.RuneError && (unicode.IsLetter(r) || unicode.IsDigit(r) || unicode.Is(unicode.Mark, r)) {
			continue
		}
		return fmt.Errorf("invalid name %q: it is used as an MQTT topic level, so only letters and digits (of any script), '_' and '-' are allowed, not %s", s, describeRune(r))
	}
	if s == "status" && kind != "" {
		switch kind {
		case "device":
			return errors.New(`"status" is reserved: a device named status would collide with the gateway's status topic P/status`)
		case "tag":
			return errors.New(`"status" is reserved: a tag named status would collide with the device's status topic P/DEVICE/status`)
		}
	}
	if s == "deadletter" && kind == "device" {
		return errors.New(`"deadletter" is reserved: a device named deadletter would collide with the dead-letter notices on P/deadletter`)
	}
	return nil
}

// suggest returns the candidate closest to key within edit distance 2, or
// "".
func suggest(key string, candidates []string) string {
	best, bestD := "", 3
	for _, c := range candidates {
		d := levenshtein(strings.ToLower(key), strings.ToLower(c))
		if d < bestD && d < len(key) {
			best, bestD = c, d
		}
	}
	return best
}

func levenshtein(a, b string) int {
	if len(a) > 64 || len(b) > 64 {
		return math.MaxInt32 // not worth suggesting; bounds the work
	}
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

func quoteList(ss []string) string {
	q := make([]string, len(ss))
	for i, s := range ss {
		q[i] = strconv.Quote(s)
	}
	if len(q) <= 1 {
		return strings.Join(q, "")
	}
	return strings.Join(q[:len(q)-1], ", ") + " or " + q[len(q)-1]
}

func sortStrings(ss []string) { sort.Strings(ss) }

// checkHostPort validates "host:port" with a numeric port 1..65535 and a
// non-empty host when needHost.
func checkHostPort(hp string, needHost bool) error {
	host, port, err := net.SplitHostPort(hp)
	if err != nil {
		return fmt.Errorf("expected host:port, got %q", clip(hp))
	}
	if needHost && host == "" {
		return fmt.Errorf("missing host in %q", clip(hp))
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("invalid port %q in %q: must be 1..65535", clip(port), clip(hp))
	}
	return nil
}

// parseURL parses u and checks that its scheme is one of schemes. It
// returns the lower-cased scheme.
func parseURL(s string, schemes ...string) (*url.URL, error) {
	u, err := url.Parse(s)
	if err != nil || !strings.Contains(s, "://") && !slices.Contains(schemes, strings.ToLower(u.Scheme)) {
		if hint := schemeHint(s, schemes); hint != nil {
			return nil, hint
		}
	}
	if err != nil {
		return nil, fmt.Errorf("invalid URL %q", shownURL(s))
	}
	scheme := strings.ToLower(u.Scheme)
	for _, sc := range schemes {
		if scheme == sc {
			u.Scheme = scheme
			return u, nil
		}
	}
	if u.Scheme == "" {
		return nil, fmt.Errorf("invalid URL %q: missing scheme, expected %s", shownURL(s), schemeList(schemes))
	}
	return nil, fmt.Errorf("unsupported scheme %q in %q, expected %s", clip(u.Scheme), shownURL(s), schemeList(schemes))
}

// schemeHint says which scheme to add to s when s has none: a host:port
// ("127.0.0.1:1883", "plc:502") or, for Modbus RTU, a device path. It
// returns nil when s does not look like either.
func schemeHint(s string, schemes []string) error {
	if s == "" || strings.Contains(s, "://") || strings.Contains(s, "@") || len(schemes) == 0 {
		return nil
	}
	add := schemes[0] + "://"
	switch {
	case strings.HasPrefix(s, "/") && slices.Contains(schemes, "rtu"):
		add = "rtu://"
	case checkHostPort(RedactURL(s), true) != nil && strings.Contains(s, "/"):
		return nil
	}
	return fmt.Errorf("%q has no scheme: write %q (one of %s)", shownURL(s), clip(add+RedactURL(s)), schemeList(schemes))
}

// CheckURL checks the scheme and form of a URL given on the command line
// as the config checks the key it stands for: schemes are the accepted
// ones, the first the one a bare host:port is told to add. The error says
// what to write.
func CheckURL(s string, schemes ...string) error {
	u, err := parseURL(s, schemes...)
	if err != nil {
		return err
	}
	if u.Scheme == "rtu" {
		return nil
	}
	return checkNetURL(u, s, true)
}

// Schemes a URL may have, by the key that holds it; the first is the one
// a bare host:port is told to add.
var (
	MQTTSchemes   = mqttSchemes
	ModbusSchemes = modbusSchemes
	OPCUASchemes  = []string{"opc.tcp"}
)

func schemeList(schemes []string) string {
	q := make([]string, len(schemes))
	for i, s := range schemes {
		q[i] = s + "://"
	}
	return strings.Join(q, ", ")
}

// RedactURL returns s for a message or a log: the password of its user
// info replaced by "xxxxx" (mqtt://user:xxxxx@host), as net/url's Redacted
// does. It also works on strings url.Parse refuses, and treats everything
// up to the last '@' as user info, so that a password holding '/', '?' or
// '#' is not shown either.
func RedactURL(s string) string {
	start := 0
	if i := strings.Index(s, "://"); i >= 0 {
		start = i + 3
	}
	if at := strings.LastIndexByte(s[start:], '@'); at >= 0 {
		user := s[start : start+at]
		if name, _, ok := strings.Cut(user, ":"); ok {
			s = s[:start] + name + ":xxxxx" + s[start+at:]
		}
	}
	return s
}

// shownURL is s redacted and clipped for an error message.
func shownURL(s string) string { return clip(RedactURL(s)) }

// checkNetURL checks that u has host:port and nothing else (no user
// info, path, query or fragment), unless allowPath.
func checkNetURL(u *url.URL, s string, allowPath bool) error {
	if u.User != nil {
		return fmt.Errorf("credentials in the URL %q are not supported: use username and password (or password_file)", shownURL(s))
	}
	if u.Opaque != "" || u.Host == "" {
		return fmt.Errorf("missing host:port in %q", shownURL(s))
	}
	if err := checkHostPort(u.Host, true); err != nil {
		return fmt.Errorf("invalid URL %q: %v", shownURL(s), err)
	}
	if !allowPath && (u.Path != "" && u.Path != "/" || u.RawQuery != "" || u.Fragment != "") {
		return fmt.Errorf("unexpected path or query in %q", shownURL(s))
	}
	return nil
}

// checkNodeID is a syntactic check of an OPC UA node id in its string
// form: an optional "ns=N;" or "nsu=URI;" prefix, then i=NUMBER, s=STRING,
// g=GUID or b=BASE64.
func checkNodeID(s string) error {
	rest := s
	switch {
	case strings.HasPrefix(rest, "ns="):
		ns, r, ok := strings.Cut(rest[3:], ";")
		if !ok {
			return fmt.Errorf("invalid node id %q: missing ';' after the namespace", clip(s))
		}
		if _, err := strconv.ParseUint(ns, 10, 16); err != nil {
			return fmt.Errorf("invalid node id %q: namespace index must be 0..65535", clip(s))
		}
		rest = r
	case strings.HasPrefix(rest, "nsu="):
		ns, r, ok := strings.Cut(rest[4:], ";")
		if !ok || ns == "" {
			return fmt.Errorf("invalid node id %q: missing namespace URI or ';'", clip(s))
		}
		rest = r
	}
	kind, id, ok := strings.Cut(rest, "=")
	if !ok || id == "" {
		return fmt.Errorf("invalid node id %q: expected i=, s=, g= or b= (e.g. \"ns=2;s=Machine.Speed\" or \"i=2258\")", clip(s))
	}
	switch kind {
	case "i":
		if _, err := strconv.ParseUint(id, 10, 32); err != nil {
			return fmt.Errorf("invalid node id %q: numeric identifier must be 0..4294967295", clip(s))
		}
	case "s":
	case "g":
		if !isGUID(id) {
			return fmt.Errorf("invalid node id %q: GUID must look like 09087e75-8e5e-499b-954f-f2a9603db28a", clip(s))
		}
	case "b":
		if !isBase64(id) {
			return fmt.Errorf("invalid node id %q: opaque identifier must be base64", clip(s))
		}
	default:
		return fmt.Errorf("invalid node id %q: unknown identifier type %q, expected i, s, g or b", clip(s), clip(kind))
	}
	return nil
}

func isGUID(s string) bool {
	if len(s) != 36 {
		return false
	}
	for i := 0; i < len(s); i++ {
		switch i {
		case 8, 13, 18, 23:
			if s[i] != '-' {
				return false
			}
		default:
			if !isHex(s[i]) {
				return false
			}
		}
	}
	return true
}

func isHex(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F'
}

func isBase64(s string) bool {
	if len(s)%4 != 0 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		ok := c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '+' || c == '/' ||
			c == '=' && i >= len(s)-2
		if !ok {
			return false
		}
	}
	return true
}

// normalizeThumbprint strips ':', ' ' and '-' separators and lower-cases a
// SHA-256 thumbprint; it must then be 64 hex digits.
func normalizeThumbprint(s string) (string, error) {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == ':' || c == ' ' || c == '-':
		case isHex(c):
			b.WriteByte(lower(c))
		default:
			return "", fmt.Errorf("invalid thumbprint: unexpected character %q (expected the SHA-256 of the server certificate as 64 hex digits)", c)
		}
	}
	if b.Len() != 64 {
		return "", fmt.Errorf("invalid thumbprint: got %d hex digits, expected 64 (SHA-256 of the server certificate)", b.Len())
	}
	return b.String(), nil
}

func lower(c byte) byte {
	if c >= 'A' && c <= 'Z' {
		return c + 'a' - 'A'
	}
	return c
}
