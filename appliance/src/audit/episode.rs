//! The episode marker: every refusal to append over a store that does not extend the signed
//! head is noted in `{data_dir}/audit-head-mismatch.json`, beside the head, until the log
//! records it (see `super::continuity`). A missing store is noted here too, by the store's
//! own open path, which is why this stands apart from the checks that read the store.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::head::{HeadFile, vouched};
use crate::error::discontinuity::{Discontinuity, Kind};
use crate::time::now_us;

/// The marker's name, in the data directory beside `audit-head.json`.
pub const MARKER_FILE: &str = "audit-head-mismatch.json";

/// Names kept in a marker's `seen_by`, and the length of each: enough to tell the services
/// apart without letting the marker grow.
const MAX_SEEN_BY: usize = 16;
const MAX_NAME_LEN: usize = 64;

/// What the marker holds: the first and the latest refusal, how many, and by whom.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Episode {
    pub first_seen_us: i64,
    pub last_seen_us: i64,
    pub refusals: u64,
    pub first: Discontinuity,
    pub last: Discontinuity,
    pub seen_by: Vec<String>,
}

fn marker_path(head: &HeadFile) -> PathBuf {
    head.path().with_file_name(MARKER_FILE)
}

/// The name this process runs under, for a marker's `seen_by`.
pub fn process_name() -> String {
    std::env::args_os()
        .next()
        .and_then(|arg0| {
            Path::new(&arg0)
                .file_name()
                .map(|name| name.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned())
}

/// Adds a refusal to the marker, creating it on the first. Best effort: the refusal itself
/// is what protects the log; a marker that cannot be written is logged.
pub fn note(head: &HeadFile, found: &Discontinuity, who: &str) {
    let path = marker_path(head);
    let now = now_us();
    let mut episode = fs::read(&path)
        .ok()
        .and_then(|bytes| serde_json::from_slice::<Episode>(&bytes).ok())
        .unwrap_or_else(|| Episode {
            first_seen_us: now,
            last_seen_us: now,
            refusals: 0,
            first: found.clone(),
            last: found.clone(),
            seen_by: Vec::new(),
        });
    episode.last_seen_us = now;
    episode.refusals = episode.refusals.saturating_add(1);
    episode.last = found.clone();
    let who: String = who.chars().take(MAX_NAME_LEN).collect();
    if !episode.seen_by.contains(&who) && episode.seen_by.len() < MAX_SEEN_BY {
        episode.seen_by.push(who);
    }
    if let Err(err) = write_marker(&path, &episode) {
        tracing::warn!(error = %err, path = %path.display(), "could not note the audit head mismatch");
    }
}

/// Notes that the store was found missing on a box whose head vouches for records. Called
/// by the store's open path; says nothing on a box never initialised (no head).
pub fn note_store_missing(data_dir: &Path, store: &str) {
    let head = HeadFile::in_dir(data_dir);
    let Ok(Some(state)) = head.read() else {
        return;
    };
    let (seq, hash) = vouched(&state.committed, state.pending.as_ref(), i64::MIN);
    if seq == 0 {
        return;
    }
    let found = Discontinuity {
        kind: Kind::StoreMissing,
        head_seq: Some(seq),
        head_hash: Some(hash),
        store_seq: None,
        store_hash: None,
        detail: store.to_owned(),
    };
    note(&head, &found, &process_name());
}

fn write_marker(path: &Path, episode: &Episode) -> std::io::Result<()> {
    let json = serde_json::to_vec_pretty(episode)?;
    // Per-process name: several processes may refuse at once, and each rename is whole.
    let tmp = path.with_extension(format!("json.{}.tmp", std::process::id()));
    let _ = fs::remove_file(&tmp);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o660)
        .open(&tmp)?;
    file.write_all(&json)?;
    file.sync_all()?;
    fs::rename(&tmp, path)
}

/// The marker's content as an event's details, if there is a marker. One that does not
/// parse still counts: its episode is recorded as unreadable rather than dropped.
pub fn pending_episode(head: &HeadFile) -> Option<serde_json::Value> {
    let bytes = match fs::read(marker_path(head)) {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return None,
        Err(err) => return Some(serde_json::json!({ "marker_unreadable": err.to_string() })),
    };
    Some(match serde_json::from_slice::<Episode>(&bytes) {
        Ok(episode) => serde_json::json!({
            "first_seen": crate::time::format_us(episode.first_seen_us),
            "last_seen": crate::time::format_us(episode.last_seen_us),
            "refusals": episode.refusals,
            "first": episode.first,
            "last": episode.last,
            "seen_by": episode.seen_by,
        }),
        Err(err) => serde_json::json!({ "marker_unreadable": err.to_string() }),
    })
}

/// Removes the marker once its episode is in the log, unless a refusal changed it since
/// (then it stays, and the next append records it again: a duplicate, never a loss).
pub fn clear(head: &HeadFile, recorded: &serde_json::Value) {
    if pending_episode(head).as_ref() == Some(recorded)
        && let Err(err) = fs::remove_file(marker_path(head))
        && err.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(error = %err, "could not remove the audit head mismatch marker");
    }
}
