package mqtt

import (
	"crypto/tls"
	"crypto/x509"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/ferry-gateway/ferry/internal/mosquittotest"
)

func tlsConf(t *testing.T, caFile, certFile, keyFile string) *tls.Config {
	t.Helper()
	c := &tls.Config{MinVersion: tls.VersionTLS12}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			t.Fatal(err)
		}
		c.RootCAs = x509.NewCertPool()
		c.RootCAs.AppendCertsFromPEM(pem)
	}
	if certFile != "" {
		cert, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			t.Fatal(err)
		}
		c.Certificates = []tls.Certificate{cert}
	}
	return c
}

// TestTLS runs the publisher against mosquitto's TLS listener: accepted
// configurations deliver, refused ones log a clear error and keep retrying
// with backoff.
func TestTLS(t *testing.T) {
	certs := mosquittotest.NewCerts(t)
	server := mosquittotest.TLSFiles{CAFile: certs.CAFile, CertFile: certs.ServerCert, KeyFile: certs.ServerKey}
	mutual := server
	mutual.RequireClientCert = true

	ok := func(t *testing.T, b *mosquittotest.Broker, url string, tc *tls.Config, user, pass string) {
		l := newMemLog(1)
		cfg := testConfig(t, url)
		cfg.TLS, cfg.Username, cfg.Password = tc, user, pass
		p, err := New(cfg, l)
		if err != nil {
			t.Fatal(err)
		}
		running(t, p)
		appendReadings(t, l, 0, 20)
		l.waitAllAcked(t, long)
	}
	refused := func(t *testing.T, url string, tc *tls.Config, user, pass string, want ...string) {
		logger, logs := captureLogger(t)
		l := newMemLog(1)
		cfg := testConfig(t, url)
		cfg.TLS, cfg.Username, cfg.Password, cfg.Logger = tc, user, pass, logger
		cfg.ReconnectMin, cfg.ReconnectMax = 50*time.Millisecond, 200*time.Millisecond
		p, err := New(cfg, l)
		if err != nil {
			t.Fatal(err)
		}
		stop := running(t, p)
		appendReadings(t, l, 0, 5)
		for _, w := range want {
			logs.waitFor(t, long, w)
		}
		time.Sleep(600 * time.Millisecond)
		st := p.Stats()
		if st.Connected || st.Acked != 0 || st.ConnectFails < 2 || st.ConnectFails > 20 {
			t.Errorf("stats %+v: want no connection, a few attempts with backoff", st)
		}
		stop()
		if pass != "" && strings.Contains(logs.String(), pass) {
			t.Error("the password appears in the log")
		}
	}

	t.Run("server_only", func(t *testing.T) {
		t.Parallel()
		b := mosquittotest.Start(t, mosquittotest.WithTLS(server))
		ok(t, b, b.TLSURL(), tlsConf(t, certs.CAFile, "", ""), "", "")
		// By host name too (the certificate has localhost).
		ok(t, b, strings.Replace(b.TLSURL(), "127.0.0.1", "localhost", 1), tlsConf(t, certs.CAFile, "", ""), "", "")
	})
	t.Run("mutual", func(t *testing.T) {
		t.Parallel()
		b := mosquittotest.Start(t, mosquittotest.WithTLS(mutual))
		ok(t, b, b.TLSURL(), tlsConf(t, certs.CAFile, certs.ClientCert, certs.ClientKey), "", "")
	})
	t.Run("mutual_without_client_cert", func(t *testing.T) {
		t.Parallel()
		b := mosquittotest.Start(t, mosquittotest.WithTLS(mutual))
		refused(t, b.TLSURL(), tlsConf(t, certs.CAFile, "", ""), "", "", "connect failed")
	})
	t.Run("wrong_ca", func(t *testing.T) {
		t.Parallel()
		b := mosquittotest.Start(t, mosquittotest.WithTLS(server))
		refused(t, b.TLSURL(), tlsConf(t, certs.OtherCAFile, "", ""), "", "", "certificate signed by unknown authority")
	})
	t.Run("wrong_hostname", func(t *testing.T) {
		t.Parallel()
		b := mosquittotest.Start(t, mosquittotest.WithTLS(server))
		tc := tlsConf(t, certs.CAFile, "", "")
		tc.ServerName = "broker.example.com"
		refused(t, b.TLSURL(), tc, "", "", "not broker.example.com")
	})
	t.Run("bad_password", func(t *testing.T) {
		t.Parallel()
		b := mosquittotest.Start(t, mosquittotest.WithTLS(server), mosquittotest.WithPassword("gw", "right-secret"))
		ok(t, b, b.TLSURL(), tlsConf(t, certs.CAFile, "", ""), "gw", "right-secret")
		refused(t, b.TLSURL(), tlsConf(t, certs.CAFile, "", ""), "gw", "wrong-s3cret", "broker refused the connection: CONNACK reason code 0x87: Not authorized") // mosquitto 2.0 answers a bad password with 0x87, not 0x86
	})
	t.Run("insecure_skip_verify_warns", func(t *testing.T) {
		t.Parallel()
		b := mosquittotest.Start(t, mosquittotest.WithTLS(server))
		logger, logs := captureLogger(t)
		l := newMemLog(1)
		cfg := testConfig(t, b.TLSURL())
		cfg.TLS = &tls.Config{InsecureSkipVerify: true}
		cfg.Logger = logger
		p, err := New(cfg, l)
		if err != nil {
			t.Fatal(err)
		}
		running(t, p)
		appendReadings(t, l, 0, 5)
		l.waitAllAcked(t, long)
		logs.waitFor(t, time.Second, "insecure_skip_verify")
	})
}
