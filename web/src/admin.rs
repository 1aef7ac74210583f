//! The appliance's own administration, for the administrators of the organisation that runs
//! it: the other organisations (tenants such as a contractor firm), the portal's TLS
//! certificate, the mail relay, and every service's recent warnings and errors. Every page
//! is a sensitive action: it asks for the password again once the last check is stale.

use actix_web::{HttpRequest, web};
use appliance::accounts;
use appliance::ids::OrganisationId;
use appliance::models::Organisation;
use appliance::settings::{self, RelayChange};
use appliance::tls::CertificateSummary;
use appliance::{Actor, AuditEvent, Outcome};
use askama::Template;
use serde::Deserialize;

use crate::client::source;
use crate::error::WebError;
use crate::forms::{CsrfForm, Problems};
use crate::render::{Nav, Page, html_with_status, see_other};
use crate::session::SignedIn;
use crate::state::AppState;

/// Checks who is asking, the form's token when there is one, and how fresh their password
/// is (a stale one is sent to confirm it first).
fn gate(
    state: &AppState,
    user: &SignedIn,
    csrf: Option<&str>,
    confirm: &'static str,
) -> Result<(), WebError> {
    user.appliance_admin_only("Running the appliance")?;
    if let Some(csrf) = csrf {
        user.check_csrf(csrf)?;
    }
    user.require_recent_authentication(state, confirm)
}

const CONFIRM_FOR_ORGANISATIONS: &str = "/account/confirm?next=organisations";
const CONFIRM_FOR_SETTINGS: &str = "/account/confirm?next=settings";
const CONFIRM_FOR_ERRORS: &str = "/account/confirm?next=errors";

struct OrganisationRow {
    id: i64,
    name: String,
    operator: bool,
    disabled: bool,
    users: usize,
    sites: usize,
}

#[derive(Template)]
#[template(path = "organisations.html")]
struct OrganisationsPage {
    signed_in: Option<Nav>,
    csrf: String,
    rows: Vec<OrganisationRow>,
    problems: Problems,
    /// The create form as it was sent, when it is shown again.
    name: String,
    admin_name: String,
    admin_email: String,
    created: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct OrganisationForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    admin_name: String,
    #[serde(default)]
    admin_email: String,
}

async fn organisations_with(
    state: &web::Data<AppState>,
    user: &SignedIn,
    problems: Problems,
    form: OrganisationForm,
    created: Option<String>,
) -> Page {
    let app = state.app.clone();
    let rows = web::block(move || -> appliance::error::Result<Vec<OrganisationRow>> {
        let mut conn = app.store.conn()?;
        Organisation::list(&mut conn)?
            .into_iter()
            .map(|org| {
                Ok(OrganisationRow {
                    users: accounts::accounts_of(&mut conn, org.id)?.len(),
                    sites: appliance::models::Site::list_for(&mut conn, org.id)?.len(),
                    id: org.id.0,
                    name: org.name,
                    operator: org.operator,
                    disabled: org.disabled_at_us.is_some(),
                })
            })
            .collect()
    })
    .await??;
    let status = problems.status();
    html_with_status(
        &OrganisationsPage {
            signed_in: Some(user.nav()),
            csrf: user.csrf.clone(),
            rows,
            problems,
            name: form.name,
            admin_name: form.admin_name,
            admin_email: form.admin_email,
            created,
        },
        status,
    )
}

pub async fn organisations_page(state: web::Data<AppState>, user: SignedIn) -> Page {
    gate(&state, &user, None, CONFIRM_FOR_ORGANISATIONS)?;
    organisations_with(
        &state,
        &user,
        Problems::default(),
        OrganisationForm::default(),
        None,
    )
    .await
}

