package baton_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	baton "example.invalid/baton/worker-sdk/go"
)

// newToken appends a token to the file and returns its secret.
func newToken(t *testing.T, file, name, role string, queues ...string) string {
	t.Helper()
	args := []string{"token", "new", "--name", name, "--role", role}
	if len(queues) > 0 {
		args = append(args, "--queues", strings.Join(queues, ","))
	}
	cmd := exec.Command(brokerBinary(t), args...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	table, err := cmd.Output()
	if err != nil {
		t.Fatalf("token new: %v %s", err, stderr.String())
	}
	f, err := os.OpenFile(file, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write(table); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(stderr.String()), "\n")
	return strings.TrimSpace(lines[len(lines)-1])
}

// With --tokens, every call carries `authorization: Bearer <token>`: a
// worker and a client with their tokens work, a worker without one is
// refused for good (WorkerRefusedError, no reconnect loop), and a client
// without one gets UNAUTHENTICATED.
func TestTokens(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "tokens.toml")
	admin := newToken(t, file, "admin", "admin")
	client := newToken(t, file, "client", "client")
	worker := newToken(t, file, "pool", "worker", "general")
	b := startBroker(t, baton.Connection{Token: admin}, "--tokens", file)

	w := baton.NewWorker(baton.WorkerConfig{Connection: baton.Connection{Address: b.addr, Token: worker}, Name: "w-token"})
	echo := w.Register("test.echo", func(ctx *baton.TaskContext, v string) (string, error) { return v, nil })
	startWorker(t, b, w, "w-token")
	ctx := testCtx(t, 30*time.Second)

	c, err := baton.NewClient(baton.Connection{Address: b.addr, Token: client})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	res, err := c.Submit(ctx, echo.Si("hi"))
	if err != nil {
		t.Fatal(err)
	}
	var got string
	if err := res.Get(ctx, &got); err != nil || got != "hi" {
		t.Fatalf("%q %v", got, err)
	}

	t.Setenv("BATON_TOKEN", "")
	anon, err := baton.NewClient(baton.Connection{Address: b.addr})
	if err != nil {
		t.Fatal(err)
	}
	defer anon.Close()
	if _, err := anon.Submit(ctx, echo.Si("x")); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("no token: %v", err)
	}

	// A client token may not run a worker; a worker token not for "heavy" neither.
	for _, tc := range []struct {
		token  string
		queues []string
		code   codes.Code
	}{{"", nil, codes.Unauthenticated}, {client, nil, codes.PermissionDenied}, {worker, []string{"heavy"}, codes.PermissionDenied}} {
		bad := baton.NewWorker(baton.WorkerConfig{Connection: baton.Connection{Address: b.addr, Token: tc.token}, Name: "w-bad", Queues: tc.queues})
		bad.Register("test.echo", func(ctx *baton.TaskContext) error { return nil })
		err := bad.Run(ctx)
		var refused *baton.WorkerRefusedError
		if !errors.As(err, &refused) || status.Code(refused.Err) != tc.code {
			t.Fatalf("worker with token %q queues %v: %v", tc.token, tc.queues, err)
		}
	}
}

// pki is a throwaway CA with a server certificate for 127.0.0.1 and a
// client certificate.
type pki struct{ dir, ca, serverCert, serverKey, clientCert, clientKey string }

func newPKI(t *testing.T) pki {
	t.Helper()
	dir := t.TempDir()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "baton go test CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	write := func(name, kind string, der []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: kind, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	issue := func(name string, server bool, serial int64) (string, string) {
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: name},
			NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour), KeyUsage: x509.KeyUsageDigitalSignature,
		}
		if server {
			tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
			tmpl.DNSNames = []string{"localhost"}
			tmpl.IPAddresses = []net.IP{net.ParseIP("127.0.0.1")}
		} else {
			tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
			tmpl.DNSNames = []string{name}
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		keyDER, _ := x509.MarshalPKCS8PrivateKey(key)
		return write(name+".pem", "CERTIFICATE", der), write(name+".key", "PRIVATE KEY", keyDER)
	}
	p := pki{dir: dir, ca: write("ca.pem", "CERTIFICATE", caDER)}
	p.serverCert, p.serverKey = issue("broker", true, 2)
	p.clientCert, p.clientKey = issue("worker-1", false, 3)
	return p
}

