//! Logs: `tracing` to stderr, human-readable or JSON as `log.format` says; and, for the
//! services, every warning and error also to `{data_dir}/log/{service}.errors`, one JSON
//! object a line, where the portal shows them to the operator's administrators
//! ([`recent_errors`]).
//!
//! Each file is bounded: before it would pass [`MAX_FILE_BYTES`] it becomes
//! `{service}.errors.1` (replacing the older one) and a new one starts, so a flood of
//! warnings costs at most twice that much disk per service. Writing never panics and a
//! failure to write is ignored: stderr (the journal) still has the event.
//!
//! Every service writes into the same directory, which every service user may write (on the
//! image, the group `plantgate`), and a console command run as root may write there too. So
//! nothing found there is trusted: a file is appended to only when it is a plain file with a
//! single link, and the one opened is the one that was checked; anything else in its place is
//! moved aside and a new file made.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::{LogConfig, LogFormat};

/// The directory under the data directory that holds the error files.
pub const ERRORS_DIR: &str = "log";
/// A file is rotated before it would pass this size.
pub const MAX_FILE_BYTES: u64 = 256 * 1024;
/// A message or field value longer than this (in bytes) is cut, so one event cannot take a
/// file's whole budget.
const MAX_TEXT_BYTES: usize = 2048;
/// Fields kept per event.
const MAX_FIELDS: usize = 32;
/// How much of a file the reader reads at most (its end): files are bounded, but the
/// directory is not the reader's alone.
const MAX_READ_BYTES: u64 = 2 * MAX_FILE_BYTES;
/// Mode of an error file: its service writes it, the group (every service, the portal
/// included) reads it.
const FILE_MODE: u32 = 0o640;

/// One warning or error, as a line of `{service}.errors`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogEntry {
    /// RFC 3339, UTC.
    pub at: String,
    pub service: String,
    /// `WARN` or `ERROR`.
    pub level: String,
    pub target: String,
    pub message: String,
    #[serde(default)]
    pub fields: Map<String, Value>,
}

/// `{data_dir}/log`.
pub fn errors_dir(data_dir: &Path) -> PathBuf {
    data_dir.join(ERRORS_DIR)
}

/// Installs the global subscriber of a service: stderr as `config` says, and every warning
/// and error also to `{data_dir}/log/{service}.errors` (whatever `log.level` is). The level
/// was validated with the config; a second call (tests) keeps the first subscriber.
pub fn init(config: &LogConfig, data_dir: &Path, service: &str) {
    install(config, Some(ErrorsLayer::new(data_dir, service)));
}

/// Installs the global subscriber with stderr only: for the command line, whose errors its
/// user sees at once.
pub fn init_stderr(config: &LogConfig) {
    install(config, None);
}

fn install(config: &LogConfig, errors: Option<ErrorsLayer>) {
    let filter = EnvFilter::builder().parse_lossy(&config.level);
    let stderr = match config.format {
        LogFormat::Human => tracing_subscriber::fmt::layer()
            .with_writer(io::stderr)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_writer(io::stderr)
            .boxed(),
    };
    let _ = tracing_subscriber::registry()
        .with(stderr.with_filter(filter))
        .with(errors.map(|layer| layer.with_filter(LevelFilter::WARN)))
        .try_init();
}

/// A service's refusal to start: `line` on stderr, marked as an error for journald when
/// stderr is the journal (`<3>`, which journald reads as the priority), and in the
/// service's error file, where the portal and the console's `errors` show it.
#[allow(clippy::print_stderr)] // before any subscriber exists, stderr is the one channel
pub fn refuse_to_start(data_dir: &Path, service: &str, line: &str) {
    let priority = if std::env::var_os("JOURNAL_STREAM").is_some() {
        "<3>"
    } else {
        ""
    };
    eprintln!("{priority}{line}");
    record_refusal(data_dir, service, line);
}

