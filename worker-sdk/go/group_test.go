package baton_test

import (
	"errors"
	"slices"
	"testing"
	"time"

	baton "example.invalid/baton/worker-sdk/go"
)

// A chord hands the members' results, in member order (not the order they
// ended), to its body; a nested executor runs its own callbacks, and its
// failure fails the parent after both on_failures ran.
func TestGroupsChordsAndNestedExecutors(t *testing.T) {
	b := startBroker(t, baton.Connection{})
	rec := newRecorder()
	w := newWorker(b, "w-group", nil, 4)
	add := w.Register("test.add", func(ctx *baton.TaskContext, x, y int) (int, error) {
		if x == 0 {
			time.Sleep(200 * time.Millisecond) // the first member ends last
		}
		return x + y, nil
	})
	w.Register("test.sum", func(ctx *baton.TaskContext, list []int) (int, error) {
		rec.add("sum %v", list)
		total := 0
		for _, x := range list {
			total += x
		}
		return total, nil
	})
	w.Register("test.note", func(ctx *baton.TaskContext, label string) error {
		rec.add("note %s", label)
		return nil
	})
	w.Register("test.boom", func(ctx *baton.TaskContext) error { return errors.New("the cloud said no") })
	w.Register("test.erred", func(ctx *baton.TaskContext, r baton.FailureRecord, label string) error {
		rec.add("erred %s %s", label, r.TaskName)
		return nil
	})
	startWorker(t, b, w, "w-group")
	ctx := testCtx(t, 30*time.Second)

	res, err := b.client.Submit(ctx, baton.Chord(
		[]baton.Signature{add.Si(0, 1), add.Si(1, 1), add.Si(2, 1)},
		baton.S("test.sum"),
	))
	if err != nil {
		t.Fatal(err)
	}
	var total int
	if err := res.Get(ctx, &total); err != nil {
		t.Fatal(err)
	}
	if total != 6 || !slices.Equal(rec.all(), []string{"sum [1 2 3]"}) {
		t.Fatalf("total %d, events %q", total, rec.all())
	}

	volume, err := baton.Chain{
		Steps:     []baton.Signature{baton.Si("test.boom")},
		OnFailure: []baton.Signature{baton.S("test.erred", "volume")},
	}.AsStep("VolumeExecutor")
	if err != nil {
		t.Fatal(err)
	}
	res, err = b.client.Submit(ctx, baton.Chain{
		Steps:     []baton.Signature{volume, baton.Si("test.note", "never")},
		OnFailure: []baton.Signature{baton.S("test.erred", "vm")},
	})
	if err != nil {
		t.Fatal(err)
	}
	var failed *baton.ChainFailedError
	if err := res.Get(ctx, nil); !errors.As(err, &failed) || failed.Record.TaskName != "test.boom" {
		t.Fatalf("want the member's failure, got %v", err)
	}
	waitUntil(t, 10*time.Second, "both on_failures", func() bool { return rec.count("erred") == 2 })
	if got := rec.all()[1:]; !slices.Equal(got, []string{"erred volume test.boom", "erred vm test.boom"}) {
		t.Fatalf("events %q", got)
	}
	if _, err := (baton.Chain{Steps: []baton.Signature{add.Si(1, 1)}, Heavy: true}).AsStep("x"); err == nil {
		t.Fatal("AsStep must refuse a chain with its own submission settings")
	}
}
