//! The bootloader environment: which slot boots, whether it is known good, and how many
//! trial boots it has left. [`BootEnv`] stores the variables ([`GrubEnv`], GRUB's
//! `grubenv`, or [`UbootEnv`], U-Boot's environment); [`BootState`] gives them meaning.
//!
//! Variables: `PG_ORDER` ("B A": try B first), and per slot `PG_X_OK` (1: complete image),
//! `PG_X_GOOD` (1: passed the health check) and `PG_X_TRIES` (trial boots left, 0..=3).
//! The bootloader boots the first slot in order that is OK and either GOOD or has tries
//! left, decrementing TRIES when it is not GOOD. `updater/grub.cfg` is that logic for GRUB,
//! `updater/boot.cmd` for U-Boot; [`simulate_boot`] is the same logic for tests.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Result, UpdaterError};
use crate::slots::SlotId;

pub const GRUBENV_SIZE: usize = 1024;
pub const GRUBENV_HEADER: &str = "# GRUB Environment Block\n";
/// GRUB's script can count down only from fixed values, so trials are at most this many.
pub const MAX_TRIES: u32 = 3;

pub type Vars = BTreeMap<String, String>;

pub trait BootEnv {
    fn describe(&self) -> String;
    /// The variables; empty when the environment was never written.
    fn load(&self) -> Result<Vars>;
    /// Replaces the variables durably.
    fn save(&self, vars: &Vars) -> Result<()>;
}

/// A GRUB environment block file: exactly 1024 bytes, the header line, `key=value` lines,
/// then `#` padding; what `grub-editenv FILE list` and GRUB's `load_env` read.
#[derive(Debug, Clone)]
pub struct GrubEnv {
    pub path: PathBuf,
}

impl GrubEnv {
    fn error(&self, problem: impl Into<String>) -> UpdaterError {
        UpdaterError::BootEnv {
            path: self.path.clone(),
            problem: problem.into(),
        }
    }

    pub fn encode(vars: &Vars) -> std::result::Result<Vec<u8>, String> {
        let mut block = GRUBENV_HEADER.as_bytes().to_vec();
        for (key, value) in vars {
            let key_ok =
                !key.is_empty() && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if !key_ok {
                return Err(format!("variable name {key:?} is not [A-Za-z0-9_]+"));
            }
            // GRUB escapes backslash and newline; our values never need them, so refuse.
            if value.bytes().any(|b| b == b'\n' || b == b'\\') {
                return Err(format!("value of {key} holds a newline or backslash"));
            }
            block.extend_from_slice(format!("{key}={value}\n").as_bytes());
        }
        if block.len() > GRUBENV_SIZE {
            return Err(format!(
                "{} bytes of variables do not fit the {GRUBENV_SIZE}-byte block",
                block.len()
            ));
        }
        block.resize(GRUBENV_SIZE, b'#');
        Ok(block)
    }

    pub fn decode(block: &[u8]) -> std::result::Result<Vars, String> {
        if block.len() != GRUBENV_SIZE {
            return Err(format!(
                "{} bytes, a GRUB environment block is {GRUBENV_SIZE}",
                block.len()
            ));
        }
        let text = block
            .strip_prefix(GRUBENV_HEADER.as_bytes())
            .ok_or("no `# GRUB Environment Block` header")?;
        let mut vars = Vars::new();
        for line in text.split(|b| *b == b'\n') {
            if line.is_empty() || line.starts_with(b"#") {
                continue;
            }
            let line = std::str::from_utf8(line).map_err(|_| "a line is not UTF-8")?;
            let (key, value) = line
                .split_once('=')
                .ok_or_else(|| format!("line {line:?} has no `=`"))?;
            vars.insert(key.to_owned(), value.to_owned());
        }
        Ok(vars)
    }
}

impl BootEnv for GrubEnv {
    fn describe(&self) -> String {
        format!("grubenv {}", self.path.display())
    }

    fn load(&self) -> Result<Vars> {
        match std::fs::read(&self.path) {
            Ok(block) => GrubEnv::decode(&block).map_err(|p| self.error(p)),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(Vars::new()),
            Err(err) => Err(UpdaterError::io(&self.path)(err)),
        }
    }

    fn save(&self, vars: &Vars) -> Result<()> {
        let block = GrubEnv::encode(vars).map_err(|p| self.error(p))?;
        crate::fsutil::write_atomic(&self.path, &block)
    }
}

