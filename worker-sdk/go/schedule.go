package baton

import (
	"context"
	"fmt"
	"time"

	"example.invalid/baton/worker-sdk/go/pb"
)

// Schedule is a periodic schedule: the chain the broker submits at each
// fire time, and when. Cron expressions have five fields, or six with
// seconds first, in an IANA time zone (UTC when Timezone is empty); or
// Every gives an interval of at least a second. The broker submits each
// fire time's chain once and keeps the schedule across restarts (see
// docs/concepts.md, "Schedules").
type Schedule struct {
	Name     string
	Cron     string
	Timezone string
	Every    time.Duration
	// What each fire submits: a Signature or a Chain (its ID,
	// IdempotencyKey and Deadline must be empty; use Deadline below).
	Chain Submittable
	// Each chain's deadline after it is submitted; 0 for none.
	Deadline time.Duration
	// Fire times missed while the broker was down: the latest CatchUp of
	// them still fire (0 skips them).
	CatchUp uint32
	// Paused adds it paused: it fires nothing until resumed.
	Paused bool
}

func (s Schedule) pb() (*pb.Schedule, error) {
	if s.Chain == nil {
		return nil, fmt.Errorf("baton: schedule %q has no chain to submit", s.Name)
	}
	// Each fire is its own trace: the span that stores the schedule is not
	// the parent of chains submitted for months after.
	req, err := s.Chain.request(context.Background())
	if err != nil {
		return nil, fmt.Errorf("baton: schedule %q: %w", s.Name, err)
	}
	req.ChainId = "" // each fire gets its own
	return &pb.Schedule{
		Name:       s.Name,
		Cron:       s.Cron,
		Timezone:   s.Timezone,
		EveryMs:    uint64(s.Every.Milliseconds()),
		Chain:      req,
		DeadlineMs: uint64(s.Deadline.Milliseconds()),
		CatchUp:    s.CatchUp,
		Paused:     s.Paused,
	}, nil
}

// PutSchedule adds a schedule, or replaces the one with the same name, and
// returns it with its next fire times.
//
// # Errors
//
// A chain that does not build; the broker's status (INVALID_ARGUMENT
// naming the cron expression, the time zone or the chain's field).
func (c *Client) PutSchedule(ctx context.Context, s Schedule) (*pb.ScheduleInfo, error) {
	schedule, err := s.pb()
	if err != nil {
		return nil, err
	}
	ctx, cancel := c.bounded(ctx)
	defer cancel()
	return c.Admin().PutSchedule(ctx, &pb.PutScheduleRequest{Schedule: schedule})
}

// Schedules lists every schedule by name, with its next fire times.
//
// # Errors
//
// The broker's status.
func (c *Client) Schedules(ctx context.Context) ([]*pb.ScheduleInfo, error) {
	ctx, cancel := c.bounded(ctx)
	defer cancel()
	resp, err := c.Admin().ListSchedules(ctx, &pb.ListSchedulesRequest{})
	if err != nil {
		return nil, err
	}
	return resp.Schedules, nil
}

// PauseSchedule pauses (paused true) or resumes a schedule. Fire times
// passed while paused are skipped.
//
// # Errors
//
// NOT_FOUND for an unknown name.
func (c *Client) PauseSchedule(ctx context.Context, name string, paused bool) (*pb.ScheduleInfo, error) {
	ctx, cancel := c.bounded(ctx)
	defer cancel()
	return c.Admin().PauseSchedule(ctx, &pb.PauseScheduleRequest{Name: name, Paused: paused})
}

// RemoveSchedule removes a schedule; the chains it submitted are left
// alone.
//
// # Errors
//
// NOT_FOUND for an unknown name.
func (c *Client) RemoveSchedule(ctx context.Context, name string) error {
	ctx, cancel := c.bounded(ctx)
	defer cancel()
	_, err := c.Admin().RemoveSchedule(ctx, &pb.RemoveScheduleRequest{Name: name})
	return err
}
