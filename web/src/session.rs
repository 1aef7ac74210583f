//! Who is asking: the session cookie resumed into a [`SignedIn`] user (or a
//! [`PartlySignedIn`] one that still owes the second factor), with the session's CSRF token
//! and the permission checks pages make.

use actix_web::http::StatusCode;
use actix_web::{FromRequest, HttpRequest, HttpResponse, ResponseError, web};
use appliance::models::{Role, User};
use appliance::sessions::{self, Session};

use crate::error::WebError;
use crate::render::Nav;
use crate::state::AppState;

pub const SESSION_COOKIE: &str = "__Host-plantgate";
/// Marks a browser that signed in completely before (`appliance::lockout`).
pub const BROWSER_COOKIE: &str = "__Host-plantgate-browser";

/// A request from a signed-in user: the session is valid at the state's clock.
#[derive(Debug, Clone)]
pub struct SignedIn {
    pub user: User,
    pub role: Role,
    /// The user belongs to the organisation that owns the appliance.
    pub operator: bool,
    pub session: Session,
    /// Ties forms to this session; see [`SignedIn::check_csrf`].
    pub csrf: String,
    /// Remote sessions active now at the user's sites, for the banner.
    pub banners: Vec<String>,
}

/// The form token of a session: derived from its secret id, so a page that cannot read
/// the cookie cannot know it.
pub fn csrf_token(session_token: &str) -> String {
    hex::encode(openssl::sha::sha256(
        format!("plantgate-csrf\0{session_token}").as_bytes(),
    ))
}

impl SignedIn {
    pub fn nav(&self) -> Nav {
        Nav {
            name: self.user.name.clone(),
            role: self.role.to_string(),
            csrf: self.csrf.clone(),
            can_audit: self.can_read_audit(),
            can_manage: self.role == Role::Admin,
            can_see_sites: matches!(self.role, Role::Admin | Role::Approver),
            can_operate: self.is_appliance_admin(),
            banners: self.banners.clone(),
        }
    }

    /// For sensitive actions: the password must have been given recently, or the user is
    /// sent to confirm it, and back afterwards.
    pub fn require_recent_authentication(
        &self,
        state: &AppState,
        confirm: &'static str,
    ) -> Result<(), WebError> {
        if state.now() - self.session.last_authenticated_us() <= state.reauthenticate_us {
            Ok(())
        } else {
            Err(WebError::ConfirmFirst(confirm))
        }
    }

    /// Refuses anyone but an administrator; `doing` says what, as in "Managing users".
    pub fn admin_only(&self, doing: &str) -> Result<(), WebError> {
        if self.role == Role::Admin {
            Ok(())
        } else {
            Err(WebError::Forbidden(format!(
                "{doing} is for administrators."
            )))
        }
    }

    /// The audit log holds every organisation's actions: only the operator organisation's
    /// administrators and auditors read it.
    pub fn can_read_audit(&self) -> bool {
        matches!(self.role, Role::Admin | Role::Auditor) && self.operator
    }

    /// An administrator of the organisation that owns the appliance.
    pub fn is_appliance_admin(&self) -> bool {
        self.role == Role::Admin && self.operator
    }

    /// Refuses anyone but an administrator of the operator organisation: organisations, the
    /// certificate and the mail relay concern the whole appliance.
    pub fn appliance_admin_only(&self, doing: &str) -> Result<(), WebError> {
        self.admin_only(doing)?;
        if self.operator {
            Ok(())
        } else {
            Err(WebError::Forbidden(format!(
                "{doing} is for the administrators of the organisation that runs this appliance."
            )))
        }
    }

    pub fn check_csrf(&self, presented: &str) -> Result<(), WebError> {
        if presented.len() == self.csrf.len()
            && openssl::memcmp::eq(presented.as_bytes(), self.csrf.as_bytes())
        {
            Ok(())
        } else {
            Err(WebError::Forbidden(
                "The form was stale or not from this session; reload the page and try again."
                    .into(),
            ))
        }
    }
}

/// Why a page needs a (complete or recent) sign-in first: answered with a redirect to the
/// step that is missing: the login page, the second factor, or confirming the password.
#[derive(Debug)]
pub struct NeedsLogin(pub &'static str);

impl std::fmt::Display for NeedsLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "sign in first ({})", self.0)
    }
}

impl ResponseError for NeedsLogin {
    fn status_code(&self) -> StatusCode {
        StatusCode::SEE_OTHER
    }

    fn error_response(&self) -> HttpResponse {
        HttpResponse::SeeOther()
            .insert_header(("Location", self.0))
            .finish()
    }
}

/// A session that passed its password but may still owe the second factor: enough for the
/// second-factor pages and nothing else.
#[derive(Debug, Clone)]
pub struct PartlySignedIn(pub SignedIn);

type Extracted<T> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, actix_web::Error>>>>;

/// Resumes the session named by the request's cookie, at the state's clock.
fn resume_session(req: &HttpRequest) -> Extracted<SignedIn> {
    let state = req.app_data::<web::Data<AppState>>().cloned();
    let token = req.cookie(SESSION_COOKIE).map(|c| c.value().to_owned());
    Box::pin(async move {
        let (Some(state), Some(token)) = (state, token) else {
            return Err(NeedsLogin("/login").into());
        };
        let now = state.now();
        let limits = state.limits;
        let resumed = {
            let state = state.clone();
            let token = token.clone();
            web::block(move || -> appliance::error::Result<_> {
                let resumed = sessions::resume(&state.app.audit, &token, now, limits)?;
                let (banners, operator) = match &resumed {
                    Ok((_, user)) => {
                        let mut conn = state.app.store.conn()?;
                        let operator =
                            appliance::models::Organisation::find(&mut conn, user.organisation_id)?
                                .operator;
                        (appliance::access::banners(&mut conn, user)?, operator)
                    }
                    Err(_) => (Vec::new(), false),
                };
                Ok(resumed.map(|ok| (ok, banners, operator)))
            })
            .await
            .map_err(WebError::from)?
        };
        match resumed.map_err(WebError::from)? {
            Ok(((session, user), banners, operator)) => {
                let role = user.role().map_err(WebError::from)?;
                Ok(SignedIn {
                    csrf: csrf_token(&token),
                    user,
                    role,
                    operator,
                    session,
                    banners,
                })
            }
            Err(_) => Err(NeedsLogin("/login").into()),
        }
    })
}

impl FromRequest for SignedIn {
    type Error = actix_web::Error;
    type Future = Extracted<SignedIn>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        let resuming = resume_session(req);
        Box::pin(async move {
            let signed_in = resuming.await?;
            match signed_in.session.second_factor.as_str() {
                "done" => Ok(signed_in),
                "pending" => Err(NeedsLogin("/login/second-factor").into()),
                _ => Err(NeedsLogin("/account/second-factor").into()),
            }
        })
    }
}

impl FromRequest for PartlySignedIn {
    type Error = actix_web::Error;
    type Future = Extracted<PartlySignedIn>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        let resuming = resume_session(req);
        Box::pin(async move { resuming.await.map(PartlySignedIn) })
    }
}
