//! Who leads, among several brokers on one PostgreSQL database: a lease
//! in the database with a fencing term (issue 21).
//!
//! **The lease.** One row of `baton_leader` (term, holder, advertised
//! address, `expires_at`). A broker takes it when it is absent or lapsed,
//! incrementing the term, in one statement; the leader renews it every
//! third of the lease. Expiry is judged by the **database's clock**
//! (`now()`), so the brokers' clocks do not matter. This is what River does
//! with its leadership terms: PostgreSQL is the distributed engine, Baton
//! writes no consensus of its own.
//!
//! **Fencing.** The lease alone cannot stop a leader that was paused past
//! its lease (SIGSTOP, a long GC-like stall, a VM migration) from writing
//! once it wakes. So every flush transaction of the leader's store reads
//! the term `FOR SHARE` and rolls back unless it is the one this broker was
//! elected with ([`crate::store::Fence`]); the takeover's `UPDATE` of the
//! term waits for the flushes in progress. A deposed broker's write fails
//! instead of landing, and nothing it acknowledged (acknowledgments follow
//! a committed flush) is missing from the new leader's store.
//!
//! **Stopping.** A leader stops serving (the broker exits with
//! [`Deposed`]) when a flush finds another term, when a renewal finds the
//! lease taken or lapsed, or when its own view of the lease (the time it
//! sent its last successful renewal, plus the lease) passes without a
//! renewal: by then the database may have handed the lease to another.
//! A supervisor (systemd, Kubernetes) restarts it, as a standby.
//!
//! **One thread.** The lease runs on a thread of its own with the
//! synchronous client (as the store's backend does), so a busy runtime
//! never delays a renewal; it publishes what it knows on a `watch`.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use postgres::Client;
use tokio::sync::watch;

use crate::store::{self, PgError};

/// Default of `--leader-lease-ms`.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(5);

/// What this broker knows of the lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum View {
    /// Not the leader. `leader`: the address the current leader
    /// advertises, while its lease runs; `None` when none is known.
    Standby { leader: Option<String> },
    /// The leader, elected with `term`, until `until` (local clock: when
    /// the last successful renewal was sent, plus the lease) unless renewed.
    Leading { term: i64, until: Instant },
    /// Was the leader and is no more (the lease was taken, or lapsed).
    Deposed(String),
}

/// The broker lost the lease or its fencing term: it must stop serving.
#[derive(Debug, thiserror::Error)]
#[error(
    "this broker is no longer the leader ({0}); it stops serving so that a supervisor restarts it as a standby"
)]
pub struct Deposed(pub String);

/// Checks an address to advertise: `HOST:PORT`, with a port number and
/// nothing a client could not dial (it travels in gRPC metadata).
///
/// # Errors
/// Saying what is wrong with it.
pub fn check_advertise(addr: &str) -> Result<(), String> {
    let Some((host, port)) = addr.rsplit_once(':') else {
        return Err(format!("{addr:?} is not HOST:PORT"));
    };
    if host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) {
        return Err(format!(
            "{addr:?} is not HOST:PORT (a port from 1 to 65535)"
        ));
    }
    if !addr.bytes().all(|b| b.is_ascii_graphic()) || addr.contains(',') || addr.contains('/') {
        return Err(format!(
            "{addr:?} is not HOST:PORT (no spaces, commas or slashes)"
        ));
    }
    Ok(())
}

/// Settings of the lease.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The database (`postgres://...`).
    pub url: String,
    /// Lease length.
    pub lease: Duration,
    /// What this broker tells clients to dial when it leads (host:port).
    pub advertise: String,
}

/// The lease's thread, seen from the broker: what it knows, and a way to
/// hand the lease back on a clean stop. Ends its thread when dropped.
pub struct Lease {
    view: watch::Receiver<View>,
    commands: mpsc::Sender<Command>,
    lease: Duration,
}

enum Command {
    /// Ends the lease now (a clean stop), so a standby takes over at once.
    Release(mpsc::SyncSender<()>),
}

