package opcua

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/gopcua/opcua/ua"
)

// Security policies by their config name.
var policyURIs = map[string]string{
	"None":                  ua.SecurityPolicyURINone,
	"Basic256Sha256":        ua.SecurityPolicyURIBasic256Sha256,
	"Aes128_Sha256_RsaOaep": ua.SecurityPolicyURIAes128Sha256RsaOaep,
	"Aes256_Sha256_RsaPss":  ua.SecurityPolicyURIAes256Sha256RsaPss,
}

// Security modes by their config name.
var securityModes = map[string]ua.MessageSecurityMode{
	"None":           ua.MessageSecurityModeNone,
	"Sign":           ua.MessageSecurityModeSign,
	"SignAndEncrypt": ua.MessageSecurityModeSignAndEncrypt,
}

// policyName returns the config name of a policy URI.
func policyName(uri string) string {
	for n, u := range policyURIs {
		if u == uri {
			return n
		}
	}
	if i := strings.LastIndexByte(uri, '#'); i >= 0 {
		return uri[i+1:]
	}
	return uri
}

func modeName(m ua.MessageSecurityMode) string {
	for n, v := range securityModes {
		if v == m {
			return n
		}
	}
	return m.String()
}

// Thumbprint returns the SHA-256 thumbprint of a DER certificate in lower
// hex, the form server_thumbprint takes.
func Thumbprint(der []byte) string {
	sum := sha256.Sum256(der)
	return hex.EncodeToString(sum[:])
}

// NormalizeThumbprint lower-cases a thumbprint and drops separators
// (colons, spaces) and a "sha256:" prefix, so a value copied from any tool
// compares equal.
func NormalizeThumbprint(s string) string {
	s = strings.ToLower(strings.TrimSpace(s))
	s = strings.TrimPrefix(s, "sha256:")
	return strings.Map(func(r rune) rune {
		if r == ':' || r == ' ' || r == '-' {
			return -1
		}
		return r
	}, s)
}

// UntrustedServerError is returned when the server's certificate matches
// neither the pinned thumbprint nor the trusted-certificates directory.
type UntrustedServerError struct {
	Device     string
	Endpoint   string
	Subject    string
	Thumbprint string // SHA-256, lower hex
	SavedAs    string // where the rejected certificate was written, if it was
	Pinned     string // the configured thumbprint, if any
}

func (e *UntrustedServerError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "server certificate of %s is not trusted (subject %q, SHA-256 thumbprint %s)", e.Endpoint, e.Subject, e.Thumbprint)
	if e.Pinned != "" {
		fmt.Fprintf(&b, "; it does not match the pinned server_thumbprint %s", e.Pinned)
	}
	fmt.Fprintf(&b, "; to trust it, set server_thumbprint = %q in the [[opcua]] table of %q", e.Thumbprint, e.Device)
	if e.SavedAs != "" {
		fmt.Fprintf(&b, ", or copy %s into its trusted_certs_dir", e.SavedAs)
	} else {
		b.WriteString(", or put the server certificate into its trusted_certs_dir")
	}
	return b.String()
}

// trustPolicy decides whether a server certificate is trusted.
type trustPolicy struct {
	pinned     string // normalised thumbprint
	trustedDir string
	rejectDir  string // rejected certificates are saved here ("" disables)
}

// verify checks the server certificate der; it returns nil when trusted.
func (tp trustPolicy) verify(device, endpoint string, der []byte) error {
	if len(der) == 0 {
		return fmt.Errorf("server at %s sent no certificate in its endpoint description", endpoint)
	}
	tb := Thumbprint(der)
	if tp.pinned != "" && tp.pinned == tb {
		return nil
	}
	cert, perr := x509.ParseCertificate(der)
	if tp.trustedDir != "" {
		ok, err := trustedByDir(tp.trustedDir, der, cert)
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
	}
	ue := &UntrustedServerError{Device: device, Endpoint: endpoint, Thumbprint: tb, Pinned: tp.pinned}
	if perr == nil {
		ue.Subject = cert.Subject.String()
	}
	if tp.rejectDir != "" {
		p := filepath.Join(tp.rejectDir, tb+".der")
		if err := os.MkdirAll(tp.rejectDir, 0o700); err == nil {
			if err := os.WriteFile(p, der, 0o600); err == nil {
				ue.SavedAs = p
			}
		}
	}
	return ue
}

