package main

import (
	"context"
	"errors"
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
	fs := newFlagSet("browse", "browse opc.tcp://HOST:PORT [-node ID] [-depth N] [security flags]", stderr)
	node := fs.String("node", "", "node id to start from (default: the Objects folder); nsu=URI;s=... is resolved")
	depth := fs.Int("depth", 3, "levels to descend")
	policy := fs.String("security-policy", "None", "None, Basic256Sha256, Aes128_Sha256_RsaOaep or Aes256_Sha256_RsaPss")
	mode := fs.String("security-mode", "", `None, Sign or SignAndEncrypt (default "SignAndEncrypt" with a policy other than None)`)
	user := fs.String("username", "", "log in with this user (default anonymous)")
	passFile := fs.String("password-file", "", "file holding the password (or set FERRY_OPCUA_PASSWORD)")
	certFile := fs.String("cert-file", "", "client certificate (default: generated into -state-dir/pki)")
	keyFile := fs.String("key-file", "", "client private key")
	thumb := fs.String("server-thumbprint", "", "trust the server certificate with this SHA-256 thumbprint")
	trusted := fs.String("trusted-certs-dir", "", "trust the server certificates in this directory")
	stateDir := fs.String("state-dir", "", "where the client certificate is generated and kept (default: a temporary directory)")
	timeout := fs.Duration("timeout", 10*time.Second, "request timeout")
	// The endpoint may come first, before the flags.
	var endpoint string
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		endpoint, args = args[0], args[1:]
	}
	if code := parseFlags(fs, args, 1); code >= 0 {
		return code
	}
	if endpoint == "" {
		endpoint = fs.Arg(0)
	} else if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "ferry browse: unexpected argument %q\n", fs.Arg(0))
		return exitUsage
	}
	if !strings.HasPrefix(endpoint, "opc.tcp://") {
		fmt.Fprintln(stderr, "ferry browse: need an endpoint opc.tcp://HOST:PORT")
		fs.Usage()
		return exitUsage
	}
	if *depth < 1 {
		fmt.Fprintln(stderr, "ferry browse: -depth must be at least 1")
		return exitUsage
	}
	dev := config.OPCUADevice{
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
	dir := *stateDir
	if dir == "" && *policy != "None" && *certFile == "" {
		tmp, err := os.MkdirTemp("", "ferry-browse-")
		if err != nil {
			fmt.Fprintf(stderr, "ferry browse: %v\n", err)
			return exitFailure
		}
		defer os.RemoveAll(tmp)
		dir = tmp
	}
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
