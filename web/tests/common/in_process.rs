//! The portal in the test's own process: actix-web's test service over the real application
//! (`portal::app`: its middleware and its one route table) and a real store (testkit's
//! `TestAppliance`, SQLite or PostgreSQL). For page and API behaviour that needs neither TLS,
//! a browser nor a second process; those stay with the spawned binary ([`super::Portal`]).
//! Requests come from 127.0.0.1 with the portal's own `Host` and `Origin`, as a browser on
//! its pages sends them. The portal's background worker runs as in the binary (it sends the
//! emails the outbox owes through the relay in `[smtp]`, and runs the access tick), and
//! stops when the harness is dropped.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use actix_web::dev::{Service, ServiceResponse};
use actix_web::http::header;
use actix_web::test::{self, TestRequest};
use actix_web::web;
use appliance::enrolment::{self, FIRST_ADMIN};
use appliance::{Actor, Appliance};
use portal::AppState;
use testkit::store::{Backend, TestAppliance};

/// What the in-process portal is told it listens on; nothing is bound.
const HOST: &str = "localhost:8443";

pub struct InProcess {
    /// First, so that the worker stops before the store it works on goes.
    state: web::Data<AppState>,
    pub t: TestAppliance,
    /// The appliance the portal runs on (`t.app`).
    pub app: Appliance,
    /// A first-admin enrolment token, valid for an hour.
    pub token: String,
    /// Cookie jars by name, one per browser: what the portal set is sent back.
    jars: Mutex<BTreeMap<String, BTreeMap<String, String>>>,
}

/// An answer, with what the tests look at.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub location: Option<String>,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Answer {
    /// The first value of the header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

impl InProcess {
    pub fn new(backend: Backend) -> InProcess {
        InProcess::with_web_settings(backend, "")
    }

    /// With more `[web]` settings, such as `logins_per_minute = 1000`, and after them other
    /// sections (`[smtp]`, `[access]`). No role needs a second factor unless they say so, as
    /// with the spawned portal.
    pub fn with_web_settings(backend: Backend, web_settings: &str) -> InProcess {
        let second_factor = if web_settings.contains("second_factor_roles") {
            ""
        } else {
            "second_factor_roles = []"
        };
        let t = TestAppliance::with_settings(
            backend,
            &format!(
                "\n[web]\nhttps_listen = \"127.0.0.1:8443\"\nhost_name = \"localhost\"\n\
                 {second_factor}\n{web_settings}\n"
            ),
        );
        let (token, _) = enrolment::issue(
            &t.app.audit,
            &Actor::System("test".into()),
            FIRST_ADMIN,
            3_600_000_000,
            appliance::time::now_us(),
        )
        .expect("enrolment token");
        let mut state = AppState::new(t.app.clone(), Arc::new(appliance::time::now_us));
        state.worker = portal::worker::start(t.app.clone(), None).expect("the portal's worker");
        InProcess {
            state: web::Data::new(state),
            app: t.app.clone(),
            t,
            token: token.reveal().to_owned(),
            jars: Mutex::default(),
        }
    }

    /// Sends `request` from the browser with cookie jar `jar` (`None`: without cookies,
    /// keeping none).
    async fn send(&self, jar: Option<&str>, request: TestRequest) -> Answer {
        let service = test::init_service(portal::app(self.state.clone())).await;
        let mut request = request
            .peer_addr("127.0.0.1:40000".parse().expect("address"))
            .insert_header((header::HOST, HOST));
        if let Some(jar) = jar {
            let jars = self.jars.lock().expect("cookie jars");
            for (name, value) in jars.get(jar).into_iter().flatten() {
                request =
                    request.cookie(actix_web::cookie::Cookie::new(name.clone(), value.clone()));
            }
        }
        let request = request.to_request();
        // A middleware's refusal is an `Err` here; the server would answer it as a response.
        let response = match service.call(request).await {
            Ok(response) => response.map_into_boxed_body(),
            Err(err) => ServiceResponse::from_err(err, TestRequest::default().to_http_request()),
        };
        if let Some(jar) = jar {
            let mut jars = self.jars.lock().expect("cookie jars");
            let cookies = jars.entry(jar.to_owned()).or_default();
            for cookie in response.response().cookies() {
                if cookie.value().is_empty() {
                    cookies.remove(cookie.name());
                } else {
                    cookies.insert(cookie.name().to_owned(), cookie.value().to_owned());
                }
            }
        }
        let status = response.status().as_u16();
        let location = response
            .headers()
            .get(header::LOCATION)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        let headers = response
            .headers()
            .iter()
            .map(|(name, value)| {
                (
                    name.as_str().to_owned(),
                    String::from_utf8_lossy(value.as_bytes()).into_owned(),
                )
            })
            .collect();
        let bytes = actix_web::body::to_bytes(response.into_body())
            .await
            .unwrap_or_else(|_| panic!("the body could not be read"));
        Answer {
            status,
            location,
            headers,
            body: String::from_utf8_lossy(&bytes).into_owned(),
        }
    }

