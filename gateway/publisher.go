package gateway

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/ferry-gateway/ferry/config"
	"github.com/ferry-gateway/ferry/gateway/mqtt"
)

// publisherConfig maps the [mqtt] section onto the publisher's settings.
// It sets every setting the config has (config/defaults.go fills in what
// the file leaves out), so the mqtt package's zero-value fallbacks, which
// exist for tests, never apply in a run.
func publisherConfig(cfg *config.Config, version string, logger *slog.Logger) (mqtt.Config, error) {
	m := cfg.MQTT
	tlsCfg, err := tlsConfig(m)
	if err != nil {
		return mqtt.Config{}, err
	}
	return mqtt.Config{
		URL:            m.URL,
		ClientID:       m.ClientID,
		Username:       m.Username,
		Password:       m.Password,
		TLS:            tlsCfg,
		QoS:            m.QoS,
		MaxInflight:    m.MaxInflight,
		KeepAlive:      m.KeepAlive,
		ConnectTimeout: m.ConnectTimeout,
		SessionExpiry:  m.SessionExpiry,
		ReconnectMin:   m.ReconnectMin,
		ReconnectMax:   m.ReconnectMax,
		// The publisher's wait for in-flight publishes and its offline
		// status at shutdown share the gateway's bound, not a default of
		// the mqtt package's; startPublisher replaces it with
		// Options.ShutdownGrace.
		ShutdownGrace: DefaultShutdownGrace,
		// The session store needs a directory of its own.
		SessionDir:         filepath.Join(cfg.Gateway.StateDir, "mqtt"),
		DeadLetterFile:     filepath.Join(cfg.Gateway.StateDir, "deadletter.jsonl"),
		DeadLetterTopic:    m.TopicPrefix + "/deadletter",
		DeadLetterAttempts: m.DeadLetterAttempts,
		MaxReplayRate:      m.MaxReplayRate,
		MessageExpiry:      m.MessageExpiry,
		StatusTopic:        m.TopicPrefix + "/status",
		Version:            version,
		Logger:             logger,
	}, nil
}

// tlsConfig builds the client TLS settings from ca_file, cert_file and
// key_file. It returns nil when none is set; mqtts:// then uses the
// system roots.
func tlsConfig(m config.MQTT) (*tls.Config, error) {
	if m.CAFile == "" && m.CertFile == "" && !m.InsecureSkipVerify {
		return nil, nil
	}
	c := &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: m.InsecureSkipVerify}
	if m.CAFile != "" {
		pem, err := os.ReadFile(m.CAFile)
		if err != nil {
			return nil, fmt.Errorf("mqtt.ca_file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("mqtt.ca_file %s: no PEM certificate found", m.CAFile)
		}
		c.RootCAs = pool
	}
	if m.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(m.CertFile, m.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("mqtt.cert_file/key_file: %w", err)
		}
		c.Certificates = []tls.Certificate{cert}
	}
	return c, nil
}