impl Lease {
    /// Connects, brings the schema up to date (the lease's table is one of
    /// its migrations) and starts the lease's thread, which tries to take
    /// the lease at once. Blocks: call it on a blocking thread.
    ///
    /// # Errors
    /// When the database cannot be reached or its schema is too new.
    pub fn start(settings: Settings) -> Result<Self, store::Error> {
        let config = store::connect_config(&settings.url)?;
        let mut client = config
            .connect(postgres::NoTls)
            .map_err(|e| store::Error::Postgres(PgError::other(format!("connecting: {e}"))))?;
        store::migrate_schema(&mut client)?;
        let holder = format!(
            "{}:{}:{}",
            std::env::var("HOSTNAME").unwrap_or_else(|_| "broker".to_owned()),
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        );
        let (publish, view) = watch::channel(View::Standby { leader: None });
        let (commands, received) = mpsc::channel();
        let lease = settings.lease;
        let mut worker = Worker {
            config,
            client: Some(client),
            holder,
            settings,
            publish,
        };
        // The first try here: a broker that leads at once (alone, or the
        // first to start) opens its store before it serves, as on sled.
        let term = worker
            .try_acquire()
            .map_err(|e| store::Error::Postgres(PgError::other(e)))?;
        std::thread::Builder::new()
            .name("baton-lease".into())
            .spawn(move || worker.run(term, &received))
            .map_err(|e| {
                store::Error::Postgres(PgError::other(format!("starting the lease thread: {e}")))
            })?;
        Ok(Lease {
            view,
            commands,
            lease,
        })
    }

    /// This broker's term, if it leads now.
    pub fn term(&self) -> Option<i64> {
        match *self.view.borrow() {
            View::Leading { term, .. } => Some(term),
            _ => None,
        }
    }

    /// What the lease's thread knows, as it changes.
    pub fn view(&self) -> watch::Receiver<View> {
        self.view.clone()
    }

    /// The lease's length.
    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// Waits until this broker leads; returns its term. `Err` only when
    /// the thread ended.
    pub async fn leading(&self) -> Result<i64, Deposed> {
        let mut view = self.view.clone();
        loop {
            if let View::Leading { term, .. } = *view.borrow_and_update() {
                return Ok(term);
            }
            if view.changed().await.is_err() {
                return Err(Deposed("the lease thread ended".into()));
            }
        }
    }

    /// Completes when this broker, leading, must stop: the lease was taken
    /// or lapsed in its own view (see the module doc).
    pub async fn deposed(&self) -> Deposed {
        let mut view = self.view.clone();
        loop {
            let current = view.borrow_and_update().clone();
            match current {
                View::Deposed(why) => return Deposed(why),
                View::Leading { until, .. } => {
                    tokio::select! {
                        () = tokio::time::sleep_until(until.into()) => {
                            // A renewal may have landed just now.
                            if matches!(*view.borrow(), View::Leading { until: u, .. } if u > until) {
                                continue;
                            }
                            return Deposed(format!(
                                "the lease of {} ms lapsed without a renewal",
                                self.lease.as_millis()
                            ));
                        }
                        changed = view.changed() => if changed.is_err() {
                            return Deposed("the lease thread ended".into());
                        },
                    }
                }
                View::Standby { .. } => {
                    if view.changed().await.is_err() {
                        return Deposed("the lease thread ended".into());
                    }
                }
            }
        }
    }

    /// Hands the lease back (a clean stop, after the last flush), so a
    /// standby takes over without waiting for it to lapse. Best effort,
    /// bounded by a second. Blocks: call it on a blocking thread.
    pub fn release(&self) {
        let (reply, done) = mpsc::sync_channel(1);
        if self.commands.send(Command::Release(reply)).is_ok() {
            let _ = done.recv_timeout(Duration::from_secs(1));
        }
    }
}

/// The lease's thread.
struct Worker {
    config: postgres::Config,
    /// `None` after the connection failed, until connected again.
    client: Option<Client>,
    holder: String,
    settings: Settings,
    publish: watch::Sender<View>,
}

/// How often a standby looks at the lease: a tenth of it, between 50 and
/// 250 ms, so it takes over well within the lease plus one second.
fn poll_every(lease: Duration) -> Duration {
    (lease / 10).clamp(Duration::from_millis(50), Duration::from_millis(250))
}