/// Creates an organisation and invites its first administrator by email.
pub async fn create_organisation(
    state: web::Data<AppState>,
    user: SignedIn,
    req: HttpRequest,
    form: web::Form<OrganisationForm>,
) -> Page {
    gate(&state, &user, Some(&form.csrf), CONFIRM_FOR_ORGANISATIONS)?;
    let form = form.into_inner();
    let (app, actor, from, now) = (
        state.app.clone(),
        Actor::User(user.user.id),
        source(&req),
        state.now(),
    );
    let request = accounts::NewOrganisation {
        name: form.name.clone(),
        admin_name: form.admin_name.clone(),
        admin_email: form.admin_email.clone(),
    };
    let created = web::block(move || {
        accounts::create_organisation(&app.audit, &actor, &app.config, &request, &from, now)
    })
    .await?;
    match created {
        Ok((org, admin)) => {
            state.worker.poke();
            let done = format!(
                "{} was created; {} was sent a link to set their password.",
                org.name, admin.email
            );
            organisations_with(
                &state,
                &user,
                Problems::default(),
                OrganisationForm::default(),
                Some(done),
            )
            .await
        }
        Err(err) => organisations_with(&state, &user, Problems::of(err)?, form, None).await,
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct ChangeOrganisationForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    name: String,
}

/// Renames, disables, enables or deletes an organisation.
pub async fn change_organisation(
    state: web::Data<AppState>,
    user: SignedIn,
    path: web::Path<(i64, String)>,
    form: web::Form<ChangeOrganisationForm>,
) -> Page {
    gate(&state, &user, Some(&form.csrf), CONFIRM_FOR_ORGANISATIONS)?;
    let (id, change) = path.into_inner();
    let (id, name) = (OrganisationId(id), form.into_inner().name);
    let (app, actor, now) = (state.app.clone(), Actor::User(user.user.id), state.now());
    let done = web::block(move || match change.as_str() {
        "rename" => Organisation::rename(&app.audit, &actor, id, &name).map(|_| ()),
        "disable" => Organisation::set_disabled(&app.audit, &actor, id, true, now).map(|_| ()),
        "enable" => Organisation::set_disabled(&app.audit, &actor, id, false, now).map(|_| ()),
        "delete" => Organisation::delete(&app.audit, &actor, id),
        _ => Err(appliance::Error::NotFound("action")),
    })
    .await?;
    match done {
        Ok(()) => {
            // Disabling revokes the organisation's remote sessions at the worker's tick.
            state.worker.poke();
            Ok(see_other("/organisations"))
        }
        Err(err) => {
            // Shown above the table, not beside the "add an organisation" form's fields.
            let problem = Problems::of(err)?.other(&[]).unwrap_or_default();
            let problems = Problems::general(problem);
            organisations_with(&state, &user, problems, OrganisationForm::default(), None).await
        }
    }
}

#[derive(Template)]
#[template(path = "settings.html")]
struct SettingsPage {
    signed_in: Option<Nav>,
    csrf: String,
    certificate: Option<CertificateSummary>,
    certificate_problems: Problems,
    certificate_done: bool,
    relay: RelayView,
    mail_problems: Problems,
    mail_done: Option<String>,
    storage: StorageView,
    storage_problems: Problems,
    storage_done: bool,
}

/// What the telemetry storage card shows.
#[derive(Debug, Clone, Default)]
struct StorageView {
    /// The budget in force, MiB; empty for none.
    budget_mib: String,
    used: String,
    readings: i64,
    last_day: i64,
    /// "About N days", when there is a budget and a pace.
    days: Option<String>,
    postgres: bool,
}

fn mib(bytes: i64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// The mail form's values: the relay in force, or what was sent when it is shown again.
/// The password is never shown, only whether one is stored.
#[derive(Debug, Clone, Default)]
struct RelayView {
    host: String,
    port: String,
    security: String,
    username: String,
    has_password: bool,
    from: String,
    from_portal: bool,
}

#[derive(Default)]
struct SettingsOutcome {
    certificate_problems: Problems,
    certificate_done: bool,
    mail_problems: Problems,
    mail_done: Option<String>,
    /// The mail form as sent, when it is shown again with its problems.
    mail_form: Option<RelayView>,
    storage_problems: Problems,
    storage_done: bool,
}

async fn settings_with(
    state: &web::Data<AppState>,
    user: &SignedIn,
    outcome: SettingsOutcome,
) -> Page {
    let (state2, now) = (state.clone(), state.now());
    let (certificate, relay, storage) = web::block(move || -> appliance::error::Result<_> {
        let config = &state2.app.config;
        let certificate = CertificateSummary::read(&config.portal_certificate()).ok();
        let mut conn = state2.app.store.conn()?;
        let relay = settings::relay(&mut conn, config, &state2.relay_key()?)?;
        let budget = settings::telemetry_budget_mib(&mut conn, config)?;
        let outlook =
            appliance::retention::outlook(&mut conn, budget.map(settings::mib_bytes), now)?;
        let storage = StorageView {
            budget_mib: budget.map(|b| b.to_string()).unwrap_or_default(),
            used: outlook.used_bytes.map(mib).unwrap_or_default(),
            readings: outlook.readings,
            last_day: outlook.last_day,
            days: outlook.days.map(|d| format!("about {d:.0} days")),
            postgres: outlook.used_bytes.is_none(),
        };
        Ok((certificate, relay, storage))
    })
    .await??;
    let in_force = RelayView {
        host: relay.smtp.host.clone().unwrap_or_default(),
        port: relay.smtp.port.to_string(),
        security: security_name(relay.smtp.security).to_owned(),
        username: relay.smtp.username.clone().unwrap_or_default(),
        has_password: relay.smtp.password.is_some(),
        from: relay.smtp.from.clone(),
        from_portal: relay.saved_at_us.is_some(),
    };
    let relay = outcome.mail_form.unwrap_or(in_force);
    let status = if outcome.certificate_problems.is_empty()
        && outcome.mail_problems.is_empty()
        && outcome.storage_problems.is_empty()
    {
        actix_web::http::StatusCode::OK
    } else {
        actix_web::http::StatusCode::UNPROCESSABLE_ENTITY
    };
    html_with_status(
        &SettingsPage {
            signed_in: Some(user.nav()),
            csrf: user.csrf.clone(),
            certificate,
            certificate_problems: outcome.certificate_problems,
            certificate_done: outcome.certificate_done,
            relay,
            mail_problems: outcome.mail_problems,
            mail_done: outcome.mail_done,
            storage,
            storage_problems: outcome.storage_problems,
            storage_done: outcome.storage_done,
        },
        status,
    )
}

fn security_name(security: appliance::config::SmtpSecurity) -> &'static str {
    match security {
        appliance::config::SmtpSecurity::None => "none",
        appliance::config::SmtpSecurity::Starttls => "starttls",
        appliance::config::SmtpSecurity::Tls => "tls",
    }
}

pub async fn settings_page(state: web::Data<AppState>, user: SignedIn) -> Page {
    gate(&state, &user, None, CONFIRM_FOR_SETTINGS)?;
    settings_with(&state, &user, SettingsOutcome::default()).await
}

#[derive(Debug, Default, Deserialize)]
pub struct CertificateForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    certificate: String,
    #[serde(default)]
    private_key: String,
}

