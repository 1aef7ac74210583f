//! Which process may read which secret: the one table ([`KEY_FILES`]) of the files under
//! `{data_dir}/keys/`, with each file's owner, group, mode and readers. `plantgate init`
//! (first boot, as root) creates every file and makes owners and modes what the table says
//! ([`enforce`]); services never create a key, and each checks at start that it can read
//! what the table says it reads ([`self_check`]), refusing to start with one line otherwise.
//!
//! The service accounts come from the config's `[accounts]` (the image names its sysusers
//! accounts there). Without it, as on a development machine where every process runs as one
//! user, modes are still enforced and owners left as they are.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::config::{AccountsConfig, Config};
use crate::error::{Error, Result};

/// The long-running processes, each under its own account on the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    Web,
    Ingest,
    Firewall,
}

impl Service {
    pub const ALL: [Service; 3] = [Service::Web, Service::Ingest, Service::Firewall];

    /// The program's name, as messages and the table say it.
    pub fn program(self) -> &'static str {
        match self {
            Service::Web => "plantgate-web",
            Service::Ingest => "plantgate-ingest",
            Service::Firewall => "plantgate-firewall",
        }
    }
}

/// A key file's owning account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    Root,
    Of(Service),
}

/// A key file's group: nobody's (root), every service's (`plantgate`), or the mail group
/// (`plantgate-mail`), which no key file uses now: the portal alone sends mail, so the relay's
/// key is its own. The group stays declared so that configurations naming it still load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Group {
    Root,
    Services,
    Mail,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Secret {
    AuditSigning,
    AuditVerifying,
    TotpSealing,
    RelaySealing,
    ConnectorSealing,
    DeviceCaKey,
    DeviceCaCert,
}

#[derive(Debug)]
pub struct KeyFile {
    pub secret: Secret,
    /// The file's name in `{data_dir}/keys/`.
    pub file: &'static str,
    pub owner: Owner,
    pub group: Group,
    pub mode: u32,
    /// The services that must be able to read it (root's `plantgate` reads every file).
    pub readers: &'static [Service],
    pub why: &'static str,
}

/// `{data_dir}/keys/` itself: root's, entered by the services, written by none of them, so
/// no service can plant or swap a key another process trusts.
pub const KEYS_DIR_MODE: u32 = 0o750;

/// The table. ARCHITECTURE.md shows it; a test holds the two together.
pub const KEY_FILES: [KeyFile; 7] = [
    KeyFile {
        secret: Secret::AuditSigning,
        file: "audit-signing.key",
        owner: Owner::Root,
        group: Group::Services,
        mode: 0o640,
        readers: &[Service::Web, Service::Ingest, Service::Firewall],
        why: "each service appends audit records and signs the chain head in the same transaction",
    },
    KeyFile {
        secret: Secret::AuditVerifying,
        file: "audit-signing.pub",
        owner: Owner::Root,
        group: Group::Services,
        mode: 0o644,
        readers: &[Service::Web],
        why: "public: the portal's audit page verifies the chain",
    },
    KeyFile {
        secret: Secret::TotpSealing,
        file: "totp-sealing.key",
        owner: Owner::Of(Service::Web),
        group: Group::Root,
        mode: 0o600,
        readers: &[Service::Web],
        why: "seals TOTP seeds; only the portal enrols and checks second factors",
    },
    KeyFile {
        secret: Secret::RelaySealing,
        file: "relay-sealing.key",
        owner: Owner::Of(Service::Web),
        group: Group::Root,
        mode: 0o600,
        readers: &[Service::Web],
        why: "seals the mail relay's password: the portal sets it and sends every email, alerts included",
    },
    KeyFile {
        secret: Secret::ConnectorSealing,
        file: "connector-sealing.key",
        owner: Owner::Of(Service::Ingest),
        group: Group::Root,
        mode: 0o600,
        readers: &[Service::Ingest],
        why: "seals data-connector secrets; only the ingest signs deliveries (root's CLI seals them)",
    },
    KeyFile {
        secret: Secret::DeviceCaKey,
        file: "device-ca.key",
        owner: Owner::Of(Service::Ingest),
        group: Group::Root,
        mode: 0o600,
        readers: &[Service::Ingest],
        why: "signs device certificates at enrolment and renewal, which only the ingest serves",
    },
    KeyFile {
        secret: Secret::DeviceCaCert,
        file: "device-ca.crt",
        owner: Owner::Root,
        group: Group::Services,
        mode: 0o644,
        readers: &[Service::Ingest],
        why: "public: the ingest verifies device certificates against it",
    },
];