impl Worker {
    /// Keeps trying to take the lease, or renewing it (`term`: this broker
    /// leads), until it is lost or handed back.
    fn run(mut self, mut term: Option<i64>, commands: &mpsc::Receiver<Command>) {
        let lease = self.settings.lease;
        let mut first = true;
        loop {
            let wait = match term {
                // Just taken in Lease::start: renew a third of a lease on.
                Some(_) if std::mem::take(&mut first) => lease / 3,
                None => match self.try_acquire() {
                    Ok(Some(t)) => {
                        term = Some(t);
                        lease / 3
                    }
                    Ok(None) => poll_every(lease),
                    Err(e) => {
                        tracing::warn!(cause = %e, "cannot read the leader's lease; trying again");
                        self.client = None;
                        poll_every(lease)
                    }
                },
                Some(t) => match self.renew(t) {
                    Ok(true) => lease / 3,
                    Ok(false) => {
                        let why = format!("the lease of term {t} was taken or lapsed");
                        tracing::error!("{why}");
                        self.publish.send_replace(View::Deposed(why));
                        return;
                    }
                    Err(e) => {
                        // The leader stops by itself when its view of the
                        // lease passes (Lease::deposed); until then, retry.
                        tracing::warn!(cause = %e, "renewing the leader's lease failed; trying again");
                        self.client = None;
                        poll_every(lease)
                    }
                },
            };
            first = false;
            match commands.recv_timeout(wait) {
                Ok(Command::Release(reply)) => {
                    if let Some(t) = term
                        && let Err(e) = self.release(t)
                    {
                        tracing::warn!(cause = %e, "could not hand the lease back");
                    }
                    let _ = reply.send(());
                    return;
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    fn client(&mut self) -> Result<&mut Client, String> {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            let mut client = self
                .config
                .connect(postgres::NoTls)
                .map_err(|e| format!("connecting: {e}"))?;
            // A renewal stuck past a third of the lease is as good as lost.
            let timeout = (self.settings.lease / 3).as_millis().max(1);
            client
                .batch_execute(&format!("SET statement_timeout = {timeout}"))
                .map_err(|e| format!("setting statement_timeout: {e}"))?;
            self.client = Some(client);
        }
        self.client
            .as_mut()
            .ok_or_else(|| "no connection".to_owned())
    }

    fn lease_ms(&self) -> i64 {
        i64::try_from(self.settings.lease.as_millis()).unwrap_or(i64::MAX)
    }

    /// Takes the lease if it is absent or lapsed (by the database's
    /// clock); otherwise publishes who holds it.
    fn try_acquire(&mut self) -> Result<Option<i64>, String> {
        let (holder, address, ms) = (
            self.holder.clone(),
            self.settings.advertise.clone(),
            self.lease_ms(),
        );
        let sent = Instant::now();
        let client = self.client()?;
        let taken = client
            .query_opt(
                "INSERT INTO baton_leader (id, term, holder, address, expires_at) \
                 VALUES (1, 1, $1, $2, now() + $3 * interval '1 millisecond') \
                 ON CONFLICT (id) DO UPDATE SET term = baton_leader.term + 1, \
                   holder = EXCLUDED.holder, address = EXCLUDED.address, \
                   expires_at = EXCLUDED.expires_at \
                 WHERE baton_leader.expires_at < now() \
                 RETURNING term",
                &[&holder, &address, &(ms as f64)],
            )
            .map_err(|e| format!("taking the lease: {e}"))?;
        if let Some(row) = taken {
            let term: i64 = row.get(0);
            tracing::info!(
                term,
                advertise = %self.settings.advertise,
                "took the leader's lease: this broker leads"
            );
            self.publish.send_replace(View::Leading {
                term,
                until: sent + self.settings.lease,
            });
            return Ok(Some(term));
        }
        let row = client
            .query_opt(
                "SELECT address FROM baton_leader WHERE id = 1 AND expires_at >= now()",
                &[],
            )
            .map_err(|e| format!("reading the lease: {e}"))?;
        let leader = row.map(|row| row.get::<_, String>(0));
        self.publish.send_if_modified(|view| {
            let new = View::Standby { leader };
            if *view == new {
                return false;
            }
            if let View::Standby { leader } = &new {
                tracing::info!(leader = ?leader, "standby: another broker leads");
            }
            *view = new;
            true
        });
        Ok(None)
    }

    /// Renews the lease of `term`; `false` when it was taken or lapsed.
    fn renew(&mut self, term: i64) -> Result<bool, String> {
        let ms = self.lease_ms();
        let sent = Instant::now();
        let client = self.client()?;
        let renewed = client
            .execute(
                "UPDATE baton_leader SET expires_at = now() + $2 * interval '1 millisecond' \
                 WHERE id = 1 AND term = $1 AND expires_at > now()",
                &[&term, &(ms as f64)],
            )
            .map_err(|e| format!("renewing the lease: {e}"))?;
        if renewed == 0 {
            return Ok(false);
        }
        self.publish.send_replace(View::Leading {
            term,
            until: sent + self.settings.lease,
        });
        Ok(true)
    }

    /// Ends the lease of `term` now.
    fn release(&mut self, term: i64) -> Result<(), String> {
        let client = self.client()?;
        client
            .execute(
                "UPDATE baton_leader SET expires_at = now() WHERE id = 1 AND term = $1",
                &[&term],
            )
            .map_err(|e| format!("releasing the lease: {e}"))?;
        tracing::info!(term, "handed the leader's lease back");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::store::testing::{Place, admin_sql};

    fn settings(url: &str, advertise: &str) -> Settings {
        Settings {
            url: url.to_owned(),
            lease: Duration::from_millis(600),
            advertise: advertise.to_owned(),
        }
    }

    /// The first broker leads, the second stands by naming it; when the
    /// first hands the lease back the second takes it with the next term;
    /// when the second's lease is taken from under it, it is deposed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_leads_one_stands_by_and_takes_over_with_the_next_term() {
        let Some(place) = Place::postgres() else {
            return;
        };
        let Place::Postgres { url, .. } = &place else {
            unreachable!()
        };
        let start = |advertise: &'static str| {
            let settings = settings(url, advertise);
            tokio::task::spawn_blocking(move || Lease::start(settings))
        };
        let first = start("h1:1").await.unwrap().unwrap();
        let term = first.term().expect("the first leads at once");
        let second = start("h2:2").await.unwrap().unwrap();
        assert_eq!(second.term(), None);
        assert_eq!(
            *second.view().borrow(),
            View::Standby {
                leader: Some("h1:1".into())
            }
        );
        // Renewals keep the first in the lead well past one lease.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(first.term(), Some(term));
        assert_eq!(second.term(), None);
        let first = Arc::new(first);
        let releasing = Arc::clone(&first);
        tokio::task::spawn_blocking(move || releasing.release())
            .await
            .unwrap();
        let taken = tokio::time::timeout(Duration::from_secs(2), second.leading())
            .await
            .expect("the second takes over")
            .unwrap();
        assert_eq!(taken, term + 1);
        // Someone takes the lease from the second: it is deposed.
        admin_sql(url, "UPDATE baton_leader SET term = term + 1, holder = 'x'").unwrap();
        let deposed = tokio::time::timeout(Duration::from_secs(2), second.deposed())
            .await
            .expect("deposed");
        assert!(deposed.0.contains("taken or lapsed"), "{deposed}");
    }

    #[test]
    fn an_advertised_address_is_host_and_port() {
        assert_eq!(check_advertise("10.0.0.1:7070"), Ok(()));
        assert_eq!(check_advertise("broker-1.internal:7070"), Ok(()));
        assert_eq!(check_advertise("[::1]:7070"), Ok(()));
        for bad in [
            "",
            "host",
            ":7070",
            "host:0",
            "host:x",
            "a b:1",
            "a,b:1",
            "http://a:1",
        ] {
            assert!(check_advertise(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn standbys_poll_often_enough_to_take_over_within_a_second_of_the_lease() {
        assert_eq!(
            poll_every(Duration::from_secs(5)),
            Duration::from_millis(250)
        );
        assert_eq!(
            poll_every(Duration::from_millis(200)),
            Duration::from_millis(50)
        );
        assert_eq!(
            poll_every(Duration::from_secs(1)),
            Duration::from_millis(100)
        );
    }
}