/// Installs a certificate and key pasted as PEM; the listener serves it from the next
/// connection on. Nothing is written unless both parse, belong together and are valid now.
pub async fn replace_certificate(
    state: web::Data<AppState>,
    user: SignedIn,
    req: HttpRequest,
    form: web::Form<CertificateForm>,
) -> Page {
    gate(&state, &user, Some(&form.csrf), CONFIRM_FOR_SETTINGS)?;
    let form = form.into_inner();
    let (app, actor, from) = (state.app.clone(), Actor::User(user.user.id), source(&req));
    let replaced = web::block(move || {
        let replaced = appliance::tls::replace_portal_certificate(
            &app.audit,
            &actor,
            &from,
            &app.config,
            form.certificate.as_bytes(),
            form.private_key.as_bytes(),
        );
        if let Err(err) = &replaced {
            // A refused replacement is a security-relevant attempt too.
            app.audit.record(
                AuditEvent::new(actor.clone(), "tls.certificate.refused")
                    .source(&from)
                    .target("tls:portal")
                    .outcome(Outcome::Denied)
                    .details(serde_json::json!({ "reason": err.to_string() })),
            )?;
        }
        Ok::<_, appliance::Error>(replaced)
    })
    .await??;
    let outcome = match replaced {
        Ok(_) => {
            if let Some(live) = &state.certificate
                && let Err(err) = live.reload_if_changed()
            {
                return Err(WebError::Internal(format!(
                    "the certificate was installed but does not load: {err}"
                )));
            }
            SettingsOutcome {
                certificate_done: true,
                ..SettingsOutcome::default()
            }
        }
        Err(err) => SettingsOutcome {
            certificate_problems: certificate_problems(err)?,
            ..SettingsOutcome::default()
        },
    };
    settings_with(&state, &user, outcome).await
}

