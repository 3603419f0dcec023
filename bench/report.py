#!/usr/bin/env python3
"""Tables and a chart of benchmark results: Baton against Celery, workload by workload.

    python bench/report.py RESULTS.jsonl [--chart docs/benchmarks.png] [--markdown table.md]

RESULTS.jsonl holds one JSON object per line, as ``bench/python/bench.py`` and
the Rust bench binary print them: system, workload, producer, durable,
workers, procs, concurrency, tasks, unit, runs, median, min, max (and
optionally versions, settings, load_rate, load). Other lines (blank, or not
starting with ``{``) are skipped, so a log with JSON lines in it will do.
When a configuration appears more than once, its last line counts.

Each Baton figure is compared with the Celery figure of the same workload,
durability, workers, procs and concurrency, measured with Celery's one
producer, the ``.delay()`` loop: Baton's loop and Baton's batch producer are
each set against it. A latency-under-load figure is compared only at the same
load (rates within 10%): ``bench/run`` measures Baton at its own half
capacity (``load`` "half") and again at Celery's rate (``--load-rate``,
``load`` "set"), and only the second has a ratio. The ratio is Baton's
median over Celery's; above 1 is better for throughput, below 1 for latency.

The table goes to stdout; ``--markdown`` writes it (with the versions and
settings the lines recorded) as Markdown, and ``--chart`` renders a PNG with
throughput and latency side by side.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Dict, Iterable, List, Optional, Tuple

THROUGHPUT = ("noop", "chains", "executors", "cpu")
LATENCY = ("latency_low_p50", "latency_low_p99", "latency_load_p50", "latency_load_p99")
LABELS = {
    "noop": "no-op tasks",
    "chains": "2-step chains",
    "executors": "executors\n(chain + callbacks)",
    "cpu": "CPU-bound tasks\n(~10 ms of Python)",
    "latency_low_p50": "low load p50",
    "latency_low_p99": "low load p99",
    "latency_load_p50": "under load p50",
    "latency_load_p99": "under load p99",
}
CONFIG = ("workload", "durable", "workers", "procs", "concurrency")
"""What a Baton line and its Celery line share; the producer is Celery's loop."""


def load(path: str) -> List[dict]:
    """The results, one per configuration (the last line of each wins), in first-seen order."""
    results: Dict[tuple, dict] = {}
    with open(path) as f:
        for line in f:
            if line.lstrip().startswith("{"):
                r = json.loads(line)
                results[(r["system"], r["producer"], r.get("prefetch", 0), r.get("load", "half"),
                         r.get("window"), r.get("pool"), bool(r.get("defaults")), store(r),
                         *(r[k] for k in CONFIG))] = r
    return list(results.values())


def store(r: dict) -> str:
    """Where Baton kept its store: "sled" (the default; lines before the field had it) or
    "postgres"; Celery's lines say nothing."""
    return r.get("store", "sled") if r["system"] == "baton" else ""


def lower_is_better(r: dict) -> bool:
    return r["unit"] in ("ms", "us/task")


def same_load(a: dict, b: dict) -> bool:
    """Whether two figures were measured at the same load: always for figures without a
    load rate, else when the rates are within 10%."""
    ra, rb = a.get("load_rate"), b.get("load_rate")
    return ra is None or rb is None or abs(ra - rb) <= 0.1 * max(ra, rb)


def celery_for(baton: dict, results: Iterable[dict]) -> Optional[dict]:
    """The Celery line a Baton line is compared with: the same configuration; or, for
    a defaults line (``bench.py --defaults``), Celery's defaults line of the workload
    whatever its processes and concurrency (each system as it starts untuned)."""
    config = CONFIG[:3] if baton.get("defaults") else CONFIG
    return next((r for r in results if r["system"] == "celery" and r["producer"] == "loop"
                 and bool(r.get("defaults")) == bool(baton.get("defaults"))
                 and all(r[k] == baton[k] for k in config) and same_load(r, baton)), None)


