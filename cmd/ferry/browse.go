package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"os"
	"strings"
	"time"

	"github.com/ferry-gateway/ferry/adapters/opcua"
	"github.com/ferry-gateway/ferry/config"
)

func init() {
	register(command{"browse", "walk an OPC UA server's address space and print node ids for the config", cmdBrowse})
}

func cmdBrowse(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("browse", "browse opc.tcp://HOST:PORT [-node ID] [-depth N] [security flags]\n       ferry browse -config PATH DEVICE [-node ID] [-depth N]", stderr)
	cfgPath := fs.String("config", "", "take the endpoint, security, login and state_dir of the [[opcua]] device DEVICE from this config file")
	node := fs.String("node", "", "node id to start from (default: the Objects folder); nsu=URI;s=... is resolved")
	depth := fs.Int("depth", 3, "levels to descend")
	policy := fs.String("security-policy", "None", "None, Basic256Sha256, Aes128_Sha256_RsaOaep or Aes256_Sha256_RsaPss")
	mode := fs.String("security-mode", "", `None, Sign or SignAndEncrypt (default "SignAndEncrypt" with a policy other than None)`)
	user := fs.String("username", "", "log in with this user (default anonymous); the password from -password-file or FERRY_OPCUA_PASSWORD")
	passFile := fs.String("password-file", "", "file holding the password (or set FERRY_OPCUA_PASSWORD)")
	certFile := fs.String("cert-file", "", "client certificate (default: generated into -state-dir/pki)")
	keyFile := fs.String("key-file", "", "client private key")
	thumb := fs.String("server-thumbprint", "", "trust the server certificate with this SHA-256 thumbprint")
	trusted := fs.String("trusted-certs-dir", "", "trust the server certificates in this directory")
	stateDir := fs.String("state-dir", "", "where the client certificate is generated and kept (default: a temporary directory; with -config, gateway.state_dir)")
	timeout := fs.Duration("timeout", 10*time.Second, "request timeout")
	// The endpoint (or device) may come before, between or after the flags.
	pos, code := parseArgs(fs, args)
	if code >= 0 {
		return code
	}
	if len(pos) > 1 {
		fmt.Fprintf(stderr, "ferry browse: unexpected argument %q\n", pos[1])
		return exitUsage
	}
	var endpoint string
	if len(pos) == 1 {
		endpoint = pos[0]
	}
	if *depth < 1 {
		fmt.Fprintln(stderr, "ferry browse: -depth must be at least 1")
		return exitUsage
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	var dev config.OPCUADevice
	dir := *stateDir
	if *cfgPath != "" {
		for _, f := range []string{"security-policy", "security-mode", "username", "password-file", "cert-file", "key-file", "server-thumbprint", "trusted-certs-dir"} {
			if set[f] {
				fmt.Fprintf(stderr, "ferry browse: -%s is taken from the config with -config; set it in the device's [[opcua]] table\n", f)
				return exitUsage
			}
		}
		cfg, code := loadConfig(*cfgPath, stderr)
		if cfg == nil {
			return code
		}
		var names []string
		found := false
		for _, d := range cfg.OPCUA {
			names = append(names, d.Name)
			if d.Name == endpoint || endpoint == "" && len(cfg.OPCUA) == 1 {
				dev, found = d, true
			}
		}
		if !found {
			if endpoint == "" {
				fmt.Fprintf(stderr, "ferry browse: which device? %s has OPC UA devices %s: ferry browse -config %s DEVICE\n", *cfgPath, strings.Join(names, ", "), *cfgPath)
			} else {
				fmt.Fprintf(stderr, "ferry browse: no OPC UA device %q in %s (it has: %s)\n", endpoint, *cfgPath, strings.Join(names, ", "))
			}
			return exitUsage
		}
		dev.Tags = nil
		if set["timeout"] {
			dev.Timeout = *timeout
		}
		if !set["state-dir"] {
			dir = cfg.Gateway.StateDir // ferry's own client certificate, which the server trusts
		}
	} else {
		if endpoint == "" {
			fmt.Fprintln(stderr, "ferry browse: need an endpoint opc.tcp://HOST:PORT (or -config PATH DEVICE)")
			fs.Usage()
			return exitUsage
		}
		if err := config.CheckURL(endpoint, config.OPCUASchemes...); err != nil {
			fmt.Fprintf(stderr, "ferry browse: %v\n", err)
			return exitUsage
		}
		dev = config.OPCUADevice{
			Name: "browse", Endpoint: endpoint, SecurityPolicy: *policy, SecurityMode: *mode,
			Username: *user, CertFile: *certFile, KeyFile: *keyFile,
			ServerThumbprint: *thumb, TrustedCertsDir: *trusted, Timeout: *timeout,
		}
		if *passFile != "" {
			b, err := os.ReadFile(*passFile)
			if err != nil {
				fmt.Fprintf(stderr, "ferry browse: %v\n", err)
				return exitUsage
			}
			dev.Password = strings.TrimRight(string(b), "\r\n")
		} else {
			dev.Password = os.Getenv("FERRY_OPCUA_PASSWORD")
		}
		if dev.Username != "" && dev.Password == "" {
			fmt.Fprintf(stderr, "ferry browse: -username %s needs a password: give -password-file FILE (a file holding it), or set the environment variable FERRY_OPCUA_PASSWORD\n", dev.Username)
			return exitUsage
		}
		if dir == "" && *policy != "None" && *certFile == "" {
			tmp, err := os.MkdirTemp("", "ferry-browse-")
			if err != nil {
				fmt.Fprintf(stderr, "ferry browse: %v\n", err)
				return exitFailure
			}
			defer os.RemoveAll(tmp)
			dir = tmp
		}
	}
	endpoint = dev.Endpoint
	prevLog := log.Writer() // gopcua logs through the standard logger
	log.SetOutput(io.Discard)
	defer log.SetOutput(prevLog)

	n := 0
	err := opcua.Browse(ctx, dev, dir, *node, *depth, func(e opcua.BrowseEntry) {
		if n++; n == 1 {
			fmt.Fprintf(stdout, "%-60s %-10s %-12s %-6s %s\n", "NODE", "CLASS", "DATATYPE", "ACCESS", "BROWSE NAME")
		}
		fmt.Fprintf(stdout, "%-60s %-10s %-12s %-6s %s%s\n", e.NodeID, e.Class, e.DataType, e.Access, strings.Repeat("  ", e.Depth-1), e.BrowseName)
	})
	var untrusted *opcua.UntrustedServerError
	if errors.As(err, &untrusted) {
		fmt.Fprintf(stderr, "ferry browse: the server certificate of %s is not trusted (subject %q)\n", endpoint, untrusted.Subject)
		fmt.Fprintf(stderr, "to trust it, rerun with -server-thumbprint %s (and put server_thumbprint = %q in the device's [[opcua]] table)\n", untrusted.Thumbprint, untrusted.Thumbprint)
		return exitFailure
	}
	if err != nil {
		fmt.Fprintf(stderr, "ferry browse: %v\n", err)
		return exitFailure
	}
	fmt.Fprintf(stdout, "%d nodes\n", n)
	return exitOK
}