pub fn spec(secret: Secret) -> &'static KeyFile {
    // The table has one row per secret (a test checks), so the search always finds it.
    KEY_FILES
        .iter()
        .find(|row| row.secret == secret)
        .unwrap_or(&KEY_FILES[0])
}

pub fn path(config: &Config, secret: Secret) -> PathBuf {
    config.keys_dir().join(spec(secret).file)
}

/// The numeric accounts named in `[accounts]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accounts {
    pub web: u32,
    pub ingest: u32,
    pub firewall: u32,
    pub services_group: u32,
    pub mail_group: u32,
}

impl Accounts {
    /// Resolves names through /etc/passwd and /etc/group (the image's accounts are made by
    /// systemd-sysusers there); a number is taken as it is.
    pub fn resolve(accounts: &AccountsConfig) -> Result<Accounts> {
        let passwd = fs::read_to_string("/etc/passwd").unwrap_or_default();
        let group = fs::read_to_string("/etc/group").unwrap_or_default();
        let user = |field: &'static str, name: &str| lookup(&passwd, field, name);
        let grp = |field: &'static str, name: &str| lookup(&group, field, name);
        Ok(Accounts {
            web: user("accounts.web", &accounts.web)?,
            ingest: user("accounts.ingest", &accounts.ingest)?,
            firewall: user("accounts.firewall", &accounts.firewall)?,
            services_group: grp("accounts.group", &accounts.group)?,
            mail_group: grp("accounts.mail_group", &accounts.mail_group)?,
        })
    }

    pub fn uid(&self, owner: Owner) -> u32 {
        match owner {
            Owner::Root => 0,
            Owner::Of(Service::Web) => self.web,
            Owner::Of(Service::Ingest) => self.ingest,
            Owner::Of(Service::Firewall) => self.firewall,
        }
    }

    pub fn gid(&self, group: Group) -> u32 {
        match group {
            Group::Root => 0,
            Group::Services => self.services_group,
            Group::Mail => self.mail_group,
        }
    }
}

/// The id of `name` in a passwd- or group-format `table`, or `name` itself if numeric.
fn lookup(table: &str, field: &'static str, name: &str) -> Result<u32> {
    if let Ok(id) = name.parse::<u32>() {
        return Ok(id);
    }
    table
        .lines()
        .map(|line| line.split(':').collect::<Vec<_>>())
        .find(|parts| parts.first() == Some(&name))
        .and_then(|parts| parts.get(2)?.parse().ok())
        .ok_or_else(|| Error::invalid(field, format!("no account or group named {name:?}")))
}

/// The name of uid `id` (or group `id`), else the number.
fn name_of(table_path: &str, id: u32) -> String {
    fs::read_to_string(table_path)
        .unwrap_or_default()
        .lines()
        .map(|line| line.split(':').collect::<Vec<_>>())
        .find(|parts| parts.get(2).and_then(|n| n.parse::<u32>().ok()) == Some(id))
        .and_then(|parts| parts.first().map(|name| (*name).to_owned()))
        .unwrap_or_else(|| id.to_string())
}

fn io_error(path: &Path, err: impl std::fmt::Display) -> Error {
    Error::Key {
        path: path.to_owned(),
        problem: err.to_string(),
    }
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(|err| io_error(path, err))?;
    // Without CAP_FSETID the kernel drops a setgid bit silently instead of refusing it
    // (chmod(2)), and new files would then land in the writer's group: check, and say so.
    if mode & 0o2000 != 0 {
        let kept = fs::metadata(path)
            .map_err(|err| io_error(path, err))?
            .mode()
            & 0o7777;
        if kept != mode {
            return Err(io_error(
                path,
                format!(
                    "mode {kept:o} after setting {mode:o}: the setgid bit was dropped (the process lacks CAP_FSETID)"
                ),
            ));
        }
    }
    Ok(())
}