/// The TLS checks name their problem as "tls: certificate: ..." or "tls: key: ..."; shown
/// beside the field they are about.
fn certificate_problems(err: appliance::Error) -> Result<Problems, WebError> {
    let problems = Problems::of(err)?;
    Ok(match problems.field("tls") {
        Some(problem) => {
            let (field, rest) = match problem.split_once(": ") {
                Some(("key", rest)) => ("private_key", rest),
                Some(("certificate", rest)) => ("certificate", rest),
                _ => ("certificate", problem),
            };
            Problems::of(appliance::Error::invalid(field, rest.to_owned()))?
        }
        None => problems,
    })
}

#[derive(Debug, Default, Deserialize)]
pub struct MailForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    host: String,
    #[serde(default)]
    port: String,
    #[serde(default)]
    security: String,
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    from: String,
}

/// Saves the mail relay every Appliance process sends through. An empty password field keeps
/// the stored password; an empty user name removes both.
pub async fn save_mail(
    state: web::Data<AppState>,
    user: SignedIn,
    form: web::Form<MailForm>,
) -> Page {
    gate(&state, &user, Some(&form.csrf), CONFIRM_FOR_SETTINGS)?;
    let form = form.into_inner();
    let change = RelayChange {
        host: form.host.clone(),
        port: form.port.clone(),
        security: form.security.clone(),
        username: form.username.clone(),
        password: if form.username.trim().is_empty() {
            Some(String::new())
        } else if form.password.is_empty() {
            None
        } else {
            Some(form.password.clone())
        },
        from: form.from.clone(),
    };
    let (state2, actor, now) = (state.clone(), Actor::User(user.user.id), state.now());
    let saved = web::block(move || {
        let app = &state2.app;
        settings::set_relay(
            &app.audit,
            &actor,
            &app.config,
            &state2.relay_key()?,
            &change,
            now,
        )
    })
    .await?;
    let outcome = match saved {
        Ok(_) => {
            state.worker.poke();
            SettingsOutcome {
                mail_done: Some("Saved. Every service sends mail through this relay now.".into()),
                ..SettingsOutcome::default()
            }
        }
        Err(err) => SettingsOutcome {
            mail_problems: Problems::of(err)?,
            mail_form: Some(RelayView {
                host: form.host,
                port: form.port,
                security: form.security,
                username: form.username,
                has_password: false,
                from: form.from,
                from_portal: true,
            }),
            ..SettingsOutcome::default()
        },
    };
    settings_with(&state, &user, outcome).await
}

