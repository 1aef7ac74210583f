//! The single writer: one thread that owns the store's write side and commits every
//! concurrent request's readings together (group commit), then answers each request.
//!
//! A request is answered only after its transaction committed, so an acknowledged reading
//! is durable (SQLite `synchronous = FULL`, PostgreSQL's default synchronous commit). After
//! each commit the writer evaluates alerts for what it stored, and every
//! `silent_check_seconds` it looks for silent devices: alerts have one writer too. With
//! `retention_days` or a size limit set (`retention_max_mib`, or the portal's), every
//! `retention_check_seconds` it deletes the oldest readings past either
//! ([`appliance::retention`]), one audited chunk at a time between group commits. Every
//! second, and whenever it is idle, it adds what it stored to the minute, hour and day
//! rollups ([`appliance::rollups`]), which pruning leaves in place; minute rollups are
//! pruned by age with the same check. Once the period readings were received in has ended
//! (`seal_period_seconds`, a UTC day by default), it seals them into compressed blocks
//! ([`appliance::blocks`]), one series at a time, in the same idle time.
//!
//! Each request comes with the credential its sender authenticated with, and the group's
//! transaction first checks and holds every one of them ([`Credential::hold`]): a request
//! whose credential was revoked, rotated away or whose certificate was revoked since its
//! sender authenticated is refused ([`Refused::Revoked`]) and nothing of it is stored. A
//! revoke commits either before that check or after the group's commit, never between.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use appliance::alerts::{self, AlertChange};
use appliance::connectors;
use appliance::devices::Credential;
use appliance::ids::DeviceId;
use appliance::readings::{self, DeviceState, NewReading};
use appliance::time::now_us;
use appliance::{Actor, Appliance, Error};
use appliance::{blocks, retention, rollups, settings};
use diesel::Connection;
use tokio::sync::{mpsc, oneshot};

use crate::decode::Accepted;
use crate::error::Refused;

/// How one request's readings fared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Stored {
    /// Readings in the request.
    pub accepted: usize,
    /// Newly stored; the rest were already stored (a retry) and were skipped.
    pub stored: usize,
}

struct Job {
    batch: Accepted,
    /// What the sender authenticated with, checked again in the storing transaction.
    credential: Credential,
    reply: oneshot::Sender<Result<Stored, Refused>>,
}

/// The handle request handlers hold. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Writer {
    jobs: mpsc::Sender<Job>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Job({} readings)", self.batch.readings.len())
    }
}

impl Writer {
    /// Starts the writer thread.
    pub fn start(app: Appliance) -> std::io::Result<Writer> {
        let (jobs, receiver) = mpsc::channel(1024);
        std::thread::Builder::new()
            .name("ingest-writer".into())
            .spawn(move || run(app, receiver))?;
        Ok(Writer { jobs })
    }

    /// Stores the batch, if `credential` still authenticates its sender when the batch is
    /// committed, and returns once it is durable. An error means nothing was stored.
    pub async fn store(&self, batch: Accepted, credential: Credential) -> Result<Stored, Refused> {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(Job {
                batch,
                credential,
                reply,
            })
            .await
            .map_err(|_| Refused::Unavailable)?;
        answer.await.map_err(|_| Refused::Unavailable)?
    }
}

