//! Figures: percentiles within a run, medians across runs, and the record
//! each figure is written as (one JSON line, the schema `bench/report.py`
//! reads for Baton and Celery alike).

use std::io::Write;
use std::time::Duration;

use serde_json::json;

/// The `p`th percentile (nearest rank) of sorted values.
pub fn percentile(sorted: &[Duration], p: usize) -> Duration {
    assert!(!sorted.is_empty(), "percentile of nothing");
    let rank = (sorted.len() * p).div_ceil(100).max(1);
    sorted[rank - 1]
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// What a figure is about; the keys of a JSON record.
#[derive(Clone, Debug)]
pub struct Label {
    pub workload: String,
    /// How work was submitted: "batch", "loop" (pipelined), "sync" or "-".
    pub producer: &'static str,
    pub durable: bool,
    pub procs: usize,
    pub concurrency: u32,
    /// Work items per run (tasks, chains or hand-offs).
    pub tasks: usize,
    pub unit: &'static str,
}

/// One figure measured in several runs.
pub struct Figure {
    pub label: Label,
    pub runs: Vec<f64>,
}

/// The store every broker of this run keeps its data in ("sled", or
/// "postgres" with `--store`), shown with each figure.
static STORE: std::sync::OnceLock<&'static str> = std::sync::OnceLock::new();

/// Names the store of this run's brokers (once, at start).
pub fn set_store(name: &'static str) {
    let _ = STORE.set(name);
}

fn store() -> &'static str {
    STORE.get().copied().unwrap_or("sled")
}

impl Figure {
    pub fn median(&self) -> f64 {
        let mut sorted = self.runs.clone();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        if n % 2 == 1 {
            sorted[n / 2]
        } else {
            (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
        }
    }

    fn min(&self) -> f64 {
        self.runs.iter().copied().fold(f64::INFINITY, f64::min)
    }

    fn max(&self) -> f64 {
        self.runs.iter().copied().fold(f64::NEG_INFINITY, f64::max)
    }

    /// The human line.
    pub fn line(&self) -> String {
        let l = &self.label;
        format!(
            "{:<24} {:<6} {:<10} {:>12.3} {:<9} [{:.3} .. {:.3}] ({} runs, {} items, {}x{})",
            l.workload,
            l.producer,
            match (l.durable, store()) {
                (true, "sled") => "durable".to_owned(),
                (false, "sled") => "no-durable".to_owned(),
                (true, other) => format!("durable/{other}"),
                (false, other) => format!("no-durable/{other}"),
            },
            self.median(),
            l.unit,
            self.min(),
            self.max(),
            self.runs.len(),
            l.tasks,
            l.procs,
            l.concurrency,
        )
    }

    /// The JSON record.
    pub fn record(&self) -> serde_json::Value {
        let l = &self.label;
        json!({
            "system": "baton",
            "workload": l.workload,
            "producer": l.producer,
            "durable": l.durable,
            "store": store(),
            "workers": "rust",
            "procs": l.procs,
            "concurrency": l.concurrency,
            "tasks": l.tasks,
            "unit": l.unit,
            "runs": self.runs,
            "median": self.median(),
            "min": self.min(),
            "max": self.max(),
        })
    }
}

/// Several figures measured together, one value of each per run.
pub struct Rows {
    rows: Vec<(&'static str, &'static str, Vec<f64>)>,
}

impl Rows {
    /// Figures of these (workload, unit) pairs, with no run yet.
    pub fn new(figures: &[(&'static str, &'static str)]) -> Self {
        Rows {
            rows: figures.iter().map(|&(w, u)| (w, u, Vec::new())).collect(),
        }
    }

    /// One run's values, in the order of [`Rows::new`].
    pub fn push(&mut self, values: impl IntoIterator<Item = f64>) {
        for (row, v) in self.rows.iter_mut().zip(values) {
            row.2.push(v);
        }
    }

    /// Puts every figure, labelled by `label(workload, unit)`.
    pub fn put(
        self,
        sink: &mut Sink,
        label: impl Fn(&str, &'static str) -> Label,
    ) -> anyhow::Result<()> {
        for (workload, unit, runs) in self.rows {
            sink.put(&Figure {
                label: label(workload, unit),
                runs,
            })?;
        }
        Ok(())
    }
}

/// Prints figures as they come and appends their records to a file.
pub struct Sink {
    out: Option<std::fs::File>,
}

impl Sink {
    pub fn new(path: Option<&std::path::Path>) -> anyhow::Result<Self> {
        let out = match path {
            Some(p) => Some(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)?,
            ),
            None => None,
        };
        Ok(Sink { out })
    }

    pub fn put(&mut self, figure: &Figure) -> anyhow::Result<()> {
        println!("{}", figure.line());
        if let Some(out) = &mut self.out {
            writeln!(out, "{}", figure.record())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&v, 50), Duration::from_millis(50));
        assert_eq!(percentile(&v, 99), Duration::from_millis(99));
        assert_eq!(percentile(&v[..1], 99), Duration::from_millis(1));
    }

    #[test]
    fn the_median_of_an_even_count_is_the_mean_of_the_middle_two() {
        let label = Label {
            workload: "w".into(),
            producer: "-",
            durable: true,
            procs: 1,
            concurrency: 1,
            tasks: 1,
            unit: "x",
        };
        let f = Figure {
            label,
            runs: vec![4.0, 1.0, 3.0, 2.0],
        };
        assert_eq!(f.median(), 2.5);
        assert_eq!((f.min(), f.max()), (1.0, 4.0));
    }
}
