package baton

import (
	"errors"
	"slices"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

func mustBrokers(t *testing.T, list string) *brokers {
	t.Helper()
	b, err := newBrokers(splitAddrs(list))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// step fails the current address with r and checks where that leads.
func step(t *testing.T, b *brokers, r refusal, want next, current string) {
	t.Helper()
	if got := b.failed(r); got != want || b.current != current {
		t.Fatalf("failed(%+v) = %v at %s, want %v at %s", r, got, b.current, want, current)
	}
}

func TestListsSplitOnCommasAndIgnoreBlanks(t *testing.T) {
	if got := splitAddrs(" a:1, b:2 ,,"); !slices.Equal(got, []string{"a:1", "b:2"}) {
		t.Fatal(got)
	}
	if got := splitAddrs(" , "); len(got) != 0 {
		t.Fatal(got)
	}
	if _, err := newBrokers(nil); !errors.Is(err, errNoAddress) {
		t.Fatal(err)
	}
	if _, err := NewClient(Connection{Address: " , "}); !errors.Is(err, errNoAddress) {
		t.Fatalf("an empty list is a configuration error, got %v", err)
	}
	t.Setenv("BATON_ADDR", "a:1, b:2")
	c, err := NewClient(Connection{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got := c.route.brokers.list; !slices.Equal(got, []string{"a:1", "b:2"}) {
		t.Fatalf("BATON_ADDR read as %v", got)
	}
}

func TestDownBrokersAreSkippedAndARoundEndsWithAPause(t *testing.T) {
	b := mustBrokers(t, "a:1,b:2,c:3")
	if b.current != "a:1" {
		t.Fatal(b.current)
	}
	step(t, b, refusal{}, nextNow, "b:2")
	step(t, b, refusal{}, nextNow, "c:3")
	step(t, b, refusal{}, nextPause, "a:1")
}

func TestASuccessKeepsTheAddressAndStartsANewRound(t *testing.T) {
	b := mustBrokers(t, "a:1,b:2")
	step(t, b, refusal{}, nextNow, "b:2")
	b.succeeded()
	// a:1 was tried in the earlier round only: it is next.
	step(t, b, refusal{}, nextNow, "a:1")
	step(t, b, refusal{}, nextPause, "a:1")
}

func TestAStandbySendsTheClientToTheLeaderEvenOutsideTheList(t *testing.T) {
	b := mustBrokers(t, "a:1,b:2")
	step(t, b, refusal{standby: true, leader: "z:9"}, nextNow, "z:9")
	b.succeeded()
	if b.current != "z:9" {
		t.Fatal(b.current)
	}
	// The leader dies: z refuses, then the list, where a standby still
	// names the dead leader (already tried): the round ends.
	step(t, b, refusal{}, nextNow, "a:1")
	step(t, b, refusal{standby: true, leader: "z:9"}, nextNow, "b:2")
	step(t, b, refusal{standby: true}, nextPauseStandby, "a:1")
	// A round of standbys alone: after it, a round of nothing.
	step(t, b, refusal{}, nextNow, "b:2")
	step(t, b, refusal{}, nextPause, "a:1")
}

func TestAStandbysTrailersAreReadAndWhichFailuresGoElsewhere(t *testing.T) {
	md := metadata.Pairs(standbyKey, "1", leaderKey, " h:7070 ")
	if got := refusalOf(md); got != (refusal{standby: true, leader: "h:7070"}) {
		t.Fatal(got)
	}
	if got := refusalOf(nil); got != (refusal{}) {
		t.Fatal(got)
	}
	standby := status.Error(codes.Unavailable, "this broker is a standby; no leader is known yet")
	unreached := status.Error(codes.Unavailable,
		`connection error: desc = "transport: Error while dialing: dial tcp 127.0.0.1:1: connect: connection refused"`)
	broken := status.Error(codes.Unavailable, "error reading from server: EOF")
	for _, c := range []struct {
		err  error
		r    refusal
		want bool
	}{
		{standby, refusal{standby: true}, true},
		{unreached, refusal{}, true},
		{broken, refusal{}, false}, // cut off mid-call: it may have been carried out
		{status.Error(codes.InvalidArgument, "bad"), refusal{standby: true}, false},
	} {
		if got := elsewhere(c.err, c.r); got != c.want {
			t.Errorf("elsewhere(%v, %+v) = %v", c.err, c.r, got)
		}
	}
}
