//! `baton submit`: a chain from a JSON file (or stdin), or one task from
//! flags.
//!
//! The file format is `SubmitChainRequest` in JSON, with arguments and
//! keyword arguments as JSON values rather than strings (docs/operations.md
//! has the reference):
//!
//! ```json
//! {"steps": [{"name": "demo.slow", "args": [10], "immutable": true},
//!            {"name": "demo.fast", "args": [10], "immutable": true}],
//!  "on_success": [{"name": "demo.set_ok", "args": [10], "immutable": true}],
//!  "on_failure": [{"name": "demo.set_erred", "args": [10]}],
//!  "heavy": false, "context": {"user": "alice"}}
//! ```
//!
//! Unknown fields are refused, so a misspelt option cannot be dropped
//! silently.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use baton::pb;
use serde::Deserialize;
use serde_json::Value;

use super::output::{self, print_json};
use super::{Conn, usage};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub chain: ChainArgs,
    /// Wait for the chain to end, showing its events; exit 1 unless it
    /// succeeded.
    #[arg(long)]
    pub wait: bool,
    /// With --wait: give up after this many seconds (the chain goes on).
    #[arg(long, value_parser = super::seconds, requires = "wait")]
    pub timeout: Option<Duration>,
    #[command(flatten)]
    pub conn: Conn,
}

/// What chain to submit: one task from flags, or a file (`baton submit`,
/// `baton schedule add`).
#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["task", "file"])))]
pub struct ChainArgs {
    /// One task to submit as a one-step chain (its name as workers register
    /// it).
    pub task: Option<String>,
    /// A chain in JSON ("-" reads stdin); see docs/operations.md for the
    /// format.
    #[arg(short, long, conflicts_with_all = ["task", "args", "kwargs", "queue"])]
    pub file: Option<PathBuf>,
    /// The task's positional arguments: a JSON array.
    #[arg(long, default_value = "[]")]
    pub args: String,
    /// The task's keyword arguments: a JSON object.
    #[arg(long, default_value = "{}")]
    pub kwargs: String,
    /// Route the task to this queue.
    #[arg(long)]
    pub queue: Option<String>,
    /// Route every step to the heavy queue (unless a step names a queue).
    #[arg(long)]
    pub heavy: bool,
    /// Context entry KEY=VALUE every step sees (repeatable).
    #[arg(long = "context", value_name = "KEY=VALUE", value_parser = key_value)]
    pub context: Vec<(String, String)>,
    /// A repeated submit with this key returns the first chain.
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// Skipped while a chain with this key is queued or running.
    #[arg(long)]
    pub unique_key: Option<String>,
}

fn key_value(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{text:?} is not KEY=VALUE"))
}