/// The smallest and largest U-Boot environment we accept (U-Boot's own are 8 KiB to 128 KiB).
pub const UBOOT_MIN_SIZE: u64 = 256;
pub const UBOOT_MAX_SIZE: u64 = 1 << 20;

/// One copy of a U-Boot environment: a file or raw partition, and the offset in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UbootCopy {
    pub path: PathBuf,
    #[serde(default)]
    pub offset: u64,
}

/// A U-Boot environment, as `fw_printenv` and `fw_setenv` (u-boot-tools) read and write it:
/// `size` bytes holding a little-endian CRC-32 of the data area, then (redundant layout
/// only) a flags byte, then the data: `key=value\0` entries, an empty entry (`\0`) to end
/// them, and zero padding. With a second copy, a write goes to the copy not in use with the
/// flags counter raised by one (U-Boot's "incremental" scheme for files and block devices),
/// so a write torn by a power cut leaves the other, intact copy in force.
#[derive(Debug, Clone)]
pub struct UbootEnv {
    pub primary: UbootCopy,
    pub redundant: Option<UbootCopy>,
    /// Bytes per copy, CRC (and flags) included.
    pub size: u64,
}

/// What a copy held when read.
#[derive(Debug, Clone, PartialEq, Eq)]
enum CopyState {
    /// The file does not exist or is empty: never written.
    Blank,
    /// CRC matched.
    Valid { flags: u8, vars: Vars },
    /// CRC did not match, or the data is not an environment.
    Bad(String),
}

impl UbootEnv {
    fn error(&self, path: &Path, problem: impl Into<String>) -> UpdaterError {
        UpdaterError::BootEnv {
            path: path.to_owned(),
            problem: problem.into(),
        }
    }

    fn header_len(&self) -> usize {
        if self.redundant.is_some() { 5 } else { 4 }
    }

    fn size(&self) -> usize {
        usize::try_from(self.size).unwrap_or(usize::MAX)
    }

    /// The data area for `vars`: entries, the empty entry that ends them, zero padding.
    pub fn encode_data(vars: &Vars, data_len: usize) -> std::result::Result<Vec<u8>, String> {
        let mut data = Vec::with_capacity(data_len);
        for (key, value) in vars {
            if key.is_empty() || key.bytes().any(|b| b == b'=' || b == 0) {
                return Err(format!(
                    "variable name {key:?} is empty or holds `=` or NUL"
                ));
            }
            if value.bytes().any(|b| b == 0) {
                return Err(format!("value of {key} holds a NUL byte"));
            }
            data.extend_from_slice(key.as_bytes());
            data.push(b'=');
            data.extend_from_slice(value.as_bytes());
            data.push(0);
        }
        // The entries end with an empty one: at least the two NULs U-Boot looks for.
        if data.len() + 1 > data_len || (data.is_empty() && data_len < 2) {
            return Err(format!(
                "{} bytes of variables do not fit the {data_len}-byte environment",
                data.len() + 1
            ));
        }
        data.resize(data_len, 0);
        Ok(data)
    }

    pub fn decode_data(data: &[u8]) -> std::result::Result<Vars, String> {
        let mut vars = Vars::new();
        let mut rest = data;
        loop {
            let end = rest
                .iter()
                .position(|b| *b == 0)
                .ok_or("the variables run past the end of the environment")?;
            if end == 0 {
                return Ok(vars);
            }
            let entry = std::str::from_utf8(&rest[..end]).map_err(|_| "an entry is not UTF-8")?;
            let (key, value) = entry
                .split_once('=')
                .ok_or_else(|| format!("entry {entry:?} has no `=`"))?;
            vars.insert(key.to_owned(), value.to_owned());
            rest = &rest[end + 1..];
        }
    }

    /// The whole copy: CRC, flags (redundant layout), data.
    pub fn encode(&self, vars: &Vars, flags: u8) -> std::result::Result<Vec<u8>, String> {
        let data = UbootEnv::encode_data(vars, self.size() - self.header_len())?;
        let mut block = crc32fast::hash(&data).to_le_bytes().to_vec();
        if self.redundant.is_some() {
            block.push(flags);
        }
        block.extend_from_slice(&data);
        Ok(block)
    }

