//! Who calls the API: a live bearer token and its owner, within the rate limits per address
//! and per token.

use std::net::IpAddr;

use actix_web::{FromRequest, HttpRequest, web};
use appliance::models::{Role, User};
use appliance::tokens::{self, ApiToken};

use super::error::ApiError;
use crate::state::AppState;

/// An API request with a live token, within its rate limits.
#[derive(Debug, Clone)]
pub struct ApiCaller {
    pub token: ApiToken,
    pub user: User,
    pub role: Role,
}

impl ApiCaller {
    pub(crate) fn require(&self, scope: &'static str) -> Result<(), ApiError> {
        if self.token.allows(scope) {
            Ok(())
        } else {
            Err(ApiError::MissingScope(scope))
        }
    }

    /// The scope, on an administrator's token: other roles' tokens are refused as if they
    /// lacked it, with `for_admin` saying why (`"firmware:write (for an administrator)"`).
    pub(crate) fn require_administrator(
        &self,
        scope: &'static str,
        for_admin: &'static str,
    ) -> Result<(), ApiError> {
        self.require(scope)?;
        if self.role != Role::Admin {
            return Err(ApiError::MissingScope(for_admin));
        }
        Ok(())
    }
}

impl FromRequest for ApiCaller {
    type Error = actix_web::Error;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Self, Self::Error>>>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        let state = req.app_data::<web::Data<AppState>>().cloned();
        let secret = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(|s| s.trim().to_owned());
        let address: Option<IpAddr> = req.peer_addr().map(|a| a.ip());
        Box::pin(async move {
            let Some(state) = state else {
                return Err(ApiError::Internal.into());
            };
            let now = state.now();
            let per_minute = state.api_requests_per_minute;
            if let Some(address) = address {
                state
                    .api_by_address
                    .hit(address, per_minute, now)
                    .map_err(ApiError::RateLimited)?;
            }
            let Some(secret) = secret else {
                return Err(ApiError::MissingToken.into());
            };
            let found = {
                let state = state.clone();
                web::block(move || {
                    tokens::authenticate(&mut *state.app.store.conn()?, &secret, now)
                })
                .await
                .map_err(ApiError::from)?
            };
            let Some((token, user)) = found.map_err(ApiError::from)? else {
                return Err(ApiError::InvalidToken.into());
            };
            state
                .api_by_token
                .hit(token.id, per_minute, now)
                .map_err(ApiError::RateLimited)?;
            let role = user.role().map_err(ApiError::from)?;
            Ok(ApiCaller { token, user, role })
        })
    }
}
