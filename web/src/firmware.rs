//! Firmware for field devices in the portal: stored bundles, uploading a signed bundle for a
//! device model (verified by the updater's own checks before anything is kept), and staged
//! rollouts (create, pause, resume). Administrators only, and a sensitive action: the
//! password must have been given within `web.reauthenticate_seconds`.
//!
//! An upload streams to a private file in `{data_dir}/firmware/` (never whole in memory),
//! then a verification job runs on a thread of its own while the browser is sent to its
//! progress page, which refreshes itself until the job is done (no JavaScript needed). With
//! JavaScript, `firmware-upload.js` also shows the bytes sent while the file uploads.
//!
//! The portal verifies and stores firmware itself, as its own unprivileged user: reading the
//! trust anchors needs no privilege, and the file it keeps is only ever served to devices,
//! which verify it again themselves. It never touches slots or the boot environment.

pub mod pages;
pub(crate) mod receive;
pub mod upload;