    fn decode(&self, block: &[u8]) -> CopyState {
        let Some((crc, rest)) = block.split_first_chunk::<4>() else {
            return CopyState::Bad("shorter than its CRC".into());
        };
        let (flags, data) = if self.redundant.is_some() {
            match rest.split_first() {
                Some((flags, data)) => (*flags, data),
                None => return CopyState::Bad("no flags byte".into()),
            }
        } else {
            (0, rest)
        };
        let stored = u32::from_le_bytes(*crc);
        let actual = crc32fast::hash(data);
        if stored != actual {
            return CopyState::Bad(format!(
                "bad CRC: stored {stored:08x}, data has {actual:08x}; the environment is corrupt"
            ));
        }
        match UbootEnv::decode_data(data) {
            Ok(vars) => CopyState::Valid { flags, vars },
            Err(problem) => CopyState::Bad(problem),
        }
    }

    fn read_copy(&self, copy: &UbootCopy) -> Result<CopyState> {
        let mut file = match File::open(&copy.path) {
            Ok(file) => file,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(CopyState::Blank),
            Err(err) => return Err(UpdaterError::io(&copy.path)(err)),
        };
        let meta = file.metadata().map_err(UpdaterError::io(&copy.path))?;
        // A file that ends before this copy (a second copy in the same file, never written
        // yet) holds nothing: blank, not torn.
        if meta.is_file() && meta.len() <= copy.offset {
            return Ok(CopyState::Blank);
        }
        if meta.is_file() && meta.len() < copy.offset + self.size {
            return Err(self.error(
                &copy.path,
                format!(
                    "{} bytes, too short for a {}-byte environment at offset {}",
                    meta.len(),
                    self.size,
                    copy.offset
                ),
            ));
        }
        let mut block = vec![0u8; self.size()];
        file.seek(SeekFrom::Start(copy.offset))
            .and_then(|_| file.read_exact(&mut block))
            .map_err(UpdaterError::io(&copy.path))?;
        Ok(self.decode(&block))
    }

    fn copies(&self) -> Vec<&UbootCopy> {
        std::iter::once(&self.primary)
            .chain(self.redundant.as_ref())
            .collect()
    }

    /// The copy in force (index and flags) and its variables; `None` when never written.
    fn current(&self) -> Result<Option<(usize, u8, Vars)>> {
        let states = self
            .copies()
            .into_iter()
            .map(|copy| self.read_copy(copy))
            .collect::<Result<Vec<_>>>()?;
        let valid: Vec<(usize, u8, &Vars)> = states
            .iter()
            .enumerate()
            .filter_map(|(i, state)| match state {
                CopyState::Valid { flags, vars } => Some((i, *flags, vars)),
                _ => None,
            })
            .collect();
        let chosen = match valid.as_slice() {
            [] => None,
            [one] => Some(*one),
            // Both copies intact: the newer by U-Boot's incremental flags, 255 wrapping to 0.
            [first, second, ..] => {
                let (f0, f1) = (first.1, second.1);
                Some(
                    if (f0 == 255 && f1 == 0) || (f1 > f0 && !(f1 == 255 && f0 == 0)) {
                        *second
                    } else {
                        *first
                    },
                )
            }
        };
        if let Some((i, flags, vars)) = chosen {
            return Ok(Some((i, flags, vars.clone())));
        }
        if states.iter().all(|s| *s == CopyState::Blank) {
            return Ok(None);
        }
        // Refuse rather than guess: U-Boot would fall back to its built-in default
        // environment, which knows nothing of the slots.
        let problems: Vec<String> = self
            .copies()
            .iter()
            .zip(&states)
            .map(|(copy, state)| match state {
                CopyState::Bad(problem) => {
                    format!("{} at {}: {problem}", copy.path.display(), copy.offset)
                }
                _ => format!("{} at {}: blank", copy.path.display(), copy.offset),
            })
            .collect();
        Err(self.error(&self.primary.path, problems.join("; ")))
    }

