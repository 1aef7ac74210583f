//! The two root slots. The image's are partitions; tests use plain files. Both are opened
//! the same way, so one implementation serves both: [`DeviceSlots`].

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::{Result, UpdaterError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum SlotId {
    A,
    B,
}

impl SlotId {
    pub fn other(self) -> SlotId {
        match self {
            SlotId::A => SlotId::B,
            SlotId::B => SlotId::A,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SlotId::A => "A",
            SlotId::B => "B",
        }
    }

    pub fn parse(raw: &str) -> Option<SlotId> {
        match raw {
            "A" | "a" => Some(SlotId::A),
            "B" | "b" => Some(SlotId::B),
            _ => None,
        }
    }
}

impl std::fmt::Display for SlotId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where the two slots are, and how one is written.
pub trait Slots {
    fn describe(&self, slot: SlotId) -> String;
    /// Opens `slot` for writing from its first byte.
    fn open_writer(&self, slot: SlotId) -> Result<Box<dyn SlotWriter>>;
}

pub trait SlotWriter: Write {
    /// Flushes to stable storage. `len` is how much was written, so that a file-backed
    /// slot can drop what an older, larger image left behind.
    fn finish(self: Box<Self>, len: u64) -> io::Result<()>;
}

/// Slots that are paths: block devices in the image (`/dev/disk/by-partlabel/rootfs-a`),
/// regular files in tests.
#[derive(Debug, Clone)]
pub struct DeviceSlots {
    pub a: PathBuf,
    pub b: PathBuf,
}

impl DeviceSlots {
    fn path(&self, slot: SlotId) -> &PathBuf {
        match slot {
            SlotId::A => &self.a,
            SlotId::B => &self.b,
        }
    }
}

impl Slots for DeviceSlots {
    fn describe(&self, slot: SlotId) -> String {
        self.path(slot).display().to_string()
    }

    fn open_writer(&self, slot: SlotId) -> Result<Box<dyn SlotWriter>> {
        let path = self.path(slot);
        // No truncation and no creation: a slot is a partition that already exists.
        let file = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(UpdaterError::io(path))?;
        Ok(Box::new(FileSlotWriter { file }))
    }
}

struct FileSlotWriter {
    file: File,
}

impl Write for FileSlotWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl SlotWriter for FileSlotWriter {
    fn finish(mut self: Box<Self>, len: u64) -> io::Result<()> {
        self.file.flush()?;
        if self.file.metadata()?.is_file() {
            self.file.set_len(len)?;
        }
        self.file.sync_all()
    }
}