fn run(app: Appliance, mut receiver: mpsc::Receiver<Job>) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            tracing::error!(error = %err, "writer cannot start");
            return;
        }
    };
    let max_readings = app.config.ingest.group_commit_readings;
    let silent_every = Duration::from_secs(app.config.ingest.silent_check_seconds);
    let actor = Actor::System("ingest".into());
    let mut next_silent_check = Instant::now();
    let retention_days = app.config.ingest.retention_days;
    let prune_every = Duration::from_secs(app.config.ingest.retention_check_seconds);
    let mut next_prune = Instant::now();
    let mut next_rollup = Instant::now();
    let seal_period = i64::try_from(app.config.ingest.seal_period_seconds)
        .unwrap_or(86_400)
        .saturating_mul(1_000_000);
    let mut next_seal = Instant::now();
    loop {
        let next_timer = next_silent_check
            .min(next_prune)
            .min(next_rollup)
            .min(next_seal);
        let wait = next_timer.saturating_duration_since(Instant::now());
        let first = runtime.block_on(async { tokio::time::timeout(wait, receiver.recv()).await });
        match first {
            Ok(None) => return,
            Ok(Some(job)) => {
                let mut group = vec![job];
                let mut count = group[0].batch.readings.len();
                while count < max_readings {
                    match receiver.try_recv() {
                        Ok(job) => {
                            count += job.batch.readings.len();
                            group.push(job);
                        }
                        Err(_) => break,
                    }
                }
                commit_group(&app, &actor, group);
            }
            Err(_elapsed) => {}
        }
        if Instant::now() >= next_silent_check {
            next_silent_check = Instant::now() + silent_every;
            let now = now_us();
            let changed = app
                .store
                .conn()
                .and_then(|mut conn| alerts::decide_silent(&mut conn, now))
                .and_then(|changes| alerts::apply(&app.audit, &actor, &changes, now));
            if let Err(err) = changed {
                tracing::error!(error = %err, "silent-device check failed");
            }
        }
        if Instant::now() >= next_rollup {
            let rolled = app
                .store
                .conn()
                .and_then(|mut conn| rollups::advance(&mut conn));
            // Behind, it goes on at once while no request waits: rollups take the writer's
            // idle time, so under more load than it can take they lag (and pruning waits
            // for them) rather than slowing acknowledgements.
            next_rollup = match rolled {
                Ok(true) if receiver.is_empty() => Instant::now(),
                Ok(true) => Instant::now() + ROLLUP_EVERY,
                Ok(false) => Instant::now() + ROLLUP_EVERY,
                Err(err) => {
                    tracing::error!(error = %err, "rolling up readings failed");
                    Instant::now() + ROLLUP_EVERY
                }
            };
        }
        if Instant::now() >= next_seal {
            // Readings received in a period that has ended: a UTC day by default.
            let now = now_us();
            let received_before = now - now.rem_euclid(seal_period);
            let sealed = app
                .store
                .conn()
                .and_then(|mut conn| blocks::seal_next(&mut conn, received_before));
            // Like rollups, sealing takes the writer's idle time, and one block a second
            // when it is busy.
            next_seal = match sealed {
                Ok(0) => Instant::now() + SEAL_IDLE_CHECK,
                Ok(_) if receiver.is_empty() => Instant::now(),
                Ok(_) => Instant::now() + ROLLUP_EVERY,
                Err(err) => {
                    tracing::error!(error = %err, "sealing readings failed");
                    Instant::now() + SEAL_IDLE_CHECK
                }
            };
        }
        if Instant::now() >= next_prune {
            let by_age = retention_days.map_or(Ok(0), |days| {
                retention::prune_by_age(&app.audit, &actor, days, now_us())
            });
            // The budget is read afresh each time: an administrator may change it in the portal.
            let by_size = app
                .store
                .conn()
                .and_then(|mut conn| settings::telemetry_budget_bytes(&mut conn, &app.config))
                .and_then(|budget| match budget {
                    Some(bytes) => retention::prune_by_size(&app.audit, &actor, bytes),
                    None => Ok(0),
                });
            let minutes = rollups::prune_minutes(&app.audit, &actor, now_us());
            // A chunk deleted means more may be due: go on after the queued requests.
            next_prune = match (by_age, by_size, minutes) {
                (Ok(0), Ok(0), Ok(0)) => Instant::now() + prune_every,
                (Ok(_), Ok(_), Ok(_)) => Instant::now(),
                (Err(err), _, _) | (_, Err(err), _) | (_, _, Err(err)) => {
                    tracing::error!(error = %err, "pruning readings failed");
                    Instant::now() + prune_every
                }
            };
        }
    }
}

