//! Telemetry in the portal: field devices (register, rotate, revoke, move; each device's
//! state and alerts), alert rules (create, change, test, disable, remove) and data
//! connectors (pause, resume, remove, their delivery log); charts of a device's metrics and of a site's
//! devices side by side, and a mold's dashboard.
//!
//! Administrators of the organisation change them; everyone else who can see a site reads
//! them. What a page and the API both take from a person (a rule's settings) is read into
//! one input ([`input`]) and checked by the core library, which names the refused field.

pub mod chart;
pub mod connectors;
pub mod dashboard;
pub mod devices;
pub mod input;
pub mod rules;
pub mod svg;

pub(crate) use appliance::access::visible_site;
