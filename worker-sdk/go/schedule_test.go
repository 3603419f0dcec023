package baton_test

import (
	"strings"
	"testing"
	"time"

	baton "example.invalid/baton/worker-sdk/go"
)

// A schedule submits its chain at each fire time; paused, it shows no next
// fire; removed, it is gone; a bad one is refused naming what is wrong.
func TestSchedules(t *testing.T) {
	b := startBroker(t, baton.Connection{})
	w := newWorker(b, "w-sched", nil, 2)
	tick := w.Register("test.tick", func(ctx *baton.TaskContext, n int) (int, error) {
		return n + 1, nil
	})
	startWorker(t, b, w, "w-sched")
	ctx := testCtx(t, 60*time.Second)

	added, err := b.client.PutSchedule(ctx, baton.Schedule{
		Name:  "go-every-second",
		Every: time.Second,
		Chain: tick.Si(41),
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(added.NextFiresUnixMs) != 5 || added.NextFiresUnixMs[0] != added.CreatedUnixMs+1000 {
		t.Fatalf("next fires %v, created %d", added.NextFiresUnixMs, added.CreatedUnixMs)
	}
	var last string
	for deadline := time.Now().Add(10 * time.Second); last == ""; {
		if time.Now().After(deadline) {
			t.Fatal("the schedule never fired")
		}
		list, err := b.client.Schedules(ctx)
		if err != nil {
			t.Fatal(err)
		}
		last = list[0].LastChainId
		time.Sleep(100 * time.Millisecond)
	}
	var got int
	if err := b.client.Result(last).Get(ctx, &got); err != nil || got != 42 {
		t.Fatalf("the fired chain gave %d, %v", got, err)
	}
	paused, err := b.client.PauseSchedule(ctx, "go-every-second", true)
	if err != nil || !paused.Schedule.Paused || len(paused.NextFiresUnixMs) != 0 {
		t.Fatalf("paused: %v, %v", paused, err)
	}
	if err := b.client.RemoveSchedule(ctx, "go-every-second"); err != nil {
		t.Fatal(err)
	}
	if list, err := b.client.Schedules(ctx); err != nil || len(list) != 0 {
		t.Fatalf("after remove: %v, %v", list, err)
	}
	_, err = b.client.PutSchedule(ctx, baton.Schedule{Name: "bad", Cron: "61 * * * *", Chain: tick.Si(1)})
	if err == nil || !strings.Contains(err.Error(), "not a cron expression") {
		t.Fatalf("a bad cron expression: %v", err)
	}
	if _, err := b.client.PutSchedule(ctx, baton.Schedule{Name: "empty", Every: time.Second}); err == nil {
		t.Fatal("a schedule without a chain was accepted")
	}
}