    /// Writes one copy durably: a regular file is replaced whole (temp file, fsync,
    /// rename), so a crash leaves the old or the new file; a device (a raw partition) is
    /// written in place and synced, since it cannot be renamed.
    fn write_copy(&self, copy: &UbootCopy, block: &[u8]) -> Result<()> {
        let is_device = std::fs::metadata(&copy.path)
            .map(|m| m.file_type().is_block_device() || m.file_type().is_char_device())
            .unwrap_or(false);
        if is_device {
            let mut file = OpenOptions::new()
                .write(true)
                .open(&copy.path)
                .map_err(UpdaterError::io(&copy.path))?;
            file.seek(SeekFrom::Start(copy.offset))
                .and_then(|_| file.write_all(block))
                .and_then(|()| file.sync_all())
                .map_err(UpdaterError::io(&copy.path))?;
            return Ok(());
        }
        let mut whole = match std::fs::read(&copy.path) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(err) => return Err(UpdaterError::io(&copy.path)(err)),
        };
        let start = usize::try_from(copy.offset)
            .map_err(|_| self.error(&copy.path, "offset does not fit in memory"))?;
        let end = start + block.len();
        if whole.len() < end {
            whole.resize(end, 0);
        }
        whole[start..end].copy_from_slice(block);
        crate::fsutil::write_atomic(&copy.path, &whole)
    }
}

impl BootEnv for UbootEnv {
    fn describe(&self) -> String {
        match &self.redundant {
            None => format!(
                "U-Boot environment {} at {} ({} bytes)",
                self.primary.path.display(),
                self.primary.offset,
                self.size
            ),
            Some(second) => format!(
                "redundant U-Boot environment {} at {} and {} at {} ({} bytes each)",
                self.primary.path.display(),
                self.primary.offset,
                second.path.display(),
                second.offset,
                self.size
            ),
        }
    }

    fn load(&self) -> Result<Vars> {
        Ok(self.current()?.map(|(_, _, vars)| vars).unwrap_or_default())
    }

    fn save(&self, vars: &Vars) -> Result<()> {
        let copies = self.copies();
        // The copy not in force takes the write, so the one in force survives a torn write.
        let (target, flags) = match (self.current(), copies.len()) {
            (Ok(Some((i, flags, _))), 2) => (1 - i, flags.wrapping_add(1)),
            // A corrupt environment is rewritten whole; the CRC refusal is for reading.
            (Ok(None) | Err(_), 2) => (0, 1),
            _ => (0, 0),
        };
        let block = self
            .encode(vars, flags)
            .map_err(|p| self.error(&copies[target].path, p))?;
        self.write_copy(copies[target], &block)
    }
}

/// The A/B meaning of the variables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootState {
    pub vars: Vars,
}

fn key(slot: SlotId, what: &str) -> String {
    format!("PG_{}_{what}", slot.as_str())
}

impl BootState {
    /// Reads the environment; a blank one is the factory state: A complete and good, B empty.
    pub fn load(env: &dyn BootEnv) -> Result<BootState> {
        let mut state = BootState { vars: env.load()? };
        if !state.vars.contains_key("PG_ORDER") {
            state.set_order(SlotId::A);
            state.set(SlotId::A, true, true, 0);
            state.set(SlotId::B, false, false, 0);
        }
        Ok(state)
    }

    pub fn save(&self, env: &dyn BootEnv) -> Result<()> {
        env.save(&self.vars)
    }

    pub fn order(&self) -> Vec<SlotId> {
        let order: Vec<SlotId> = self
            .vars
            .get("PG_ORDER")
            .map(|o| o.split_whitespace().filter_map(SlotId::parse).collect())
            .unwrap_or_default();
        if order.is_empty() {
            vec![SlotId::A, SlotId::B]
        } else {
            order
        }
    }

    pub fn set_order(&mut self, first: SlotId) {
        self.vars.insert(
            "PG_ORDER".into(),
            format!("{} {}", first.as_str(), first.other().as_str()),
        );
    }

    fn flag(&self, slot: SlotId, what: &str) -> bool {
        self.vars.get(&key(slot, what)).is_some_and(|v| v == "1")
    }

    pub fn ok(&self, slot: SlotId) -> bool {
        self.flag(slot, "OK")
    }

    pub fn good(&self, slot: SlotId) -> bool {
        self.flag(slot, "GOOD")
    }

