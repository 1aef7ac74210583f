//! Firmware uploads being verified: each job's progress as the updater reports it, then its
//! outcome, kept for the upload's progress page ([`crate::firmware::upload`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use appliance::firmware::Firmware;
use appliance::models::UserId;
use updater::progress::Progress;

use crate::error::WebError;

/// Finished jobs are kept this long for their result page.
const KEEP_JOBS_US: i64 = 3600 * 1_000_000;

/// What a finished verification came to.
#[derive(Debug, Clone)]
pub(crate) enum JobOutcome {
    Stored(Box<Firmware>),
    /// The refusal's code and reason, as audited.
    Refused {
        code: String,
        reason: String,
    },
}

/// One upload being verified: progress as the updater reports it, then the outcome.
#[derive(Debug)]
pub(crate) struct Job {
    pub(crate) owner: UserId,
    pub(crate) model: String,
    pub(crate) file: String,
    pub(crate) started_us: i64,
    pub(crate) phase: Mutex<String>,
    pub(crate) total: AtomicU64,
    pub(crate) done: AtomicU64,
    pub(crate) outcome: Mutex<Option<JobOutcome>>,
}

impl Job {
    pub(crate) fn outcome(&self) -> Option<JobOutcome> {
        self.outcome
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    pub(crate) fn finish(&self, outcome: JobOutcome) {
        *self
            .outcome
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(outcome);
    }
}

/// The updater's progress reports, kept where the progress page reads them.
pub(crate) struct JobProgress(pub(crate) Arc<Job>);

impl Progress for JobProgress {
    fn start(&self, phase: &str, total_bytes: u64) {
        *self
            .0
            .phase
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = phase.to_owned();
        self.0.total.store(total_bytes, Ordering::Relaxed);
        self.0.done.store(0, Ordering::Relaxed);
    }

    fn advance(&self, bytes: u64) {
        self.0.done.fetch_add(bytes, Ordering::Relaxed);
    }

    fn finish(&self) {}
}

/// The portal's verification jobs, by an unguessable id; each visible to its owner only.
#[derive(Debug, Default)]
pub struct Jobs {
    jobs: Mutex<HashMap<String, Arc<Job>>>,
}

impl Jobs {
    pub(crate) fn running(&self) -> usize {
        self.lock()
            .values()
            .filter(|job| job.outcome().is_none())
            .count()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Job>>> {
        self.jobs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn add(&self, job: Arc<Job>, now_us: i64) -> Result<String, WebError> {
        let mut id = [0u8; 16];
        openssl::rand::rand_bytes(&mut id)
            .map_err(|err| WebError::Internal(format!("random job id: {err}")))?;
        let id = hex::encode(id);
        let mut jobs = self.lock();
        jobs.retain(|_, job| job.outcome().is_none() || now_us - job.started_us < KEEP_JOBS_US);
        jobs.insert(id.clone(), job);
        Ok(id)
    }

    pub(crate) fn find(&self, id: &str, owner: UserId) -> Option<Arc<Job>> {
        self.lock()
            .get(id)
            .filter(|job| job.owner == owner)
            .cloned()
    }
}
