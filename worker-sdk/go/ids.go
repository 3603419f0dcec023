package baton

import (
	"crypto/rand"
	"fmt"
	"time"
)

// newUUIDv7 returns a time-ordered UUID (RFC 9562, version 7), the kind of
// chain id the broker finds cheapest (see SubmitChainRequest.chain_id).
func newUUIDv7() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand panics instead)
	ms := uint64(time.Now().UnixMilli())
	for i := 0; i < 6; i++ {
		b[i] = byte(ms >> (40 - 8*i))
	}
	b[6] = b[6]&0x0f | 0x70
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}