def workload_name(r: dict) -> str:
    """The workload, with the load rate of a latency figure measured at a set rate."""
    return f"{r['workload']} at {r['load_rate']:,.0f}/s" if r.get("load") == "set" else r["workload"]


def comparisons(results: List[dict]) -> List[Tuple[Optional[dict], Optional[dict]]]:
    """(baton, celery) pairs in workload order: every Baton line with its Celery line
    (or None), then each Celery line no Baton line matched, with None."""
    order = {w: i for i, w in enumerate(THROUGHPUT + LATENCY)}
    pairs: List[Tuple[Optional[dict], Optional[dict]]] = [
        (r, celery_for(r, results)) for r in results if r["system"] == "baton"
    ]
    matched = {id(c) for _, c in pairs if c is not None}
    pairs += [(None, r) for r in results if r["system"] == "celery" and id(r) not in matched]
    # The defaults-against-defaults rows first (what a user who tunes nothing gets).
    return sorted(pairs, key=lambda p: (not (p[0] or p[1]).get("defaults"),
                                        order.get((p[0] or p[1])["workload"], len(order))))


def figure(r: Optional[dict]) -> str:
    if r is None:
        return "—"
    fmt = "{:,.2f}" if r["unit"] == "ms" else "{:,.0f}"
    return f"{fmt.format(r['median'])} {r['unit']} [{fmt.format(r['min'])}–{fmt.format(r['max'])}]"


def ratio(baton: Optional[dict], celery: Optional[dict]) -> Optional[float]:
    return None if baton is None or celery is None else baton["median"] / celery["median"]


def rows(results: List[dict]) -> Tuple[List[str], List[List[str]]]:
    header = ["workload", "producer", "workers", "store", "durable", "procs × conc.", "Baton", "Celery",
              "Baton/Celery"]
    table = []
    for baton, celery in comparisons(results):
        any_ = baton or celery
        q = ratio(baton, celery)
        table.append([
            workload_name(any_), baton["producer"] if baton else "—", any_["workers"],
            store(baton) if baton else "—", "yes" if any_["durable"] else "no", size(any_),
            figure(baton), figure(celery), "—" if q is None else f"{q:.2f}×",
        ])
    return header, table


def size(r: dict) -> str:
    """Worker processes × concurrency, and a Baton worker's prefetch (Celery's is
    always its default: 3 × concurrency beyond the running ones)."""
    prefetch = f" + {r['prefetch']} prefetch" if r.get("prefetch") else ""
    prefetch += " + default window" if r.get("window") else ""
    prefetch += f", {r['pool']}" if r.get("pool") else ""
    prefetch += " (defaults)" if r.get("defaults") else ""
    return f"{r['procs']} × {r['concurrency']}{prefetch}"


def text_table(header: List[str], table: List[List[str]]) -> str:
    widths = [max(len(row[i]) for row in [header] + table) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in [header] + table)


