//! The cookies of signing in: the session's, and the known-browser one that lets this
//! browser's password attempts count apart from strangers'.

use actix_web::HttpRequest;
use actix_web::cookie::{Cookie, SameSite};
use appliance::sessions;

use crate::session::{BROWSER_COOKIE, SESSION_COOKIE};

/// The session cookie: host-only, HTTPS-only, invisible to scripts, never sent cross-site.
pub(super) fn session_cookie(
    token: &sessions::SessionToken,
    limits: sessions::SessionLimits,
) -> Cookie<'static> {
    Cookie::build(SESSION_COOKIE, token.reveal().to_owned())
        .path("/")
        .secure(true)
        .http_only(true)
        .same_site(SameSite::Strict)
        .max_age(actix_web::cookie::time::Duration::seconds(
            limits.absolute_us / 1_000_000,
        ))
        .finish()
}

/// The known-browser cookie: set at every complete sign-in, it lets this browser's
/// password attempts count apart from strangers' (`appliance::lockout`). Host-only,
/// HTTPS-only, invisible to scripts, never sent cross-site; it outlives sessions and logout.
pub(super) fn browser_cookie(token: String) -> Cookie<'static> {
    Cookie::build(BROWSER_COOKIE, token)
        .path("/")
        .secure(true)
        .http_only(true)
        .same_site(SameSite::Strict)
        .max_age(actix_web::cookie::time::Duration::days(
            appliance::lockout::KNOWN_BROWSER_DAYS,
        ))
        .finish()
}

/// The known-browser cookie the request carries, if any.
pub(super) fn presented_browser(req: &HttpRequest) -> Option<String> {
    req.cookie(BROWSER_COOKIE).map(|c| c.value().to_owned())
}

/// Removes the session cookie from the browser.
pub(super) fn ended_session_cookie() -> Cookie<'static> {
    let mut gone = Cookie::build(SESSION_COOKIE, "")
        .path("/")
        .secure(true)
        .http_only(true)
        .same_site(SameSite::Strict)
        .finish();
    gone.make_removal();
    gone
}
