//! The portal's own pages: first setup, signing in and out, the second factor, one's
//! sessions and password, the users of one's organisation, invitations, and the audit
//! viewer. Database work runs in `web::block`, off the async workers.

pub mod audit;
mod cookies;
pub mod home;
pub mod invitation;
pub mod login;
pub mod password;
pub mod second_factor;
pub mod sessions;
pub mod setup;
mod throttle;
pub mod users;

pub use login::LOGIN_REFUSED;
