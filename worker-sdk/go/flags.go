package baton

import (
	"flag"
	"strings"
)

// RegisterFlags binds the usual worker flags to c, the same as
// `python -m baton worker` takes, for a worker's own main:
//
//	-broker host:port   -queues a,b   -concurrency n   -prefetch n   -name s
//	-token s (prefer $BATON_TOKEN: arguments show in ps)
//	-tls (system roots)   -tls-ca f   -tls-cert f   -tls-key f   -tls-server-name s
//
// Flags left unset keep c's values. Call c.ApplyFlags after fs.Parse.
func (c *WorkerConfig) RegisterFlags(fs *flag.FlagSet) {
	if c.Concurrency == 0 {
		c.Concurrency = 1
	}
	fs.StringVar(&c.Address, "broker", c.Address, "broker address host:port, or several as h1:7070,h2:7070 (default $BATON_ADDR, else "+DefaultAddress+")")
	fs.Func("queues", "queues to take tasks from, comma-separated (default general)", func(s string) error {
		c.Queues = nil
		for _, q := range strings.Split(s, ",") {
			if q = strings.TrimSpace(q); q != "" {
				c.Queues = append(c.Queues, q)
			}
		}
		return nil
	})
	fs.IntVar(&c.Concurrency, "concurrency", c.Concurrency, "tasks run at once")
	fs.IntVar(&c.Prefetch, "prefetch", c.Prefetch, "assignments the broker may send beyond -concurrency")
	fs.StringVar(&c.Name, "name", c.Name, "worker name shown in inspection (default host:pid)")
	fs.StringVar(&c.Token, "token", c.Token, "token (default $BATON_TOKEN; prefer the variable: arguments show in ps)")
	c.flagTLS = &TLS{}
	if c.TLS != nil {
		*c.flagTLS = *c.TLS
	}
	fs.BoolVar(&c.flagTLSOn, "tls", c.TLS != nil, "TLS to the broker, trusting the system's roots unless -tls-ca")
	fs.StringVar(&c.flagTLS.CA, "tls-ca", c.flagTLS.CA, "CA certificate (PEM file) of the broker's certificate; implies -tls")
	fs.StringVar(&c.flagTLS.Cert, "tls-cert", c.flagTLS.Cert, "client certificate (PEM file), for mutual TLS; implies -tls")
	fs.StringVar(&c.flagTLS.Key, "tls-key", c.flagTLS.Key, "key of -tls-cert (PEM file)")
	fs.StringVar(&c.flagTLS.ServerName, "tls-server-name", c.flagTLS.ServerName, "name in the broker's certificate, when the address does not carry it")
}

// ApplyFlags completes the configuration from the flags parsed after
// RegisterFlags (the TLS flags).
func (c *WorkerConfig) ApplyFlags() {
	if c.flagTLS == nil {
		return
	}
	if c.flagTLSOn || c.flagTLS.CA != "" || c.flagTLS.Cert != "" || c.flagTLS.Key != "" || c.flagTLS.ServerName != "" {
		t := *c.flagTLS
		c.TLS = &t
	} else {
		c.TLS = nil
	}
}
