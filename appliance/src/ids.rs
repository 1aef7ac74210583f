//! Typed ids, so that a site id can never be passed where a user id belongs.

use std::fmt;

use diesel_derive_newtype::DieselNewType;
use serde::{Deserialize, Serialize};

macro_rules! id_type {
    ($name:ident, $prefix:literal) => {
        #[derive(
            Debug,
            Clone,
            Copy,
            PartialEq,
            Eq,
            Hash,
            PartialOrd,
            Ord,
            DieselNewType,
            Serialize,
            Deserialize,
        )]
        pub struct $name(pub i64);

        impl fmt::Display for $name {
            /// `org:3`, `site:7`, `user:12`: the form audit records use as a target.
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($prefix, ":{}"), self.0)
            }
        }
    };
}

id_type!(OrganisationId, "org");
id_type!(SiteId, "site");
id_type!(UserId, "user");
id_type!(DeviceId, "device");
id_type!(AlertRuleId, "alert_rule");
id_type!(AlertId, "alert");
id_type!(FirmwareId, "firmware");
id_type!(RolloutId, "rollout");
id_type!(ConnectorId, "connector");
id_type!(AccessRequestId, "access_request");
id_type!(GrantId, "grant");
id_type!(MachineId, "machine");
id_type!(SessionId, "session");
id_type!(TokenId, "token");