/// Appends one ERROR entry for `service` to its error file at once, without a subscriber:
/// for a service that refuses to start before logging is set up. `line` is what it printed.
/// A failure to write is ignored.
pub fn record_refusal(data_dir: &Path, service: &str, line: &str) {
    let entry = LogEntry {
        at: now_rfc3339(),
        service: service.to_owned(),
        level: Level::ERROR.to_string(),
        target: "startup".to_owned(),
        message: clip(line.to_owned()),
        fields: Map::new(),
    };
    let _ = ErrorFile::new(data_dir, service).append_entry(&entry);
}

/// The newest `limit` entries of every service's error files (`*.errors` and `*.errors.1` in
/// `{data_dir}/log`), newest first. Lines that do not parse are skipped; a missing or
/// unreadable directory or file gives nothing rather than an error. The service shown is the
/// one the file is named for.
pub fn recent_errors(data_dir: &Path, limit: usize) -> Vec<LogEntry> {
    let Ok(listing) = fs::read_dir(errors_dir(data_dir)) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for item in listing.flatten() {
        let name = item.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(service) = name
            .strip_suffix(".errors")
            .or_else(|| name.strip_suffix(".errors.1"))
        else {
            continue;
        };
        // Not following links, nor opening pipes or devices someone put there.
        if !item.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        let Ok(text) = read_tail(&item.path()) else {
            continue;
        };
        for line in text.lines() {
            let Ok(mut entry) = serde_json::from_str::<LogEntry>(line) else {
                continue;
            };
            let Ok(at) = chrono::DateTime::parse_from_rfc3339(&entry.at) else {
                continue;
            };
            service.clone_into(&mut entry.service);
            found.push((at, found.len(), entry));
        }
    }
    // Newest first; of two at the same instant, the later line first.
    found.sort_by_key(|(at, seq, _)| std::cmp::Reverse((*at, *seq)));
    found
        .into_iter()
        .take(limit)
        .map(|(_, _, entry)| entry)
        .collect()
}

