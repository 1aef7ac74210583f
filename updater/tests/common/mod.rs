//! Test support: the shared harness (`testkit::store`) and the `on_both_backends!` macro.
#![allow(dead_code)] // each test binary uses part of this

pub mod fixtures;

pub use testkit::store::*;

/// Runs each named test function on SQLite and on PostgreSQL.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $( #[test] fn $name() { super::$name($crate::common::Backend::Sqlite) } )*
        }
        mod postgres {
            $( #[test] fn $name() { super::$name($crate::common::Backend::Postgres) } )*
        }
    };
}