    pub fn tries(&self, slot: SlotId) -> u32 {
        self.vars
            .get(&key(slot, "TRIES"))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    pub fn set(&mut self, slot: SlotId, ok: bool, good: bool, tries: u32) {
        let bit = |b: bool| if b { "1" } else { "0" }.to_owned();
        self.vars.insert(key(slot, "OK"), bit(ok));
        self.vars.insert(key(slot, "GOOD"), bit(good));
        self.vars
            .insert(key(slot, "TRIES"), tries.min(MAX_TRIES).to_string());
    }

    pub fn bootable(&self, slot: SlotId) -> bool {
        self.ok(slot) && (self.good(slot) || self.tries(slot) > 0)
    }

    /// A slot that was installed and tried, and ran out of tries without being marked good.
    pub fn exhausted(&self, slot: SlotId) -> bool {
        self.ok(slot) && !self.good(slot) && self.tries(slot) == 0
    }
}

/// What the bootloader does at power-on, as `updater/grub.cfg` does it: returns the slot it
/// boots and saves the decremented trial counter.
pub fn simulate_boot(env: &dyn BootEnv) -> Result<SlotId> {
    let mut state = BootState::load(env)?;
    let chosen = state
        .order()
        .into_iter()
        .find(|slot| state.bootable(*slot))
        // Nothing bootable: the last resort is slot A, as in grub.cfg.
        .unwrap_or(SlotId::A);
    if !state.good(chosen) && state.ok(chosen) {
        let tries = state.tries(chosen).saturating_sub(1);
        state.vars.insert(key(chosen, "TRIES"), tries.to_string());
    }
    state.save(env)?;
    Ok(chosen)
}

/// Reads `plantgate.slot=X` from a kernel command line (`/proc/cmdline` on the box).
pub fn booted_slot(cmdline: &Path) -> Result<SlotId> {
    let text = std::fs::read_to_string(cmdline).map_err(UpdaterError::io(cmdline))?;
    text.split_whitespace()
        .find_map(|arg| arg.strip_prefix("plantgate.slot="))
        .and_then(SlotId::parse)
        .ok_or_else(|| UpdaterError::BootEnv {
            path: cmdline.to_owned(),
            problem: "no plantgate.slot=A|B on the kernel command line".into(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grubenv_block_round_trips_and_is_exactly_one_kilobyte() {
        let mut vars = Vars::new();
        vars.insert("PG_ORDER".into(), "B A".into());
        vars.insert("PG_B_TRIES".into(), "3".into());
        let block = GrubEnv::encode(&vars).expect("encode");
        assert_eq!(block.len(), GRUBENV_SIZE);
        assert!(block.starts_with(GRUBENV_HEADER.as_bytes()));
        assert!(block.ends_with(b"###"));
        assert_eq!(GrubEnv::decode(&block).expect("decode"), vars);
        assert!(GrubEnv::decode(&block[..1000]).is_err());
    }

    #[test]
    fn grubenv_refuses_what_grub_would_misread() {
        let mut vars = Vars::new();
        vars.insert("PG_X".into(), "a\nb".into());
        assert!(GrubEnv::encode(&vars).is_err());
        let mut vars = Vars::new();
        vars.insert("BIG".into(), "x".repeat(2000));
        assert!(GrubEnv::encode(&vars).is_err());
    }

    fn uboot(dir: &Path, redundant: bool) -> UbootEnv {
        UbootEnv {
            primary: UbootCopy {
                path: dir.join("uboot.env"),
                offset: 0,
            },
            redundant: redundant.then(|| UbootCopy {
                path: dir.join("uboot.env"),
                offset: 0x4000,
            }),
            size: 0x4000,
        }
    }

    #[test]
    fn uboot_environment_round_trips_in_both_layouts() {
        for redundant in [false, true] {
            let dir = tempfile::tempdir().expect("dir");
            let env = uboot(dir.path(), redundant);
            assert_eq!(env.load().expect("blank"), Vars::new());
            let mut vars = Vars::new();
            vars.insert("PG_ORDER".into(), "B A".into());
            vars.insert("bootcmd".into(), "run pg_boot; bootz ${loadaddr}".into());
            env.save(&vars).expect("save");
            assert_eq!(env.load().expect("load"), vars);
            vars.insert("PG_B_TRIES".into(), "2".into());
            env.save(&vars).expect("save again");
            assert_eq!(env.load().expect("load again"), vars);
            let len = std::fs::metadata(dir.path().join("uboot.env"))
                .expect("file")
                .len();
            assert_eq!(len, if redundant { 0x8000 } else { 0x4000 });
        }
    }

    #[test]
    fn uboot_environment_refuses_what_it_cannot_hold() {
        let mut vars = Vars::new();
        vars.insert("A=B".into(), "x".into());
        assert!(UbootEnv::encode_data(&vars, 100).is_err());
        let mut vars = Vars::new();
        vars.insert("BIG".into(), "x".repeat(200));
        assert!(UbootEnv::encode_data(&vars, 100).is_err());
    }
}
