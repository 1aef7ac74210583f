//! Accounts: who may sign in, how, and what an administrator changes about them.
//!
//! - `passwords`: the password policy, hashing, and setting a password;
//! - `login`: sign-in, counting wrong passwords, locking, and known browsers;
//! - `users`: an organisation's accounts, disabling, changing and deleting them;
//! - `invitations`: the one-time link that sets a new account's first password;
//! - `organisations`: creating an organisation with its first administrator, and
//!   first-run setup.
//!
//! Passwords are hashed with Argon2id. A new password must meet [`PasswordPolicy`] and must
//! not be one of the 100,000 most common passwords shipped in `data/common-passwords.txt`.
//! A login's outcome is recorded in the audit log with its real reason, but the caller only
//! learns success or refusal, so no message reveals whether an account exists.

mod invitations;
mod login;
mod organisations;
mod passwords;
mod users;

pub(crate) use invitations::invite_in;
pub use invitations::{accept_invitation, invitation_purpose};
pub use login::{
    Attempt, Lockout, LoginResult, TOO_BUSY, login, login_from, login_summarised, remember_browser,
    unlock,
};
pub use organisations::{
    FirstAdmin, NewOrganisation, create_organisation, needs_setup, setup_first_admin,
};
pub use passwords::{
    MAX_PASSWORD_CHARS, MIN_PASSWORD_CHARS, PasswordPolicy, hash_password, is_common, set_password,
};
pub use users::{
    Account, AccountChange, accounts_of, delete_account, set_disabled, update_account,
};