    pub async fn get(&self, jar: Option<&str>, path: &str) -> Answer {
        self.send(jar, TestRequest::get().uri(path)).await
    }

    /// A form post from the portal's own page (with its `Origin`, as a browser sends it).
    pub async fn post(&self, jar: Option<&str>, path: &str, fields: &[(&str, &str)]) -> Answer {
        self.send(
            jar,
            TestRequest::post()
                .uri(path)
                .insert_header((header::ORIGIN, format!("https://{HOST}")))
                .set_form(fields),
        )
        .await
    }

    /// First-run setup of the administrator (`super::EMAIL`, `super::PASSWORD`).
    pub async fn setup_admin(&self) {
        let reply = self
            .post(
                None,
                "/setup",
                &[
                    ("token", &self.token),
                    ("organisation", "Moulding Plant Nord"),
                    ("name", "Ada Admin"),
                    ("email", super::EMAIL),
                    ("password", super::PASSWORD),
                ],
            )
            .await;
        assert_eq!(reply.status, 303, "{}", reply.body);
    }

    pub async fn login(&self, jar: &str, email: &str, password: &str) -> Answer {
        self.post(
            Some(jar),
            "/login",
            &[("email", email), ("password", password)],
        )
        .await
    }

    /// The CSRF token in a page's forms.
    pub fn csrf_from(&self, page: &str) -> String {
        super::csrf_in(page)
    }

    /// `GET path` with the API token `token` (none: without one): the status and the JSON
    /// body (`null` when the body is not JSON).
    pub async fn api(&self, token: Option<&str>, path: &str) -> (u16, serde_json::Value) {
        let reply = self.get_with_token(token, path).await;
        (
            reply.status,
            serde_json::from_str(&reply.body).unwrap_or(serde_json::Value::Null),
        )
    }

    /// `GET path` with the API token `token` (none: without one), as it was answered.
    pub async fn get_with_token(&self, token: Option<&str>, path: &str) -> Answer {
        let mut request = TestRequest::get().uri(path);
        if let Some(token) = token {
            request = request.insert_header((header::AUTHORIZATION, format!("Bearer {token}")));
        }
        self.send(None, request).await
    }

    /// A post of `body` as it is, as a form from the portal's own page: for bodies a form
    /// cannot hold, such as bytes that are not UTF-8.
    pub async fn post_raw(&self, jar: Option<&str>, path: &str, body: &[u8]) -> Answer {
        self.send(
            jar,
            TestRequest::post()
                .uri(path)
                .insert_header((header::ORIGIN, format!("https://{HOST}")))
                .insert_header((header::CONTENT_TYPE, "application/x-www-form-urlencoded"))
                .set_payload(body.to_vec()),
        )
        .await
    }

    /// A token for the first administrator with `scopes`, issued `age_days` ago for `days`.
    pub fn token(
        &self,
        scopes: &[&str],
        days: u32,
        age_days: i64,
    ) -> (String, appliance::ids::TokenId) {
        super::first_admin_token(&self.app, scopes, days, age_days)
    }

    /// The CSRF token of a signed-in browser's forms.
    pub async fn csrf(&self, jar: &str) -> String {
        let page = self.get(Some(jar), "/sessions").await;
        let at = page
            .body
            .find("name=\"csrf\" value=\"")
            .unwrap_or_else(|| panic!("no csrf field for {jar}: {}", page.body))
            + 19;
        page.body[at..at + 64].to_owned()
    }

    /// The audit log's actions, oldest first.
    pub fn actions(&self) -> Vec<String> {
        super::audit_actions(&self.app)
    }
}