def markdown(results: List[dict], header: List[str], table: List[List[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in table]
    lines += ["", "Figures: median [min–max] over the runs. Baton/Celery: ratio of the medians "
              "(above 1 is better for throughput, below 1 for latency); Baton's loop and batch "
              "producers are both compared with Celery's `.delay()` loop."]
    for system in ("baton", "celery"):
        seen = [r for r in results if r["system"] == system]
        described: Dict[str, str] = {}
        for r in seen:
            for key in ("versions", "settings"):
                for name, value in (r.get(key) or {}).items():
                    described.setdefault(f"{key[:-1]} `{name}`", json.dumps(value) if not isinstance(value, str) else value)
        if described:
            lines += ["", f"**{system.capitalize()}**:", ""]
            lines += [f"- {name}: {value}" for name, value in described.items()]
    return "\n".join(lines) + "\n"


# -- chart ------------------------------------------------------------------------------

SERIES = {
    # (system, workers, producer): (label, color)
    ("celery", "python", "loop"): ("Celery 5 + Redis, Python workers, .delay() loop", "#9e9e9e"),
    ("baton", "python", "loop"): ("Baton, Python workers, .delay() loop", "#1f77b4"),
    ("baton", "python", "batch"): ("Baton, Python workers, submit_many", "#6baed6"),
    ("baton", "rust", "loop"): ("Baton, Rust workers, pipelined loop", "#d95f02"),
    ("baton", "rust", "batch"): ("Baton, Rust workers, submit_many", "#fdae6b"),
    ("baton", "rust", "sync"): ("Baton, Rust workers, one submit at a time", "#a6761d"),
}


PREFETCHED = {
    # The same series with Baton workers prefetching.
    ("baton", "python", "loop"): "#54278f",
    ("baton", "python", "batch"): "#9e9ac8",
}


ON_POSTGRES = {
    # The same series with the store in PostgreSQL.
    ("baton", "python", "loop"): "#17becf",
    ("baton", "rust", "loop"): "#e7298a",
    ("baton", "rust", "batch"): "#fa9fb5",
}


AT_CELERYS_LOAD = {
    # Latency under load measured at Celery's rate (``load`` "set").
    ("baton", "python", "loop"): "#08306b",
}


def series_of(r: dict, sized: bool) -> Tuple[str, str]:
    """The bar a line is drawn as: its label (with the worker sizes when ``sized``) and color."""
    key = (r["system"], r["workers"], r["producer"])
    label, color = SERIES.get(key, (f"{r['system']}, {r['workers']} workers, {r['producer']}", "#333333"))
    if r.get("prefetch"):
        label, color = f"{label}, prefetch", PREFETCHED.get(key, color)
    if r.get("pool") == "processes":
        label, color = f"{label}, process pool", "#2ca02c"
    if store(r) == "postgres":
        label, color = f"{label}, on PostgreSQL", ON_POSTGRES.get(key, "#e7298a")
    if r.get("defaults"):
        label = f"{label}, defaults"
    if r.get("load") == "set":
        at_load = "#0b5563" if store(r) == "postgres" else AT_CELERYS_LOAD.get(key, color)
        label, color = f"{label}, under Celery's load", at_load
    prefetch = f" + {r['prefetch']}" if r.get("prefetch") else ""
    return (f"{label} ({r['procs']}×{r['concurrency']}{prefetch})" if sized else label), color


def series_order(r: dict) -> tuple:
    """Celery first, then Baton with Python workers, then Rust; loop before batch."""
    return (r["system"] != "celery", r["workers"], store(r), r["producer"] != "loop", r.get("prefetch", 0),
            r.get("pool") or "", r.get("load") == "set", r["procs"], r["concurrency"])


def ratio_label(q: float) -> str:
    return f"{q:.2f}×" if q < 1 else f"{q:.1f}×"


def panel(ax, results: List[dict], workloads: Tuple[str, ...], title: str, sized: bool) -> None:
    """Grouped bars, one group per workload (split by durability when both were measured),
    with min–max whiskers and each Baton bar's ratio to its Celery bar above it."""
    lines = sorted((r for r in results if r["workload"] in workloads), key=series_order)
    if not lines:
        ax.set_visible(False)
        return
    split = len({r["durable"] for r in lines}) > 1
    groups = sorted({(workloads.index(r["workload"]), r["durable"]) for r in lines},
                    key=lambda g: (g[0], not g[1]))
    members = {g: [r for r in lines if (workloads.index(r["workload"]), r["durable"]) == g] for g in groups}
    width = 0.8 / max(len(m) for m in members.values())
    medians = [r["median"] for r in lines]
    top = max(r["max"] for r in lines)
    log = min(medians) > 0 and top / min(medians) > 20  # else the small bars would be slivers
    for x0, g in enumerate(groups):
        for k, r in enumerate(members[g]):
            label, color = series_of(r, sized)
            x = x0 + (k - (len(members[g]) - 1) / 2) * width
            ax.bar(x, r["median"], width * 0.9, color=color, label=label,
                   yerr=[[r["median"] - r["min"]], [r["max"] - r["median"]]], capsize=3, ecolor="#444444")
            q = ratio(r, celery_for(r, results)) if r["system"] == "baton" else None
            if q is not None:
                better = q < 1 if lower_is_better(r) else q > 1
                # Upright, so the labels of neighbouring narrow bars do not overlap.
                ax.annotate(ratio_label(q), (x, r["max"]), xytext=(0, 3), textcoords="offset points",
                            ha="center", va="bottom", fontsize=7.5, fontweight="bold", rotation=90,
                            color="#1b7837" if better else "#b2182b")
    ax.set_xticks(range(len(groups)))
    # One line per label, slanted: the groups are narrow and the labels long.
    ax.set_xticklabels([LABELS[workloads[w]].replace("\n", " ") + ((", durable" if d else ", no-durable") if split else "")
                        for w, d in groups], rotation=25, ha="right", fontsize=8.5)
    if log:  # bars rise from a power of ten, so their heights still compare
        ax.set_yscale("log")
        ax.set_ylim(10 ** math.floor(math.log10(min(r["min"] for r in lines))), top * 3)
    else:
        ax.set_ylim(0, top * 1.15)
    units = " or ".join(dict.fromkeys(r["unit"] for r in lines))
    ax.set_ylabel(f"{units}{' (log scale)' if log else ''}")
    ax.set_title(f"{title} ({'lower' if lower_is_better(lines[0]) else 'higher'} is better)")
    ax.grid(axis="y", alpha=0.3, which="both" if log else "major")
    ax.set_axisbelow(True)


def chart(results: List[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    drawn = [r for r in results if r["workload"] in THROUGHPUT + LATENCY]
    sizes = sorted({(r["procs"], r["concurrency"]) for r in drawn})
    sized = len(sizes) > 1
    fig, (left, right) = plt.subplots(1, 2, figsize=(15, 7.5), gridspec_kw={"width_ratios": [4, 3]})
    panel(left, drawn, THROUGHPUT, "Throughput, end to end", sized)
    panel(right, drawn, LATENCY, "Submit-to-start latency", sized)
    legend = {series_of(r, sized)[0]: series_of(r, sized)[1] for r in sorted(drawn, key=series_order)}
    handles = [plt.Rectangle((0, 0), 1, 1, color=color) for color in legend.values()]
    # Long labels (PostgreSQL, Celery's load) fit two to a row.
    columns = min(2 if max(len(label) for label in legend) > 60 else 3, len(legend))
    fig.legend(handles, legend.keys(), loc="upper center", ncol=columns, frameon=False)
    size = "" if sized else f"{sizes[0][0]} worker process(es) × concurrency {sizes[0][1]}. "
    fig.text(0.5, 0.005, f"{size}Bars: median of runs, whiskers: min–max; labels: Baton/Celery "
             "(green: Baton better).", ha="center", va="bottom", fontsize=9, color="#444444")
    rows = math.ceil(len(legend) / columns)
    fig.tight_layout(rect=(0, 0.04, 1, 0.97 - 0.035 * rows))  # the legend's rows above the panels
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results", help="JSON lines from bench/python/bench.py and the Rust bench")
    p.add_argument("--chart", metavar="PNG", help="write the chart here")
    p.add_argument("--markdown", metavar="MD", help="write the table as Markdown here")
    p.add_argument("--summary-chart", metavar="PNG",
                   help="write a chart of the defaults-against-defaults lines alone here (bench.py --defaults)")
    args = p.parse_args(argv)
    results = load(args.results)
    if not results:
        print(f"no results in {args.results}", file=sys.stderr)
        return 1
    header, table = rows(results)
    print(text_table(header, table))
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(markdown(results, header, table))
    if args.chart:
        chart(results, args.chart)
    defaults = [r for r in results if r.get("defaults")]
    if args.summary_chart and defaults:
        chart(defaults, args.summary_chart)
    return 0


if __name__ == "__main__":
    sys.exit(main())