// trustedByDir reports whether der is one of the certificates in dir, or
// is signed by one of them. Files may be DER or PEM (any number of
// certificates); files that hold no certificate are ignored.
func trustedByDir(dir string, der []byte, cert *x509.Certificate) (bool, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return false, fmt.Errorf("trusted_certs_dir: %w", err)
	}
	for _, e := range entries {
		if e.IsDir() {
			continue
		}
		data, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			continue
		}
		for _, c := range certsIn(data) {
			if string(c) == string(der) {
				return true, nil
			}
			if cert == nil {
				continue
			}
			if ca, err := x509.ParseCertificate(c); err == nil && ca.IsCA && cert.CheckSignatureFrom(ca) == nil {
				return true, nil
			}
		}
	}
	return false, nil
}

// certsIn returns the DER certificates in data, PEM or raw DER.
func certsIn(data []byte) [][]byte {
	var out [][]byte
	rest := data
	for {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			break
		}
		if blk.Type == "CERTIFICATE" {
			out = append(out, blk.Bytes)
		}
	}
	if len(out) == 0 {
		if _, err := x509.ParseCertificate(data); err == nil {
			out = append(out, data)
		}
	}
	return out
}

// clientIdentity is the application instance certificate of the client.
type clientIdentity struct {
	certDER []byte
	key     *rsa.PrivateKey
	appURI  string
}

// Generated client certificate and key, under <state_dir>/pki.
const (
	clientCertName = "ferry-client.crt" // PEM
	clientKeyName  = "ferry-client.key" // PEM, PKCS#1 (what gopcua needs)
)

var pkiMu sync.Mutex // devices starting together generate one identity

// loadIdentity loads the configured certificate and key, or the generated
// pair under stateDir/pki, generating it on first use.
func loadIdentity(certFile, keyFile, stateDir string) (*clientIdentity, error) {
	if certFile != "" || keyFile != "" {
		if certFile == "" || keyFile == "" {
			return nil, errors.New("cert_file and key_file must be set together")
		}
		return readIdentity(certFile, keyFile)
	}
	if stateDir == "" {
		return nil, errors.New("no cert_file/key_file and no state_dir to generate a client certificate into")
	}
	pkiMu.Lock()
	defer pkiMu.Unlock()
	dir := filepath.Join(stateDir, "pki")
	cf, kf := filepath.Join(dir, clientCertName), filepath.Join(dir, clientKeyName)
	if _, err := os.Stat(cf); err == nil {
		return readIdentity(cf, kf)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create %s: %w", dir, err)
	}
	certPEM, keyPEM, err := generateIdentity()
	if err != nil {
		return nil, err
	}
	if err := writeAtomic(kf, keyPEM, 0o600); err != nil {
		return nil, err
	}
	if err := writeAtomic(cf, certPEM, 0o644); err != nil {
		return nil, err
	}
	return readIdentity(cf, kf)
}

func writeAtomic(path string, data []byte, mode os.FileMode) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, mode)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// ApplicationURI is the application URI of a generated client certificate.
func ApplicationURI() string {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "localhost"
	}
	return "urn:" + host + ":ferry-gateway:ferry"
}

// generateIdentity creates a self-signed RSA 2048 application instance
// certificate (Part 6, 6.2.2) valid for 10 years, with the application URI
// and the host name in its subjectAltName.
func generateIdentity() (certPEM, keyPEM []byte, err error) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, nil, err
	}
	host, _ := os.Hostname()
	if host == "" {
		host = "localhost"
	}
	uri, err := url.Parse(ApplicationURI())
	if err != nil {
		return nil, nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "ferry@" + host, Organization: []string{"ferry"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.AddDate(10, 0, 0),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageContentCommitment | x509.KeyUsageKeyEncipherment | x509.KeyUsageDataEncipherment | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		URIs:                  []*url.URL{uri},
		DNSNames:              []string{host},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, err
	}
	certPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyPEM = pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)})
	return certPEM, keyPEM, nil
}