fn set_owner(path: &Path, uid: u32, gid: u32) -> Result<()> {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).map_err(|err| io_error(path, err))
}

/// Makes owners and modes of the keys directory and every key file what the table says, and
/// (with accounts) the data directory's shared files the services' group's. A symbolic link
/// where a key should be is refused, never followed.
pub fn enforce(config: &Config, accounts: Option<&Accounts>) -> Result<()> {
    let keys = config.keys_dir();
    if let Some(accounts) = accounts {
        set_owner(&keys, 0, accounts.services_group)?;
    }
    set_mode(&keys, KEYS_DIR_MODE)?;
    for row in &KEY_FILES {
        let path = keys.join(row.file);
        let meta = fs::symlink_metadata(&path).map_err(|err| io_error(&path, err))?;
        if !meta.file_type().is_file() {
            return Err(io_error(&path, "not a regular file"));
        }
        if let Some(accounts) = accounts {
            set_owner(&path, accounts.uid(row.owner), accounts.gid(row.group))?;
        }
        set_mode(&path, row.mode)?;
    }
    if let Some(accounts) = accounts {
        share_store_files(&config.data_dir, accounts.services_group)?;
    }
    Ok(())
}

/// The store, the signed audit head and their locks are written by every service: root's
/// files at the top of the data directory go to the services' group (read-write, nothing for
/// others), and the directory keeps new files in that group (setgid).
fn share_store_files(data_dir: &Path, group: u32) -> Result<()> {
    set_owner(data_dir, 0, group)?;
    set_mode(data_dir, 0o2770)?;
    let entries = fs::read_dir(data_dir).map_err(|err| io_error(data_dir, err))?;
    for entry in entries {
        let entry = entry.map_err(|err| io_error(data_dir, err))?;
        let meta =
            fs::symlink_metadata(entry.path()).map_err(|err| io_error(&entry.path(), err))?;
        if meta.file_type().is_file() && meta.uid() == 0 {
            set_owner(&entry.path(), 0, group)?;
            set_mode(&entry.path(), (meta.mode() & 0o770) | 0o660)?;
        }
    }
    // The listeners' certificates and the services' error logs: each service writes its own.
    for shared_dir in ["tls", crate::telemetry::ERRORS_DIR] {
        let path = data_dir.join(shared_dir);
        if !path.exists() {
            fs::create_dir(&path).map_err(|err| io_error(&path, err))?;
            set_owner(&path, 0, group)?;
            set_mode(&path, 0o2770)?;
        }
    }
    Ok(())
}