/// How often the writer looks for readings to seal when it last found none.
const SEAL_IDLE_CHECK: Duration = Duration::from_secs(10);

/// How often the writer rolls up what it stored ([`rollups::advance`]); so long-range
/// charts trail the newest readings by about this much.
const ROLLUP_EVERY: Duration = Duration::from_secs(1);

fn commit_group(app: &Appliance, actor: &Actor, group: Vec<Job>) {
    let seen_at = now_us();
    let result = app.store.conn().and_then(|mut conn| {
        conn.transaction(|conn| {
            // First, before anything is read: see `Credential::hold`.
            let mut held: BTreeMap<&Credential, bool> = BTreeMap::new();
            for job in &group {
                if !held.contains_key(&job.credential) {
                    let live = job.credential.hold(conn, seen_at)?;
                    held.insert(&job.credential, live);
                }
            }
            let mut outcomes = Vec::with_capacity(group.len());
            let mut states: BTreeMap<DeviceId, DeviceState> = BTreeMap::new();
            let mut for_connectors: Vec<&NewReading> = Vec::new();
            for job in &group {
                if held.get(&job.credential) != Some(&true) {
                    outcomes.push(Err(Refused::Revoked));
                    continue;
                }
                let stored = readings::insert_new(conn, &job.batch.readings)?;
                // A retried batch stored nothing new and is not sent again. A batch that is
                // partly a retry is sent whole: receivers deduplicate on (device, seq).
                if stored > 0 {
                    for_connectors.extend(job.batch.readings.iter());
                }
                outcomes.push(Ok(Stored {
                    accepted: job.batch.readings.len(),
                    stored,
                }));
                for reading in &job.batch.readings {
                    states.entry(reading.device_id).or_default();
                }
                for (device, state) in &job.batch.states {
                    let entry = states.entry(*device).or_default();
                    if state.firmware_version.is_some() {
                        entry.firmware_version.clone_from(&state.firmware_version);
                    }
                    entry.battery_pct = state.battery_pct.or(entry.battery_pct);
                    entry.signal_dbm = state.signal_dbm.or(entry.signal_dbm);
                }
            }
            for (device, state) in &states {
                readings::update_state(conn, *device, seen_at, state)?;
            }
            connectors::enqueue_readings(conn, &for_connectors, seen_at)?;
            Ok::<_, Error>(outcomes)
        })
    });
    let mut touched: BTreeMap<DeviceId, BTreeSet<String>> = BTreeMap::new();
    let mut answers = Vec::new();
    match result {
        Ok(outcomes) => {
            for (job, outcome) in group.into_iter().zip(outcomes) {
                if outcome.is_err() {
                    let _ = job.reply.send(outcome);
                    continue;
                }
                for NewReading {
                    device_id, metric, ..
                } in &job.batch.readings
                {
                    touched
                        .entry(*device_id)
                        .or_default()
                        .insert(metric.clone());
                }
                for device in job.batch.states.keys() {
                    touched.entry(*device).or_default();
                }
                answers.push((job.reply, outcome));
            }
        }
        Err(err) => {
            tracing::error!(error = %err, code = err.code(), jobs = group.len(), "group commit failed; nothing stored");
            let refused = if err.is_storage_full() {
                Refused::StorageFull
            } else {
                Refused::Unavailable
            };
            for job in group {
                let _ = job.reply.send(Err(refused));
            }
            return;
        }
    }
    let changed = app
        .store
        .conn()
        .and_then(|mut conn| alerts::decide_for_readings(&mut conn, &touched))
        .and_then(|changes: Vec<AlertChange>| alerts::apply(&app.audit, actor, &changes, seen_at));
    if let Err(err) = changed {
        tracing::error!(error = %err, "alert evaluation failed");
    }
    // Answered only now: the alerts an acknowledged reading raises are stored (with their
    // outbox rows) before the device hears back, so a crash just after an answer loses none.
    for (reply, outcome) in answers {
        let _ = reply.send(outcome);
    }
}
