//! Rendering: templates become HTML responses, errors become message pages, and the page
//! header ([`Nav`]) every signed-in page carries.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use askama::Template;

use crate::error::WebError;

/// What a page handler answers: the page, or an error page.
pub type Page = Result<HttpResponse, WebError>;

#[derive(Debug, Template)]
#[template(path = "message.html")]
pub struct MessagePage<'a> {
    pub signed_in: Option<Nav>,
    pub heading: &'a str,
    pub text: &'a str,
    pub link: &'a str,
    pub link_text: &'a str,
}

impl ResponseError for WebError {
    fn status_code(&self) -> StatusCode {
        self.kind().status()
    }

    fn error_response(&self) -> HttpResponse {
        if let WebError::ConfirmFirst(confirm) = self {
            return see_other(confirm);
        }
        let text = self.to_string();
        let heading = match self {
            WebError::BadRequest(_) => "That did not work",
            WebError::Forbidden(_) => "Not allowed",
            WebError::Conflict(_) => "That cannot be done now",
            WebError::NotFound => "Not found",
            WebError::MethodNotAllowed(_) => "Not allowed",
            WebError::TooManyRequests(_) => "Slow down",
            WebError::StorageFull => "Storage full",
            WebError::Internal(_) | WebError::ConfirmFirst(_) => "Error",
        };
        let page = MessagePage {
            signed_in: None,
            heading,
            text: &text,
            link: "/",
            link_text: "Back to the portal",
        };
        let mut response = HttpResponse::build(self.status_code());
        if let WebError::TooManyRequests(seconds) = self {
            response.insert_header(("Retry-After", seconds.to_string()));
        }
        if let WebError::StorageFull = self {
            response.insert_header(("Retry-After", "60"));
        }
        if let WebError::MethodNotAllowed(allow) = self {
            response.insert_header((actix_web::http::header::ALLOW, allow.as_str()));
        }
        response
            .content_type("text/html; charset=utf-8")
            .body(page.render().unwrap_or(text))
    }
}

/// What the page header shows for a signed-in user.
#[derive(Debug, Clone)]
pub struct Nav {
    pub name: String,
    pub role: String,
    pub csrf: String,
    pub can_audit: bool,
    pub can_manage: bool,
    pub can_see_sites: bool,
    /// An administrator of the operator organisation: organisations and appliance settings.
    pub can_operate: bool,
    /// "Remote access active at ..." lines, shown on every page.
    pub banners: Vec<String>,
}

pub(crate) fn see_other(location: &str) -> HttpResponse {
    HttpResponse::SeeOther()
        .insert_header(("Location", location))
        .finish()
}

/// Renders a template into `response`, which already holds its status and any cookies:
/// the one way a page becomes HTML. A template that fails to render is an internal error,
/// never an empty page.
pub fn html_into(
    response: &mut actix_web::HttpResponseBuilder,
    template: &impl Template,
) -> Result<HttpResponse, WebError> {
    let body = template
        .render()
        .map_err(|err| WebError::Internal(err.to_string()))?;
    Ok(response.content_type("text/html; charset=utf-8").body(body))
}

/// 422 for a page shown again with the reason its form was refused, else 200.
pub fn status_for(problem: &Option<String>) -> StatusCode {
    if problem.is_some() {
        StatusCode::UNPROCESSABLE_ENTITY
    } else {
        StatusCode::OK
    }
}

/// Renders a template as an HTML response with `status`.
pub fn html_with_status(
    template: &impl Template,
    status: StatusCode,
) -> Result<HttpResponse, WebError> {
    html_into(&mut HttpResponse::build(status), template)
}

/// Renders a template as an HTML response.
pub fn html(template: &impl Template) -> Result<HttpResponse, WebError> {
    html_into(&mut HttpResponse::Ok(), template)
}