/// Who this process is: effective uid and every group it holds.
fn identity() -> (u32, Vec<u32>) {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| -> Vec<u32> {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .map(|rest| {
                rest.split_whitespace()
                    .filter_map(|n| n.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    };
    let uid = field("Uid:").get(1).copied().unwrap_or(u32::MAX);
    let mut groups = field("Groups:");
    groups.extend(field("Gid:").get(1));
    groups.sort_unstable();
    groups.dedup();
    (uid, groups)
}

/// One line saying why `path` fails `service`: who owns it, its mode, who we are, and
/// what we need it for.
fn refusal(service: Service, path: &Path, need: &str, err: &std::io::Error) -> String {
    let (uid, groups) = identity();
    let me = format!(
        "{} (uid {}, groups {})",
        name_of("/etc/passwd", uid),
        uid,
        groups
            .iter()
            .map(|g| name_of("/etc/group", *g))
            .collect::<Vec<_>>()
            .join(",")
    );
    match fs::symlink_metadata(path) {
        Ok(meta) => format!(
            "{}: cannot start: {} is owned by {}:{} with mode {:04o}, and this process, {me}, cannot {need} ({err})",
            service.program(),
            path.display(),
            name_of("/etc/passwd", meta.uid()),
            name_of("/etc/group", meta.gid()),
            meta.mode() & 0o7777,
        ),
        Err(_) => format!(
            "{}: cannot start: {} is missing ({err}); this process, {me}, must {need}; `plantgate init` (first boot) makes it",
            service.program(),
            path.display(),
        ),
    }
}

/// Checks with this process's own rights that every file `service` needs can be used the
/// way it needs it: each key of the table it reads, and the shared store files it writes;
/// then that the store extends the signed audit head. `Err` is one line naming the file,
/// its owner and mode, and what was needed, or the two sequence numbers that disagree.
pub fn self_check(config: &Config, service: Service) -> Result<(), String> {
    let keys = config.keys_dir();
    for row in KEY_FILES
        .iter()
        .filter(|row| row.readers.contains(&service))
    {
        let path = keys.join(row.file);
        if let Err(err) = fs::File::open(&path) {
            return Err(refusal(
                service,
                &path,
                &format!("read it: {}", row.why),
                &err,
            ));
        }
    }
    // Every appender reads the signed head and takes its lock; the head itself is replaced
    // by a rename in the (group-writable) data directory, so its own mode need not allow
    // writing.
    let mut shared = vec![
        (config.data_dir.join("audit-head.json"), false),
        (config.data_dir.join("audit-head.lock"), true),
    ];
    if let Ok(crate::config::StoreTarget::Sqlite(db)) = config.store_target() {
        shared.push((db, true));
    }
    for (path, write) in shared.into_iter().filter(|(path, _)| path.exists()) {
        let opened = fs::OpenOptions::new().read(true).write(write).open(&path);
        if let Err(err) = opened {
            let need = if write {
                "read and write it (the shared store)"
            } else {
                "read it (the audit log's signed head)"
            };
            return Err(refusal(service, &path, need, &err));
        }
    }
    store_extends_head(config, service)
}

/// The store must extend the signed audit head: a service never starts on a store that is
/// empty or older than the head says (its appends would be refused anyway). A store that
/// cannot be opened is left to the service's own open, which names the problem.
fn store_extends_head(config: &Config, service: Service) -> Result<(), String> {
    // A missing file is the open's to report (and to note, once).
    if let Ok(crate::config::StoreTarget::Sqlite(db)) = config.store_target()
        && !db.is_file()
    {
        return Ok(());
    }
    let Ok(store) = crate::audit::continuity::open_store(config) else {
        return Ok(());
    };
    let head = crate::audit::head::HeadFile::in_dir(&config.data_dir);
    match crate::audit::continuity::check(&store, &head, service.program()) {
        Err(err @ Error::Audit(crate::error::AuditError::Discontinuity(_))) => {
            Err(format!("{}: cannot start: {err}", service.program()))
        }
        // Any other failure (the store busy, say) is the service's open to report.
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_secret_has_one_row_and_private_keys_are_for_their_readers_only() {
        for row in &KEY_FILES {
            assert_eq!(
                KEY_FILES.iter().filter(|r| r.secret == row.secret).count(),
                1
            );
            assert_eq!(spec(row.secret).file, row.file);
            if row.file.ends_with(".key") {
                assert_eq!(row.mode & 0o007, 0, "{}: nothing for others", row.file);
                if row.readers.len() == 1 {
                    assert_eq!(row.owner, Owner::Of(row.readers[0]), "{}", row.file);
                    assert_eq!(row.mode, 0o600, "{}", row.file);
                }
            }
        }
    }

    #[test]
    fn names_and_numbers_resolve() {
        let table =
            "root:x:0:0::/root:/bin/sh\nplantgate-web:x:801:800::/nonexistent:/usr/sbin/nologin\n";
        assert!(matches!(
            lookup(table, "accounts.web", "plantgate-web"),
            Ok(801)
        ));
        assert!(matches!(lookup(table, "accounts.web", "4711"), Ok(4711)));
        assert!(lookup(table, "accounts.web", "nobody-here").is_err());
    }
}
