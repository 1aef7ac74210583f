//! `plantgate audit verify` and `plantgate audit accept-restore`: how an operator sees that
//! the store no longer extends the signed audit head, and how an administrator accepts it.

use std::process::ExitCode;

use appliance::audit::continuity::{self, Discontinuity};
use appliance::audit::head::HeadFile;
use appliance::audit::verify::verify as verify_chain;
use appliance::config::Config;
use appliance::error::{Error, Result};
use appliance::keys::VerifyingKey;
use appliance::{Actor, Audit};

pub fn verify(config: &Config) -> Result<ExitCode> {
    let store = continuity::open_store(config)?;
    let key = VerifyingKey::load(&config.keys_dir())?;
    let head_file = HeadFile::in_dir(&config.data_dir);
    let head = head_file.read()?;
    let report = verify_chain(&mut *store.conn()?, &key, head.as_ref())?;
    let exit = match (&report.problem, &report.truncated) {
        (None, _) => {
            appliance::outln!(
                "audit log intact: {} records, {} signed checkpoints, signed head at seq {}",
                report.records,
                report.checkpoints,
                report.head_seq.unwrap_or(0)
            );
            ExitCode::SUCCESS
        }
        (Some(problem), Some(truncated)) => {
            tracing::error!(%truncated, %problem, "audit log verification failed: truncated");
            appliance::outln!("audit log TRUNCATED: {truncated}: {problem}");
            appliance::outln!(
                "Put the real store back, or accept this one as a restore with \
                 `plantgate audit accept-restore --reason \"...\"`."
            );
            ExitCode::FAILURE
        }
        (Some(problem), None) => {
            tracing::error!(%problem, "audit log verification failed");
            appliance::outln!("audit log TAMPERED: {problem}");
            ExitCode::FAILURE
        }
    };
    if let Some(episode) = continuity::pending_episode(&head_file) {
        appliance::outln!("{}", describe_episode(&episode));
    }
    Ok(exit)
}

/// One line about a noted episode that is not in the log yet.
fn describe_episode(episode: &serde_json::Value) -> String {
    let field = |name: &str| {
        episode
            .get(name)
            .map(|value| match value {
                serde_json::Value::String(text) => text.clone(),
                serde_json::Value::Array(items) => items
                    .iter()
                    .map(|item| {
                        item.as_str()
                            .map_or_else(|| item.to_string(), str::to_owned)
                    })
                    .collect::<Vec<_>>()
                    .join(", "),
                other => other.to_string(),
            })
            .unwrap_or_else(|| "?".to_owned())
    };
    format!(
        "note: the store did not match the signed audit head from {} to {} ({} refusals, by {}); \
         the next append records this as `audit.head.mismatch`",
        field("first_seen"),
        field("last_seen"),
        field("refusals"),
        field("seen_by"),
    )
}

fn show_head(found: &Discontinuity) -> String {
    match (found.head_seq, &found.head_hash) {
        (Some(seq), Some(hash)) => format!("seq {seq}, hash {hash}"),
        _ => format!("none usable ({})", found.detail),
    }
}

/// Prints both heads, then re-signs the head over the store and records the acceptance.
pub fn accept_restore(config: &Config, actor: &Actor, reason: &str) -> Result<ExitCode> {
    let store = continuity::open_store(config)?;
    let audit = Audit::open_for_restore(store.clone(), config)?;
    let (tail, compared) = continuity::locked_compare(&mut *store.conn()?, audit.head_file())?;
    let Err(found) = compared else {
        return Err(Error::Conflict(format!(
            "the store extends the signed audit head (both at seq {}): there is no restore to accept",
            tail.seq
        )));
    };
    appliance::outln!(
        "signed head ({}): {}",
        audit.head_file().path().display(),
        show_head(&found)
    );
    appliance::outln!(
        "store ({}): ends at seq {}, hash {}",
        store.describe(),
        tail.seq,
        hex::encode(tail.hash)
    );
    let accepted = audit.accept_restore(actor, "audit accept-restore", reason)?;
    appliance::outln!(
        "Accepted: the head is re-signed at seq {}; audit record {} (audit.restore.accepted) \
         holds both heads and the reason. The services can start again.",
        accepted.store.seq,
        accepted.seq
    );
    Ok(ExitCode::SUCCESS)
}