/// A chain as the JSON file gives it.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct ChainFile {
    pub steps: Vec<SignatureFile>,
    #[serde(default)]
    pub on_success: Vec<SignatureFile>,
    #[serde(default)]
    pub on_failure: Vec<SignatureFile>,
    #[serde(default)]
    pub heavy: bool,
    #[serde(default)]
    pub context: BTreeMap<String, String>,
    #[serde(default)]
    pub idempotency_key: String,
    #[serde(default)]
    pub unique_key: String,
    #[serde(default)]
    pub deadline_unix_ms: u64,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct SignatureFile {
    /// A task name; for a group or an executor, a label (may be omitted).
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub args: Option<Value>,
    #[serde(default)]
    pub kwargs: Option<Value>,
    #[serde(default)]
    pub immutable: bool,
    #[serde(default)]
    pub options: Option<OptionsFile>,
    /// A group: its members, run side by side.
    #[serde(default)]
    pub members: Vec<SignatureFile>,
    /// A nested executor: a chain with its own callbacks.
    #[serde(default)]
    pub executor: Option<ExecutorFile>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct ExecutorFile {
    #[serde(default)]
    pub steps: Vec<SignatureFile>,
    #[serde(default)]
    pub on_success: Vec<SignatureFile>,
    #[serde(default)]
    pub on_failure: Vec<SignatureFile>,
}

fn signature_list(field: &str, sigs: Vec<SignatureFile>) -> anyhow::Result<Vec<pb::Signature>> {
    sigs.into_iter()
        .enumerate()
        .map(|(i, s)| s.into_signature(&format!("{field}[{i}]")))
        .collect()
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct OptionsFile {
    #[serde(default)]
    pub queue: String,
    #[serde(default)]
    pub heavy: bool,
    #[serde(default)]
    pub throttle: Option<ThrottleFile>,
    pub max_retries: Option<u32>,
    pub retry_backoff_ms: Option<u64>,
    pub retry_backoff_max_ms: Option<u64>,
    pub max_polls: Option<u32>,
    pub timeout_ms: Option<u64>,
    #[serde(default)]
    pub countdown_ms: u64,
    #[serde(default)]
    pub eta_unix_ms: u64,
    #[serde(default)]
    pub priority: i32,
    #[serde(default)]
    pub description: String,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct ThrottleFile {
    #[serde(default)]
    pub concurrency: u32,
    #[serde(default)]
    pub key: String,
    #[serde(default)]
    pub shared: bool,
    #[serde(default)]
    pub scope: Scope,
    /// A rate, as `"10/s"`, `"100/m"` (see `baton::parse_rate`).
    #[serde(default)]
    pub rate: Option<String>,
    /// Starts of the rate allowed at once (default 1).
    #[serde(default)]
    pub burst: u32,
}

#[derive(Deserialize, Debug, Default, Clone, Copy)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    #[default]
    Task,
    Chain,
}

impl ChainFile {
    /// Parses the file's text; errors name the line and column.
    ///
    /// # Errors
    /// When the text is not a chain in this format.
    pub fn parse(text: &str, source: &str) -> anyhow::Result<Self> {
        serde_json::from_str(text).map_err(|e| usage(format!("{source}: {e}")))
    }

    /// The request, with arguments checked to be an array and an object.
    ///
    /// # Errors
    /// Naming the field (`steps[1].args must be a JSON array`).
    pub fn into_request(self) -> anyhow::Result<pb::SubmitChainRequest> {
        let list = signature_list;
        if self.steps.is_empty() {
            return Err(usage("steps is empty: a chain needs at least one step"));
        }
        Ok(pb::SubmitChainRequest {
            steps: list("steps", self.steps)?,
            on_success: list("on_success", self.on_success)?,
            on_failure: list("on_failure", self.on_failure)?,
            heavy: self.heavy,
            context: self.context.into_iter().collect(),
            idempotency_key: self.idempotency_key,
            unique_key: self.unique_key,
            deadline_unix_ms: self.deadline_unix_ms,
            chain_id: String::new(),
        })
    }
}

impl SignatureFile {
    fn into_signature(self, field: &str) -> anyhow::Result<pb::Signature> {
        let composite = !self.members.is_empty() || self.executor.is_some();
        let args = match self.args {
            None if composite => String::new(),
            None => "[]".to_owned(),
            Some(v @ Value::Array(_)) => v.to_string(),
            Some(_) => return Err(usage(format!("{field}.args must be a JSON array"))),
        };
        let kwargs = match self.kwargs {
            None if composite => String::new(),
            None => "{}".to_owned(),
            Some(v @ Value::Object(_)) => v.to_string(),
            Some(_) => return Err(usage(format!("{field}.kwargs must be a JSON object"))),
        };
        Ok(pb::Signature {
            name: self.name,
            args,
            kwargs,
            immutable: self.immutable,
            options: self
                .options
                .map(|o| o.into_options(&format!("{field}.options")))
                .transpose()?,
            members: signature_list(&format!("{field}.members"), self.members)?,
            executor: match self.executor {
                None => None,
                Some(e) => Some(pb::Executor {
                    steps: signature_list(&format!("{field}.executor.steps"), e.steps)?,
                    on_success: signature_list(
                        &format!("{field}.executor.on_success"),
                        e.on_success,
                    )?,
                    on_failure: signature_list(
                        &format!("{field}.executor.on_failure"),
                        e.on_failure,
                    )?,
                }),
            },
        })
    }
}

impl OptionsFile {
    fn into_options(self, field: &str) -> anyhow::Result<pb::Options> {
        let throttle = match self.throttle {
            None => None,
            Some(t) => {
                let rate = match &t.rate {
                    None => None,
                    Some(text) => {
                        let mut rate = baton::parse_rate(text)
                            .map_err(|e| usage(format!("{field}.throttle.{e}")))?;
                        rate.burst = t.burst;
                        Some(rate)
                    }
                };
                Some(pb::Throttle {
                    concurrency: t.concurrency,
                    key: t.key,
                    shared: t.shared,
                    scope: match t.scope {
                        Scope::Task => pb::ThrottleScope::Task,
                        Scope::Chain => pb::ThrottleScope::Chain,
                    } as i32,
                    rate,
                })
            }
        };
        Ok(pb::Options {
            queue: self.queue,
            heavy: self.heavy,
            throttle,
            max_retries: self.max_retries,
            retry_backoff_ms: self.retry_backoff_ms,
            retry_backoff_max_ms: self.retry_backoff_max_ms,
            max_polls: self.max_polls,
            timeout_ms: self.timeout_ms,
            countdown_ms: self.countdown_ms,
            eta_unix_ms: self.eta_unix_ms,
            priority: self.priority,
            description: self.description,
        })
    }
}

/// The request the arguments describe.
///
/// # Errors
/// [`Usage`](super::Usage) for a file that cannot be read or parsed, or
/// arguments that are not JSON.
pub fn request(args: &ChainArgs) -> anyhow::Result<pb::SubmitChainRequest> {
    let mut request = match (&args.file, &args.task) {
        (Some(path), _) => {
            let (text, source) = if path.as_os_str() == "-" {
                let mut text = String::new();
                std::io::stdin()
                    .read_to_string(&mut text)
                    .map_err(|e| usage(format!("reading the chain from stdin: {e}")))?;
                (text, "stdin".to_owned())
            } else {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| usage(format!("reading {}: {e}", path.display())))?;
                (text, path.display().to_string())
            };
            ChainFile::parse(&text, &source)?.into_request()?
        }
        (None, Some(task)) => {
            let json = |flag: &str, text: &str| {
                serde_json::from_str::<Value>(text)
                    .map_err(|e| usage(format!("{flag} is not JSON: {e}")))
            };
            let signature = SignatureFile {
                name: task.clone(),
                args: Some(json("--args", &args.args)?),
                kwargs: Some(json("--kwargs", &args.kwargs)?),
                immutable: true,
                options: args.queue.clone().map(|queue| OptionsFile {
                    queue,
                    ..Default::default()
                }),
                members: Vec::new(),
                executor: None,
            };
            let sig = signature.into_signature("task").map_err(|e| {
                usage(
                    e.to_string()
                        .replace("task.args", "--args")
                        .replace("task.kwargs", "--kwargs"),
                )
            })?;
            pb::SubmitChainRequest {
                steps: vec![sig],
                ..Default::default()
            }
        }
        (None, None) => return Err(usage("give a TASK or --file FILE")),
    };
    request.heavy |= args.heavy;
    request.context.extend(args.context.iter().cloned());
    if let Some(key) = &args.idempotency_key {
        request.idempotency_key = key.clone();
    }
    if let Some(key) = &args.unique_key {
        request.unique_key = key.clone();
    }
    Ok(request)
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let request = request(&args.chain)?;
    let conn = &args.conn;
    let client = conn.connect().await?;
    let submitted = client
        .submit_request(request)
        .await
        .map_err(|e| conn.error(e))?;
    let dedup = match submitted.dedup {
        pb::Dedup::IdempotencyKey => "idempotency_key",
        pb::Dedup::UniqueKey => "unique_key",
        pb::Dedup::ChainId => "chain_id",
        _ => "",
    };
    if !args.wait {
        if conn.json {
            print_json(&serde_json::json!({"chain_id": submitted.chain_id, "dedup": dedup}));
        } else if dedup.is_empty() {
            println!("{}", submitted.chain_id);
        } else {
            println!(
                "{} (not stored again: an earlier chain has the same {})",
                submitted.chain_id,
                dedup.replace('_', " ")
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    if !conn.json {
        println!("submitted chain {}", submitted.chain_id);
    }
    let chain =
        super::chain::follow_for(args.timeout, &client, conn, &submitted.chain_id, !conn.json)
            .await?;
    if conn.json {
        print_json(&output::chain_json(&chain));
    }
    Ok(super::chain::ended(&chain))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_example_parses() {
        let text = r#"{"steps":[{"name":"demo.slow","args":[10],"immutable":true,
            "options":{"throttle":{"concurrency":1,"key":"vm:10","scope":"chain"},"max_retries":3}}],
            "on_success":[{"name":"demo.set_ok"}],"on_failure":[{"name":"demo.set_erred"}],
            "heavy":true,"context":{"user":"alice"}}"#;
        let request = ChainFile::parse(text, "t").unwrap().into_request().unwrap();
        assert_eq!(request.steps[0].args, "[10]");
        assert_eq!(request.on_success[0].kwargs, "{}");
        let options = request.steps[0].options.as_ref().unwrap();
        assert_eq!(options.max_retries, Some(3));
        assert_eq!(
            options.throttle.as_ref().unwrap().scope,
            pb::ThrottleScope::Chain as i32
        );
        assert!(request.heavy);
    }

    #[test]
    fn mistakes_are_named() {
        let e = ChainFile::parse(r#"{"steps":[{"name":"a","argz":[]}]}"#, "f.json").unwrap_err();
        assert!(e.to_string().contains("unknown field `argz`"), "{e}");
        assert!(e.is::<super::super::Usage>());
        let e = ChainFile::parse(r#"{"steps":[{"name":"a"},{"name":"b","args":{}}]}"#, "f")
            .unwrap()
            .into_request()
            .unwrap_err();
        assert_eq!(e.to_string(), "steps[1].args must be a JSON array");
    }
}
