package baton

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
)

// DefaultAddress is the broker's address when neither the configuration nor
// $BATON_ADDR names one.
const DefaultAddress = "127.0.0.1:7070"

// TLS configures TLS to the broker. CA, Cert and Key are each a file path
// or the PEM text itself (text that starts with "-----BEGIN").
type TLS struct {
	// CA signed the broker's certificate; empty trusts the system's roots.
	CA string
	// Cert and Key are this process's client certificate and key, for a
	// broker with mutual TLS (--tls-client-ca; required there for workers).
	Cert, Key string
	// ServerName is the name in the broker's certificate, when the
	// address does not carry it (connecting by IP, say).
	ServerName string
}

func readPEM(source, what string) ([]byte, error) {
	if strings.HasPrefix(strings.TrimSpace(source), "-----BEGIN") {
		return []byte(source), nil
	}
	b, err := os.ReadFile(source)
	if err != nil {
		return nil, fmt.Errorf("baton: tls: cannot read %s: %w", what, err)
	}
	return b, nil
}

func (t *TLS) config() (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: t.ServerName}
	if t.CA != "" {
		pem, err := readPEM(t.CA, "ca")
		if err != nil {
			return nil, err
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("baton: tls: no certificate in ca %q", t.CA)
		}
		cfg.RootCAs = pool
	}
	if (t.Cert == "") != (t.Key == "") {
		return nil, fmt.Errorf("baton: tls: Cert and Key go together")
	}
	if t.Cert != "" {
		certPEM, err := readPEM(t.Cert, "cert")
		if err != nil {
			return nil, err
		}
		keyPEM, err := readPEM(t.Key, "key")
		if err != nil {
			return nil, err
		}
		pair, err := tls.X509KeyPair(certPEM, keyPEM)
		if err != nil {
			return nil, fmt.Errorf("baton: tls: client certificate: %w", err)
		}
		cfg.Certificates = []tls.Certificate{pair}
	}
	return cfg, nil
}

// bearer puts `authorization: Bearer <token>` on every call. It does not
// require transport security: a token over plaintext on loopback is a
// legitimate local setup (the broker warns about non-loopback plaintext).
type bearer struct{ header map[string]string }

func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return b.header, nil
}
func (bearer) RequireTransportSecurity() bool { return false }

// Connection says how to reach the broker; the zero value is the broker at
// $BATON_ADDR (else DefaultAddress), with the token $BATON_TOKEN if set, in
// plaintext.
type Connection struct {
	// Address is the broker's host:port, or several brokers sharing one
	// database as a comma list ("h1:7070,h2:7070"): clients and workers
	// then follow the leader among them (see the README, "Several
	// brokers").
	Address string
	// Token is sent as `authorization: Bearer <Token>` on every call.
	Token string
	// TLS, when set, turns TLS on.
	TLS *TLS
	// DialOptions are added to the SDK's own.
	DialOptions []grpc.DialOption
}

func (c Connection) address() string {
	if c.Address != "" {
		return c.Address
	}
	if a := os.Getenv("BATON_ADDR"); a != "" {
		return a
	}
	return DefaultAddress
}

// addresses is the list of address(): several brokers, or one.
func (c Connection) addresses() ([]string, error) {
	list := splitAddrs(c.address())
	if len(list) == 0 {
		return nil, fmt.Errorf("%w: %q", errNoAddress, c.address())
	}
	return list, nil
}

func checkToken(token string) (string, error) {
	token = strings.TrimSpace(token)
	for _, r := range token {
		if r < 33 || r > 126 {
			return "", fmt.Errorf("baton: the token must be visible ASCII (no spaces or control characters)")
		}
	}
	return token, nil
}

// check reports a bad setting (an empty address list, a bad token or TLS
// setting) without connecting.
func (c Connection) check() error {
	list, err := c.addresses()
	if err != nil {
		return err
	}
	conn, err := c.dial(list[0])
	if err != nil {
		return err
	}
	return conn.Close()
}

// dial opens a lazy gRPC connection to address, one broker of the list
// (grpc.NewClient connects on first use). Its reconnect backoff is the
// worker's own (0.1 s doubling to 2 s), not gRPC's default (1 s growing to
// 120 s), so a restarted broker is found soon.
func (c Connection) dial(address string) (*grpc.ClientConn, error) {
	token := c.Token
	if token == "" {
		token = os.Getenv("BATON_TOKEN")
	}
	token, err := checkToken(token)
	if err != nil {
		return nil, err
	}
	opts := []grpc.DialOption{
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 2, Jitter: 0.2, MaxDelay: 2 * time.Second},
			MinConnectTimeout: 5 * time.Second,
		}),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64 << 20)),
	}
	if c.TLS != nil {
		cfg, err := c.TLS.config()
		if err != nil {
			return nil, err
		}
		opts = append(opts, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	} else {
		opts = append(opts, grpc.WithTransportCredentials(insecure.NewCredentials()))
	}
	if token != "" {
		opts = append(opts, grpc.WithPerRPCCredentials(bearer{map[string]string{"authorization": "Bearer " + token}}))
	}
	opts = append(opts, c.DialOptions...)
	conn, err := grpc.NewClient(address, opts...)
	if err != nil {
		return nil, fmt.Errorf("baton: connect to %s: %w", address, err)
	}
	return conn, nil
}
