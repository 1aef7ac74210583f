//! One refusal of the core answers alike wherever it happens: the same HTTP status on a
//! portal page, in the REST API and on a firmware upload (whose handlers answer with the
//! portal's page error or the API's error), the API's body naming the core's own code and
//! the page showing the core's words. Before, a conflict was 400 on a page and 409 in the
//! API, and a refusal by role was 500 in the API.
//!
//! The responses are the real ones the portal sends (`ResponseError::error_response` of
//! its two error types); no server is needed to build them.
#![allow(clippy::expect_used, clippy::unwrap_used)] // test code

use actix_web::ResponseError;
use actix_web::body::MessageBody;
use actix_web::http::StatusCode;
use appliance::Error;
use portal::api::ApiError;
use portal::error::{Kind, WebError};

fn body_text(response: actix_web::HttpResponse) -> String {
    let bytes = response.into_body().try_into_bytes().expect("a whole body");
    String::from_utf8(bytes.to_vec()).expect("UTF-8")
}

#[test]
fn each_core_refusal_gets_one_status_on_pages_and_in_the_api() {
    let refusals = [
        (
            Error::invalid("duration", "must be between 5 and 480 minutes"),
            StatusCode::BAD_REQUEST,
            "duration: must be between 5 and 480 minutes",
        ),
        (Error::NotFound("request"), StatusCode::NOT_FOUND, ""),
        (
            Error::Conflict("request 7 has already been decided".into()),
            StatusCode::CONFLICT,
            "request 7 has already been decided",
        ),
        (
            Error::Forbidden("only the site's approvers can turn its key switch".into()),
            StatusCode::FORBIDDEN,
            "only the site&#39;s approvers can turn its key switch",
        ),
        (
            Error::StorageFull {
                what: "the audit log",
            },
            StatusCode::SERVICE_UNAVAILABLE,
            "",
        ),
    ];
    let mut api_bodies = String::new();
    for (refusal, status, words) in refusals {
        let code = refusal.code();
        let described = refusal.to_string();
        let kind = Kind::of(&refusal);
        assert_eq!(kind.status(), status, "the mapping for {described}");
        let page = WebError::from(clone(&refusal));
        let api = ApiError::from(refusal);
        assert_eq!((page.kind(), api.kind()), (kind, kind), "{described}");
        assert_eq!(page.status_code(), status, "page status for {described}");
        assert_eq!(api.status_code(), status, "API status for {described}");

        let page = page.error_response();
        assert_eq!(page.status(), status, "the page is sent with {status}");
        let html = body_text(page);
        assert!(
            html.contains(words),
            "the page does not show the core's words {words:?}: {html}"
        );

        let api = api.error_response();
        assert_eq!(api.status(), status, "the API answer is sent with {status}");
        let text = body_text(api);
        api_bodies.push_str(&format!("{} {text}\n", status.as_u16()));
        let json: serde_json::Value = serde_json::from_str(&text).expect("the API answers JSON");
        assert_eq!(
            json["error"], code,
            "the API names the core's code for {described}"
        );
    }
    // The bodies themselves, as API clients parse them.
    testkit::snapshot::assert_snapshot(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/snapshots"),
        "refusal-bodies.txt",
        &api_bodies,
    );
}

#[test]
fn what_is_not_a_refusal_is_an_internal_error_everywhere_and_says_no_more() {
    let broken = Error::Key {
        path: "/var/lib/plantgate/keys/device-ca.key".into(),
        problem: "unreadable".into(),
    };
    let page = WebError::from(clone(&broken)).error_response();
    let api = ApiError::from(broken).error_response();
    assert_eq!(page.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(api.status(), StatusCode::INTERNAL_SERVER_ERROR);
    for body in [body_text(page), body_text(api)] {
        assert!(
            !body.contains("/var/lib/plantgate"),
            "a path on the box reached the client: {body}"
        );
    }
}

/// `appliance::Error` is not `Clone` (it can hold I/O errors); the refusals above can be
/// rebuilt from their parts.
fn clone(err: &Error) -> Error {
    match err {
        Error::Invalid { field, problem } => Error::invalid(field, problem.clone()),
        Error::NotFound(what) => Error::NotFound(what),
        Error::Conflict(message) => Error::Conflict(message.clone()),
        Error::Forbidden(message) => Error::Forbidden(message.clone()),
        Error::StorageFull { what } => Error::StorageFull { what },
        Error::Key { path, problem } => Error::Key {
            path: path.clone(),
            problem: problem.clone(),
        },
        other => panic!("no way to rebuild {other}"),
    }
}