// TLS, then mutual TLS: the SDK verifies the broker against the CA; with
// --tls-client-ca a worker presents its client certificate (CA, cert and
// key given as files, or as PEM text), and one without it is refused.
func TestTLSAndMutualTLS(t *testing.T) {
	p := newPKI(t)

	t.Run("tls", func(t *testing.T) {
		tls := &baton.TLS{CA: p.ca}
		b := startBroker(t, baton.Connection{TLS: tls}, "--tls-cert", p.serverCert, "--tls-key", p.serverKey)
		w := baton.NewWorker(baton.WorkerConfig{Connection: baton.Connection{Address: b.addr, TLS: tls}, Name: "w-tls"})
		echo := w.Register("test.echo", func(ctx *baton.TaskContext, v string) (string, error) { return v, nil })
		startWorker(t, b, w, "w-tls")
		ctx := testCtx(t, 30*time.Second)
		res, err := b.client.Submit(ctx, echo.Si("secure"))
		if err != nil {
			t.Fatal(err)
		}
		var got string
		if err := res.Get(ctx, &got); err != nil || got != "secure" {
			t.Fatalf("%q %v", got, err)
		}
		// Plaintext to a TLS broker fails.
		plain, _ := baton.NewClient(baton.Connection{Address: b.addr})
		defer plain.Close()
		short := testCtx(t, 2*time.Second)
		if _, err := plain.GetChain(short, res.ID); err == nil {
			t.Fatal("a plaintext client was served")
		}
	})

	t.Run("mutual", func(t *testing.T) {
		caPEM, _ := os.ReadFile(p.ca)
		certPEM, _ := os.ReadFile(p.clientCert)
		keyPEM, _ := os.ReadFile(p.clientKey)
		clientTLS := &baton.TLS{CA: string(caPEM), Cert: string(certPEM), Key: string(keyPEM), ServerName: "localhost"}
		b := startBroker(t, baton.Connection{TLS: clientTLS}, "--tls-cert", p.serverCert, "--tls-key", p.serverKey, "--tls-client-ca", p.ca)
		w := baton.NewWorker(baton.WorkerConfig{
			Connection: baton.Connection{Address: b.addr, TLS: &baton.TLS{CA: p.ca, Cert: p.clientCert, Key: p.clientKey}},
			Name:       "w-mtls",
		})
		echo := w.Register("test.echo", func(ctx *baton.TaskContext, v string) (string, error) { return v, nil })
		startWorker(t, b, w, "w-mtls")
		ctx := testCtx(t, 30*time.Second)
		res, err := b.client.Submit(ctx, echo.Si("mutual"))
		if err != nil {
			t.Fatal(err)
		}
		var got string
		if err := res.Get(ctx, &got); err != nil || got != "mutual" {
			t.Fatalf("%q %v", got, err)
		}

		// A worker without a client certificate is refused.
		anon := baton.NewWorker(baton.WorkerConfig{Connection: baton.Connection{Address: b.addr, TLS: &baton.TLS{CA: p.ca}}, Name: "w-anon"})
		anon.Register("test.echo", func(ctx *baton.TaskContext) error { return nil })
		runCtx := testCtx(t, 3*time.Second)
		err = anon.Run(runCtx)
		var refused *baton.WorkerRefusedError
		if !errors.As(err, &refused) || status.Code(refused.Err) != codes.Unauthenticated {
			t.Fatalf("worker without a certificate: %v", err)
		}
		for _, wi := range b.workers(t) {
			if wi.WorkerName == "w-anon" {
				t.Fatal("a worker without a client certificate was served")
			}
		}
	})
}
