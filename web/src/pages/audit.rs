//! The audit viewer: the log filtered and paged, its chain verified on request, and the
//! filtered log exported.

use actix_web::{HttpRequest, web};
use appliance::audit::export::{self, ExportFilter};
use appliance::audit::verify::verify;
use appliance::keys::VerifyingKey;
use appliance::time::{format_us, parse_instant};
use appliance::{Actor, AuditEvent};
use askama::Template;
use serde::Deserialize;

use crate::client::source;
use crate::download::{attachment, export_format};
use crate::error::WebError;
use crate::render::{Nav, Page, html};
use crate::session::SignedIn;
use crate::state::AppState;

/// The audit viewer's filter, as typed in its form.
#[derive(Debug, Default, Deserialize)]
pub struct AuditQuery {
    #[serde(default)]
    since: String,
    #[serde(default)]
    until: String,
    #[serde(default)]
    actor: String,
    #[serde(default)]
    action: String,
    #[serde(default)]
    target: String,
    #[serde(default)]
    outcome: String,
    before: Option<i64>,
    verify: Option<String>,
    format: Option<String>,
}

fn some(text: &str) -> Option<String> {
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_owned())
}

impl AuditQuery {
    fn filter(&self) -> Result<ExportFilter, String> {
        let instant = |raw: &str| some(raw).map(|t| parse_instant(&t)).transpose();
        if !matches!(self.outcome.as_str(), "" | "success" | "failure" | "denied") {
            return Err(format!(
                "outcome {:?} is not one of success, failure, denied",
                self.outcome
            ));
        }
        Ok(ExportFilter {
            since_us: instant(&self.since)?,
            until_us: instant(&self.until)?,
            actor: some(&self.actor),
            action: some(&self.action),
            target: some(&self.target),
            outcome: some(&self.outcome),
        })
    }

    /// The filter as a query string, for paging and export links.
    fn query_string(&self) -> String {
        let pairs = [
            ("since", &self.since),
            ("until", &self.until),
            ("actor", &self.actor),
            ("action", &self.action),
            ("target", &self.target),
            ("outcome", &self.outcome),
        ];
        url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(
                pairs
                    .iter()
                    .filter(|(_, v)| !v.is_empty())
                    .map(|(k, v)| (*k, v.as_str())),
            )
            .finish()
    }
}

struct AuditRow {
    seq: i64,
    time: String,
    actor: String,
    source: String,
    action: String,
    target: String,
    outcome: String,
    details: String,
}

#[derive(Template)]
#[template(path = "audit.html")]
struct AuditPage {
    signed_in: Option<Nav>,
    filter: AuditQuery,
    query: String,
    rows: Vec<AuditRow>,
    next_before: Option<i64>,
    problem: Option<String>,
    verification: Option<(bool, String)>,
}

const AUDIT_PAGE_SIZE: i64 = 50;

/// The audit log covers the whole appliance, every organisation's actions in it: it is for
/// the administrators and auditors of the organisation that runs the appliance.
fn may_read_audit(user: &SignedIn) -> Result<(), WebError> {
    if user.can_read_audit() {
        Ok(())
    } else {
        Err(WebError::Forbidden(
            "The audit log is for the administrators and auditors of the organisation that runs this appliance.".into(),
        ))
    }
}

pub async fn audit_page(
    state: web::Data<AppState>,
    user: SignedIn,
    query: web::Query<AuditQuery>,
) -> Page {
    may_read_audit(&user)?;
    let query = query.into_inner();
    let (filter, problem) = match query.filter() {
        Ok(filter) => (filter, None),
        Err(problem) => (ExportFilter::default(), Some(problem)),
    };
    let (before, run_verify) = (query.before, query.verify.is_some());
    let (records, verification) = {
        let state = state.clone();
        web::block(move || -> appliance::error::Result<_> {
            let mut conn = state.app.store.conn()?;
            let records = export::page(&mut conn, &filter, before, AUDIT_PAGE_SIZE + 1)?;
            let verification = if run_verify {
                let key = VerifyingKey::load(&state.app.config.keys_dir())?;
                let head = state.app.audit.head_file().read()?;
                let report = verify(&mut conn, &key, head.as_ref())?;
                Some(match report.problem {
                    None => (
                        true,
                        format!(
                            "The chain is intact: {} records, {} signed checkpoints.",
                            report.records, report.checkpoints
                        ),
                    ),
                    Some(problem) => (false, format!("The chain is broken. {problem}")),
                })
            } else {
                None
            };
            Ok((records, verification))
        })
        .await??
    };
    let next_before =
        (records.len() as i64 > AUDIT_PAGE_SIZE).then(|| records[AUDIT_PAGE_SIZE as usize - 1].seq);
    let rows = records
        .into_iter()
        .take(AUDIT_PAGE_SIZE as usize)
        .map(|r| AuditRow {
            seq: r.seq,
            time: format_us(r.occurred_at_us),
            actor: format!("{}:{}", r.actor_kind, r.actor_id),
            source: r.source,
            action: r.action,
            target: r.target,
            outcome: r.outcome,
            details: r.details,
        })
        .collect();
    let page_query = query.query_string();
    html(&AuditPage {
        signed_in: Some(user.nav()),
        query: page_query,
        filter: query,
        rows,
        next_before,
        problem,
        verification,
    })
}

/// Streams the filtered log as CSV or JSONL: no cap on its size, and flat memory.
pub async fn audit_export(
    state: web::Data<AppState>,
    user: SignedIn,
    req: HttpRequest,
    query: web::Query<AuditQuery>,
) -> Page {
    may_read_audit(&user)?;
    let filter = query.filter().map_err(WebError::BadRequest)?;
    let (format, content_type, extension) = export_format(query.format.as_deref())?;
    let (state, actor, source) = (state.clone(), Actor::User(user.user.id), source(&req));
    let file_name = format!("plantgate-audit.{extension}");
    Ok(attachment(content_type, &file_name, move |writer| {
        let result = state
            .app
            .store
            .conn()
            .map_err(|e| e.to_string())
            .and_then(|mut conn| {
                export::export(&mut conn, &filter, format, writer).map_err(|e| e.to_string())
            });
        let event = match &result {
            Ok(count) => AuditEvent::new(actor, "audit.exported").source(source).details(serde_json::json!({
                "format": extension, "records": count, "via": "portal",
                "since": filter.since_us.map(format_us), "until": filter.until_us.map(format_us),
                "actor": filter.actor, "action": filter.action, "target": filter.target, "outcome": filter.outcome,
            })),
            Err(problem) => AuditEvent::new(actor, "audit.exported").source(source).outcome(appliance::Outcome::Failure)
                .details(serde_json::json!({ "format": extension, "error": problem })),
        };
        if let Err(err) = state.app.audit.record(event) {
            tracing::error!(error = %err, "could not audit an export");
        }
        result.map(|_| ())
    }))
}