/// At most the last [`MAX_READ_BYTES`] of a file, from its first whole line.
fn read_tail(path: &Path) -> io::Result<String> {
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    let mut bytes = Vec::new();
    if len > MAX_READ_BYTES {
        file.seek(SeekFrom::Start(len - MAX_READ_BYTES))?;
        file.take(MAX_READ_BYTES).read_to_end(&mut bytes)?;
        let start = bytes
            .iter()
            .position(|b| *b == b'\n')
            .map_or(bytes.len(), |i| i + 1);
        bytes.drain(..start);
    } else {
        file.take(MAX_READ_BYTES).read_to_end(&mut bytes)?;
    }
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// `text`, cut to [`MAX_TEXT_BYTES`] at a character boundary.
fn clip(mut text: String) -> String {
    if text.len() > MAX_TEXT_BYTES {
        let mut end = MAX_TEXT_BYTES;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

/// One service's error file, with the rotation and the checks of the module's introduction.
#[derive(Debug)]
struct ErrorFile {
    dir: PathBuf,
    path: PathBuf,
    rotated: PathBuf,
    open: Option<File>,
    /// A write failed, perhaps half done (a full disk takes what fits in the last block):
    /// the next line starts on a line of its own, so that the cut one does not swallow it.
    cut: bool,
}

impl ErrorFile {
    fn new(data_dir: &Path, service: &str) -> ErrorFile {
        // A service name is a fixed word of the code; anything else must not leave the
        // directory.
        let name: String = service
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let dir = errors_dir(data_dir);
        ErrorFile {
            path: dir.join(format!("{name}.errors")),
            rotated: dir.join(format!("{name}.errors.1")),
            dir,
            open: None,
            cut: false,
        }
    }

    fn append_entry(&mut self, entry: &LogEntry) -> io::Result<()> {
        let mut line = serde_json::to_vec(entry).map_err(io::Error::other)?;
        line.push(b'\n');
        self.append(&line)
    }

    /// Appends one line (in one write, so that two processes' lines do not interleave),
    /// rotating first when the file would pass [`MAX_FILE_BYTES`].
    fn append(&mut self, line: &[u8]) -> io::Result<()> {
        let result = if self.cut {
            let mut fresh = Vec::with_capacity(line.len() + 1);
            fresh.push(b'\n');
            fresh.extend_from_slice(line);
            self.try_append(&fresh)
        } else {
            self.try_append(line)
        };
        self.cut = result.is_err();
        if result.is_err() {
            // Start from the path again next time.
            self.open = None;
        }
        result
    }

    fn try_append(&mut self, line: &[u8]) -> io::Result<()> {
        // Another process (a console command with the same name) may have rotated the file,
        // or someone removed it: the handle must be the file at the path.
        if let Some(file) = &self.open
            && !same_file(file, &self.path)
        {
            self.open = None;
        }
        let mut file = match self.open.take() {
            Some(file) => file,
            None => self.open_file()?,
        };
        let len = file.metadata()?.len();
        if len > 0 && len + line.len() as u64 > MAX_FILE_BYTES {
            fs::rename(&self.path, &self.rotated)?;
            file = self.create_file()?;
        }
        file.write_all(line)?;
        self.open = Some(file);
        Ok(())
    }

    /// The file at the path, checked, or a new one.
    fn open_file(&self) -> io::Result<File> {
        self.ensure_dir()?;
        let checked = match fs::symlink_metadata(&self.path) {
            Err(err) if err.kind() == io::ErrorKind::NotFound => return self.create_file(),
            Err(err) => return Err(err),
            Ok(meta) => meta,
        };
        if checked.file_type().is_file() && checked.nlink() == 1 {
            match OpenOptions::new().append(true).open(&self.path) {
                Ok(file) => {
                    let opened = file.metadata()?;
                    if opened.dev() == checked.dev() && opened.ino() == checked.ino() {
                        return Ok(file);
                    }
                }
                // Left by another user (say root, running a console command): ours to
                // replace, as below.
                Err(err) if err.kind() == io::ErrorKind::PermissionDenied => {}
                Err(err) => return Err(err),
            }
        }
        // A link, a pipe, a file we cannot write or one swapped while we looked: moved aside
        // (a rename moves a link itself, never what it points at), and a new file made.
        fs::rename(&self.path, &self.rotated)?;
        self.create_file()
    }

    /// A new file at the path, never following or reusing anything already there.
    fn create_file(&self) -> io::Result<File> {
        let file = OpenOptions::new()
            .append(true)
            .create_new(true)
            .mode(FILE_MODE)
            .open(&self.path)?;
        // The umask may have taken the group's read.
        file.set_permissions(fs::Permissions::from_mode(FILE_MODE))?;
        Ok(file)
    }

    /// Makes `{data_dir}/log` if it is missing, as open to the data directory's group as the
    /// data directory itself (on the image: writable by every service, setgid `plantgate`),
    /// whatever the umask of the process that happens to make it; never to others.
    fn ensure_dir(&self) -> io::Result<()> {
        match fs::symlink_metadata(&self.dir) {
            Ok(meta) if meta.is_dir() => return Ok(()),
            Ok(_) => return Err(io::Error::other("the log path is not a directory")),
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => return Err(err),
        }
        match fs::DirBuilder::new().mode(0o700).create(&self.dir) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => return Ok(()),
            Err(err) => return Err(err),
        }
        let parent = self
            .dir
            .parent()
            .and_then(|p| fs::metadata(p).ok())
            .map_or(0, |m| m.mode());
        fs::set_permissions(
            &self.dir,
            fs::Permissions::from_mode(0o700 | (parent & 0o2070)),
        )
    }
}

/// Whether `file` is (still) the file at `path`.
fn same_file(file: &File, path: &Path) -> bool {
    match (file.metadata(), fs::symlink_metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// The layer that appends warnings and errors to the service's error file.
#[derive(Debug)]
struct ErrorsLayer {
    service: String,
    file: Mutex<ErrorFile>,
}

impl ErrorsLayer {
    fn new(data_dir: &Path, service: &str) -> ErrorsLayer {
        ErrorsLayer {
            service: service.to_owned(),
            file: Mutex::new(ErrorFile::new(data_dir, service)),
        }
    }
}

thread_local! {
    /// Set while this thread writes an entry: an event raised meanwhile (by a field's
    /// `Debug`, say) is left to stderr instead of waiting for the lock this thread holds.
    static WRITING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

impl<S: Subscriber> Layer<S> for ErrorsLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let meta = event.metadata();
        // `try_with`: never a panic, even for an event raised while the thread ends.
        if *meta.level() > Level::WARN
            || !matches!(WRITING.try_with(|w| w.replace(true)), Ok(false))
        {
            return;
        }
        let mut fields = Fields::default();
        event.record(&mut fields);
        // Events from the `log` crate (dependencies) carry their real target as a field.
        let target = match fields.log_target.take() {
            Some(target) if meta.target() == "log" => target,
            _ => meta.target().to_owned(),
        };
        let entry = LogEntry {
            at: now_rfc3339(),
            service: self.service.clone(),
            level: meta.level().to_string(),
            target,
            message: fields.message,
            fields: fields.fields,
        };
        // A poisoned lock only means another thread panicked while writing: the file state
        // is still usable.
        let mut file = self
            .file
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let _ = file.append_entry(&entry);
        drop(file);
        let _ = WRITING.try_with(|w| w.set(false));
    }
}

/// An event's message and fields, each clipped.
#[derive(Default)]
struct Fields {
    message: String,
    log_target: Option<String>,
    fields: Map<String, Value>,
}

impl Fields {
    fn put(&mut self, field: &Field, value: Value) {
        match field.name() {
            "message" => {
                self.message = match value {
                    Value::String(text) => text,
                    other => other.to_string(),
                };
            }
            "log.target" => {
                if let Value::String(text) = value {
                    self.log_target = Some(clip(text));
                }
            }
            name if name.starts_with("log.") => {}
            name => {
                if self.fields.len() < MAX_FIELDS {
                    self.fields.insert(name.to_owned(), value);
                }
            }
        }
    }
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.put(field, Value::String(clip(format!("{value:?}"))));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        let value = if value.len() > MAX_TEXT_BYTES {
            clip(value.to_owned())
        } else {
            value.to_owned()
        };
        self.put(field, Value::String(value));
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.put(field, Value::String(clip(value.to_string())));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, Value::from(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, Value::from(value));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, Value::from(value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, Value::from(value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line_of(bytes: usize) -> Vec<u8> {
        let mut line = vec![b'x'; bytes - 1];
        line.push(b'\n');
        line
    }

    #[test]
    fn a_file_about_to_pass_the_limit_becomes_dot_1_and_a_new_one_starts() {
        let dir = tempfile::tempdir().unwrap();
        let mut file = ErrorFile::new(dir.path(), "plantgate-web");
        let line = line_of(1000);
        let per_file = (MAX_FILE_BYTES / 1000) as usize;
        for _ in 0..per_file {
            file.append(&line).unwrap();
        }
        let path = dir.path().join("log/plantgate-web.errors");
        let rotated = dir.path().join("log/plantgate-web.errors.1");
        assert_eq!(fs::metadata(&path).unwrap().len(), per_file as u64 * 1000);
        assert!(!rotated.exists());
        // One more would pass the limit: it starts the new file.
        file.append(&line).unwrap();
        assert_eq!(
            fs::metadata(&rotated).unwrap().len(),
            per_file as u64 * 1000
        );
        assert_eq!(fs::read(&path).unwrap(), line);
        file.append(b"second\n").unwrap();
        assert_eq!(fs::metadata(&path).unwrap().len(), 1007);
        assert_eq!(
            fs::metadata(&path).unwrap().mode() & 0o777,
            0o640,
            "group-readable, whatever the umask"
        );
    }

    #[test]
    fn after_a_failed_write_the_next_entry_starts_on_its_own_line() {
        let dir = tempfile::tempdir().unwrap();
        let mut file = ErrorFile::new(dir.path(), "plantgate-ingest");
        file.append(b"{\"first\":1}\n").unwrap();
        // What a write cut short by a full disk leaves: the start of a line. A handle that
        // cannot write stands in for the full disk.
        let path = dir.path().join("log/plantgate-ingest.errors");
        OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"{\"cut")
            .unwrap();
        file.open = Some(File::open(&path).unwrap());
        assert!(file.append(b"{\"lost\":2}\n").is_err());
        file.append(b"{\"after\":3}\n").unwrap();
        let text = fs::read_to_string(&path).unwrap();
        assert_eq!(text, "{\"first\":1}\n{\"cut\n{\"after\":3}\n");
    }

    #[test]
    fn a_flood_never_takes_more_than_two_files_of_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let mut file = ErrorFile::new(dir.path(), "plantgate-web");
        let line = line_of(700);
        for _ in 0..3000 {
            file.append(&line).unwrap();
        }
        let mut names = Vec::new();
        let mut total = 0;
        for item in fs::read_dir(dir.path().join("log")).unwrap() {
            let item = item.unwrap();
            let len = item.metadata().unwrap().len();
            assert!(len <= MAX_FILE_BYTES, "{len}");
            total += len;
            names.push(item.file_name().into_string().unwrap());
        }
        names.sort();
        assert_eq!(names, ["plantgate-web.errors", "plantgate-web.errors.1"]);
        assert!(total <= 2 * MAX_FILE_BYTES);
        // One huge message is cut, not a file's whole budget.
        record_refusal(
            dir.path(),
            "plantgate-web",
            &"y".repeat(10 * MAX_FILE_BYTES as usize),
        );
        let newest = &recent_errors(dir.path(), 1)[0];
        assert!(newest.message.len() <= MAX_TEXT_BYTES + '…'.len_utf8());
    }

    #[test]
    fn a_rotation_by_another_process_or_a_removed_file_is_followed() {
        let dir = tempfile::tempdir().unwrap();
        let mut file = ErrorFile::new(dir.path(), "plantgate-firewall");
        file.append(b"one\n").unwrap();
        let path = dir.path().join("log/plantgate-firewall.errors");
        fs::rename(&path, dir.path().join("log/plantgate-firewall.errors.1")).unwrap();
        file.append(b"two\n").unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "two\n");
        fs::remove_file(&path).unwrap();
        file.append(b"three\n").unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "three\n");
    }

    #[test]
    fn a_link_in_place_of_the_file_is_moved_aside_and_never_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        fs::write(&victim, "precious\n").unwrap();
        fs::create_dir(dir.path().join("log")).unwrap();
        let path = dir.path().join("log/plantgate-ingest.errors");
        std::os::unix::fs::symlink(&victim, &path).unwrap();
        record_refusal(dir.path(), "plantgate-ingest", "refused");
        assert_eq!(fs::read_to_string(&victim).unwrap(), "precious\n");
        assert!(fs::symlink_metadata(&path).unwrap().file_type().is_file());
        // A hard link is refused the same way.
        fs::remove_file(dir.path().join("log/plantgate-ingest.errors.1")).unwrap();
        fs::remove_file(&path).unwrap();
        fs::hard_link(&victim, &path).unwrap();
        record_refusal(dir.path(), "plantgate-ingest", "refused");
        assert_eq!(fs::read_to_string(&victim).unwrap(), "precious\n");
        assert_eq!(recent_errors(dir.path(), 10).len(), 1);
    }

    #[test]
    fn the_reader_merges_every_service_and_both_generations_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        assert!(recent_errors(dir.path(), 10).is_empty(), "no directory yet");
        let log = dir.path().join("log");
        fs::create_dir(&log).unwrap();
        let entry = |at: &str, service: &str, message: &str| {
            serde_json::to_string(&LogEntry {
                at: at.into(),
                service: service.into(),
                level: "WARN".into(),
                target: "test".into(),
                message: message.into(),
                fields: Map::new(),
            })
            .unwrap()
        };
        fs::write(
            log.join("plantgate-web.errors.1"),
            format!(
                "{}\n{}\n",
                entry("2026-01-01T10:00:00Z", "plantgate-web", "web 1"),
                entry("2026-01-01T10:02:00Z", "plantgate-web", "web 3"),
            ),
        )
        .unwrap();
        fs::write(
            log.join("plantgate-web.errors"),
            format!(
                "{}\nnot json\n{{\"at\":\"yesterday\"}}\n{}\n",
                entry("2026-01-01T10:04:00Z", "plantgate-web", "web 5"),
                entry("2026-01-01T11:00:00+00:00", "plantgate-web", "web 6"),
            ),
        )
        .unwrap();
        // The file's name, not the line, says which service it was.
        fs::write(
            log.join("plantgate-ingest.errors"),
            format!(
                "{}\n{}\n{{\"at\":\"2026-01-01T10:03:30Z\",\"service\":\"x\"",
                entry("2026-01-01T10:01:00Z", "plantgate-web", "ingest 2"),
                entry("2026-01-01T12:03:00+02:00", "plantgate-ingest", "ingest 4"),
            ),
        )
        .unwrap();
        fs::write(
            log.join("notes.txt"),
            entry("2026-01-01T23:00:00Z", "x", "other"),
        )
        .unwrap();
        let all = recent_errors(dir.path(), 100);
        let shown: Vec<(&str, &str)> = all
            .iter()
            .map(|e| (e.service.as_str(), e.message.as_str()))
            .collect();
        assert_eq!(
            shown,
            [
                ("plantgate-web", "web 6"),
                ("plantgate-web", "web 5"),
                ("plantgate-ingest", "ingest 4"),
                ("plantgate-web", "web 3"),
                ("plantgate-ingest", "ingest 2"),
                ("plantgate-web", "web 1"),
            ]
        );
        let newest: Vec<String> = recent_errors(dir.path(), 2)
            .into_iter()
            .map(|e| e.message)
            .collect();
        assert_eq!(newest, ["web 6", "web 5"]);
    }

    #[test]
    fn the_layer_writes_warnings_and_errors_with_their_fields_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let subscriber = tracing_subscriber::registry()
            .with(ErrorsLayer::new(dir.path(), "plantgate-ingest").with_filter(LevelFilter::WARN));
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!("not this");
            tracing::debug!("nor this");
            tracing::warn!(mail = 7, reason = "connection refused", "email failed");
            let err = io::Error::other("disk on fire");
            tracing::error!(error = %err, retry = false, "cannot write <b>");
        });
        let entries = recent_errors(dir.path(), 10);
        assert_eq!(entries.len(), 2, "{entries:?}");
        let (error, warning) = (&entries[0], &entries[1]);
        assert_eq!(error.level, "ERROR");
        assert_eq!(error.message, "cannot write <b>");
        assert_eq!(error.fields["error"], "disk on fire");
        assert_eq!(error.fields["retry"], false);
        assert_eq!(error.service, "plantgate-ingest");
        assert_eq!(warning.level, "WARN");
        assert_eq!(warning.message, "email failed");
        assert_eq!(warning.fields["mail"], 7);
        assert_eq!(warning.fields["reason"], "connection refused");
        assert!(
            warning.target.starts_with("appliance"),
            "{}",
            warning.target
        );
        assert!(chrono::DateTime::parse_from_rfc3339(&warning.at).is_ok());
        assert!(warning.at.ends_with('Z'));
    }

    #[test]
    fn a_refusal_is_one_error_entry() {
        let dir = tempfile::tempdir().unwrap();
        record_refusal(
            dir.path(),
            "plantgate-firewall",
            "plantgate-firewall: cannot read /var/lib/plantgate/keys/x: permission denied",
        );
        let entries = recent_errors(dir.path(), 10);
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].level, "ERROR");
        assert_eq!(entries[0].service, "plantgate-firewall");
        assert!(entries[0].message.contains("permission denied"));
        // A name that is not a plain word stays inside the directory.
        record_refusal(dir.path(), "../escape", "no");
        assert!(!dir.path().join("escape.errors").exists());
        assert!(dir.path().join("log/___escape.errors").exists());
    }
}