// readIdentity reads a certificate (PEM or DER) and an RSA key (PEM
// PKCS#1 or PKCS#8, or DER).
func readIdentity(certFile, keyFile string) (*clientIdentity, error) {
	cdata, err := os.ReadFile(certFile)
	if err != nil {
		return nil, fmt.Errorf("client certificate: %w", err)
	}
	certs := certsIn(cdata)
	if len(certs) == 0 {
		return nil, fmt.Errorf("client certificate %s: no certificate found (PEM or DER expected)", certFile)
	}
	cert, err := x509.ParseCertificate(certs[0])
	if err != nil {
		return nil, fmt.Errorf("client certificate %s: %w", certFile, err)
	}
	kdata, err := os.ReadFile(keyFile)
	if err != nil {
		return nil, fmt.Errorf("client key: %w", err)
	}
	key, err := parseRSAKey(kdata)
	if err != nil {
		return nil, fmt.Errorf("client key %s: %w", keyFile, err)
	}
	pub, ok := cert.PublicKey.(*rsa.PublicKey)
	if !ok || pub.N.Cmp(key.N) != 0 {
		return nil, fmt.Errorf("client key %s does not belong to certificate %s", keyFile, certFile)
	}
	id := &clientIdentity{certDER: certs[0], key: key}
	if len(cert.URIs) > 0 {
		id.appURI = cert.URIs[0].String()
	}
	return id, nil
}

func parseRSAKey(data []byte) (*rsa.PrivateKey, error) {
	der := data
	if blk, _ := pem.Decode(data); blk != nil {
		der = blk.Bytes
	}
	if k, err := x509.ParsePKCS1PrivateKey(der); err == nil {
		return k, nil
	}
	k, err := x509.ParsePKCS8PrivateKey(der)
	if err != nil {
		return nil, errors.New("not an RSA private key (PEM or DER, PKCS#1 or PKCS#8)")
	}
	rk, ok := k.(*rsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("key is %T, OPC UA needs RSA", k)
	}
	return rk, nil
}

// selectEndpoint picks the endpoint with the policy and mode asked for.
func selectEndpoint(eps []*ua.EndpointDescription, policyURI string, mode ua.MessageSecurityMode) (*ua.EndpointDescription, error) {
	var best *ua.EndpointDescription
	for _, ep := range eps {
		if ep.SecurityPolicyURI == policyURI && ep.SecurityMode == mode {
			if best == nil || ep.SecurityLevel > best.SecurityLevel {
				best = ep
			}
		}
	}
	if best != nil {
		return best, nil
	}
	var offered []string
	for _, ep := range eps {
		offered = append(offered, policyName(ep.SecurityPolicyURI)+"/"+modeName(ep.SecurityMode))
	}
	return nil, fmt.Errorf("the server offers no endpoint with security_policy %q and security_mode %q (it offers: %s)",
		policyName(policyURI), modeName(mode), strings.Join(offered, ", "))
}

// userTokenPolicy finds the endpoint's token policy of type t.
func userTokenPolicy(ep *ua.EndpointDescription, t ua.UserTokenType) (*ua.UserTokenPolicy, error) {
	var offered []string
	for _, p := range ep.UserIdentityTokens {
		if p.TokenType == t {
			return p, nil
		}
		offered = append(offered, tokenTypeName(p.TokenType))
	}
	return nil, fmt.Errorf("the server's %s/%s endpoint does not accept %s login (it accepts: %s)",
		policyName(ep.SecurityPolicyURI), modeName(ep.SecurityMode), tokenTypeName(t), strings.Join(offered, ", "))
}

func tokenTypeName(t ua.UserTokenType) string {
	switch t {
	case ua.UserTokenTypeAnonymous:
		return "anonymous"
	case ua.UserTokenTypeUserName:
		return "username/password"
	case ua.UserTokenTypeCertificate:
		return "X.509 certificate"
	case ua.UserTokenTypeIssuedToken:
		return "issued token"
	}
	return t.String()
}
