//! The bootloader environment: which slot boots, whether it is known good, and how many
//! trial boots it has left. [`BootEnv`] stores the variables (GRUB's `grubenv` here; U-Boot's
//! environment would be another implementation); [`BootState`] gives them meaning.
//!
//! Variables: `PG_ORDER` ("B A": try B first), and per slot `PG_X_OK` (1: complete image),
//! `PG_X_GOOD` (1: passed the health check) and `PG_X_TRIES` (trial boots left, 0..=3).
//! The bootloader boots the first slot in order that is OK and either GOOD or has tries
//! left, decrementing TRIES when it is not GOOD. `updater/grub.cfg` is that logic for GRUB;
//! [`simulate_boot`] is the same logic for tests.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

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
}