/// Sends a test email to the administrator through the relay in force, at once, and shows
/// what the relay answered. Audited `settings.smtp.tested`.
pub async fn test_mail(
    state: web::Data<AppState>,
    user: SignedIn,
    req: HttpRequest,
    form: web::Form<CsrfForm>,
) -> Page {
    gate(&state, &user, Some(&form.csrf), CONFIRM_FOR_SETTINGS)?;
    let (state2, account, from) = (state.clone(), user.user.clone(), source(&req));
    let outcome = web::block(move || -> appliance::error::Result<Result<(), String>> {
        let app = &state2.app;
        let relay = settings::relay(&mut *app.store.conn()?, &app.config, &state2.relay_key()?)?;
        let sent = appliance::mail::send_now(
            &relay.smtp,
            &account.email,
            &appliance::emails::relay_test(),
        );
        let event = AuditEvent::new(Actor::User(account.id), "settings.smtp.tested")
            .source(&from)
            .target("settings:smtp")
            .outcome(if sent.is_ok() {
                Outcome::Success
            } else {
                Outcome::Failure
            })
            .details(serde_json::json!({ "to": account.email, "error": sent.as_ref().err() }));
        app.audit.record(event)?;
        Ok(sent)
    })
    .await??;
    let result = match outcome {
        Ok(()) => SettingsOutcome {
            mail_done: Some(format!("A test email was sent to {}.", user.user.email)),
            ..SettingsOutcome::default()
        },
        Err(why) => SettingsOutcome {
            mail_problems: Problems::general(format!("The test email was not sent: {why}")),
            ..SettingsOutcome::default()
        },
    };
    settings_with(&state, &user, result).await
}

/// How many entries the errors page shows.
const ERRORS_SHOWN: usize = 200;

struct ErrorRow {
    at: String,
    service: String,
    level: String,
    target: String,
    message: String,
    /// `name=value` pairs, values as JSON.
    fields: String,
}

#[derive(Template)]
#[template(path = "errors.html")]
struct ErrorsPage {
    signed_in: Option<Nav>,
    rows: Vec<ErrorRow>,
    shown: usize,
}

/// The newest warnings and errors of every service (portal, ingest, firewall controller),
/// from their error files under `{data_dir}/log` (`appliance::telemetry`).
pub async fn errors_page(state: web::Data<AppState>, user: SignedIn) -> Page {
    gate(&state, &user, None, CONFIRM_FOR_ERRORS)?;
    let data_dir = state.app.config.data_dir.clone();
    let entries =
        web::block(move || appliance::telemetry::recent_errors(&data_dir, ERRORS_SHOWN)).await?;
    let rows = entries
        .into_iter()
        .map(|entry| ErrorRow {
            fields: entry
                .fields
                .iter()
                .map(|(name, value)| format!("{name}={value}"))
                .collect::<Vec<_>>()
                .join(" "),
            at: entry.at,
            service: entry.service,
            level: entry.level,
            target: entry.target,
            message: entry.message,
        })
        .collect();
    html_with_status(
        &ErrorsPage {
            signed_in: Some(user.nav()),
            rows,
            shown: ERRORS_SHOWN,
        },
        actix_web::http::StatusCode::OK,
    )
}

#[derive(Debug, Default, Deserialize)]
pub struct BudgetForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    budget_mib: String,
}

/// Sets how much of the data partition telemetry may use; the ingest service applies it at
/// its next retention check, oldest readings first.
pub async fn save_telemetry_budget(
    state: web::Data<AppState>,
    user: SignedIn,
    form: web::Form<BudgetForm>,
) -> Page {
    gate(&state, &user, Some(&form.csrf), CONFIRM_FOR_SETTINGS)?;
    let (state2, actor, now) = (state.clone(), Actor::User(user.user.id), state.now());
    let raw = form.budget_mib.clone();
    let saved = web::block(move || {
        let app = &state2.app;
        settings::set_telemetry_budget_mib(&app.audit, &actor, &app.config, &raw, now)
    })
    .await?;
    let outcome = match saved {
        Ok(_) => SettingsOutcome {
            storage_done: true,
            ..SettingsOutcome::default()
        },
        Err(err) => SettingsOutcome {
            storage_problems: Problems::of(err)?,
            ..SettingsOutcome::default()
        },
    };
    settings_with(&state, &user, outcome).await
}
