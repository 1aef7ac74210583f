//! The alert rules pages: the rules at the sites a user can see; one rule's page to change,
//! test, disable, enable or remove it. "Test" replays the rule, saved or not, over the last
//! week's readings and lists what it would have raised, changing nothing.

use actix_web::web;
use appliance::Actor;
use appliance::access::short_time;
use appliance::alerts::replay::{Replay, replay};
use appliance::alerts::{AlertRule, RuleRequest};
use appliance::ids::AlertRuleId;
use appliance::models::{Role, User};
use askama::Template;

use super::input::{RuleForm, RuleInput, input_of};
use crate::error::WebError;
use crate::forms::{CsrfForm, Problems};
use crate::render::{Nav, Page, html_with_status, see_other};
use crate::session::SignedIn;
use crate::state::AppState;

/// How far back "test" looks.
pub const TEST_DAYS: i64 = 7;

#[derive(Debug)]
pub struct RuleRow {
    pub id: i64,
    pub name: String,
    pub covers: String,
    pub condition: String,
    pub notify: String,
    pub enabled: bool,
}

/// What a replay found, as the page shows it.
#[derive(Debug)]
pub struct TestResult {
    pub devices: usize,
    pub readings: usize,
    pub truncated: bool,
    pub episodes: Vec<(String, String, String, String)>,
}

impl TestResult {
    fn of(replay: Replay) -> TestResult {
        let value = |v: Option<f64>| v.map(|v| v.to_string()).unwrap_or_default();
        TestResult {
            devices: replay.devices,
            readings: replay.readings,
            truncated: replay.truncated,
            episodes: replay
                .episodes
                .into_iter()
                .map(|e| {
                    (
                        e.serial,
                        short_time(e.raised_at_us),
                        value(e.raised_value),
                        e.cleared_at_us
                            .map_or_else(|| "still active".into(), short_time),
                    )
                })
                .collect(),
        }
    }
}

/// The rules `user` can see: those at their sites, or on devices at their sites.
fn visible_rules(
    conn: &mut appliance::DbConnection,
    user: &User,
) -> appliance::error::Result<Vec<(AlertRule, String)>> {
    let sites = appliance::access::sites_for(conn, user)?;
    let mut rows = Vec::new();
    for rule in AlertRule::list(conn)? {
        let site = rule.site(conn)?;
        let Some(site) = sites.iter().find(|s| s.id == site) else {
            continue;
        };
        let covers = match (rule.device_id, &rule.device_kind) {
            (Some(device), _) => appliance::devices::Device::find(conn, device)?.map_or_else(
                || "a device".into(),
                |d| format!("{} at {}", d.serial, site.name),
            ),
            (None, Some(kind)) => format!("every {kind} at {}", site.name),
            (None, None) => format!("every device at {}", site.name),
        };
        rows.push((rule, covers));
    }
    Ok(rows)
}

fn rule_row((rule, covers): (AlertRule, String)) -> RuleRow {
    RuleRow {
        id: rule.id.0,
        condition: rule.condition(),
        notify: rule.notify_email.clone(),
        enabled: rule.disabled_at_us.is_none(),
        name: rule.name,
        covers,
    }
}

/// The choices the rule form offers.
struct Choices {
    sites: Vec<(i64, String)>,
    devices: Vec<String>,
}

fn choices(conn: &mut appliance::DbConnection, user: &User) -> appliance::error::Result<Choices> {
    let sites = appliance::access::sites_for(conn, user)?;
    let mut devices = Vec::new();
    for site in &sites {
        devices.extend(
            appliance::devices::Device::list_for_site(conn, site.id)?
                .into_iter()
                .map(|d| d.serial),
        );
    }
    Ok(Choices {
        sites: sites.into_iter().map(|s| (s.id.0, s.name)).collect(),
        devices,
    })
}

#[derive(Template)]
#[template(path = "alert_rules.html")]
struct RulesPage {
    signed_in: Option<Nav>,
    csrf: String,
    rows: Vec<RuleRow>,
    is_admin: bool,
    sites: Vec<(i64, String)>,
    devices: Vec<String>,
    form: RuleForm,
    problems: Problems,
    test: Option<TestResult>,
}

async fn rules_page_with(
    state: &web::Data<AppState>,
    user: &SignedIn,
    form: RuleForm,
    problems: Problems,
    test: Option<TestResult>,
) -> Page {
    let (app, account) = (state.app.clone(), user.user.clone());
    let (rows, choices) = web::block(move || {
        let mut conn = app.store.conn()?;
        let rows: Vec<RuleRow> = visible_rules(&mut conn, &account)?
            .into_iter()
            .map(rule_row)
            .collect();
        Ok::<_, appliance::Error>((rows, choices(&mut conn, &account)?))
    })
    .await??;
    let status = problems.status();
    html_with_status(
        &RulesPage {
            signed_in: Some(user.nav()),
            csrf: user.csrf.clone(),
            rows,
            is_admin: user.role == Role::Admin,
            sites: choices.sites,
            devices: choices.devices,
            form,
            problems,
            test,
        },
        status,
    )
}

pub async fn rules_page(state: web::Data<AppState>, user: SignedIn) -> Page {
    rules_page_with(
        &state,
        &user,
        RuleForm::default(),
        Problems::default(),
        None,
    )
    .await
}

/// Replays `input` over the last [`TEST_DAYS`] days as `user` sees it.
fn test_rule(
    app: &appliance::Appliance,
    user: &User,
    input: &RuleInput,
    now: i64,
) -> appliance::error::Result<TestResult> {
    let mut conn = app.store.conn()?;
    let request = input.resolve(&mut conn, user)?;
    let since = now - TEST_DAYS * 24 * 3600 * 1_000_000;
    Ok(TestResult::of(replay(
        &mut conn,
        user.organisation_id,
        &request,
        (since, now + 1),
    )?))
}

/// Creates a rule, or with `action=test` shows what it would have raised.
pub async fn create(state: web::Data<AppState>, user: SignedIn, form: web::Form<RuleForm>) -> Page {
    user.admin_only("Changing alert rules")?;
    user.check_csrf(&form.csrf)?;
    let form = form.into_inner();
    let testing = form.action == "test";
    let (app, account, now) = (state.app.clone(), user.user.clone(), state.now());
    let input = form.input();
    let done = web::block(move || -> appliance::error::Result<Option<TestResult>> {
        let input = input?;
        if testing {
            return test_rule(&app, &account, &input, now).map(Some);
        }
        let request: RuleRequest = input.resolve(&mut *app.store.conn()?, &account)?;
        AlertRule::create(
            &app.audit,
            &Actor::User(account.id),
            account.organisation_id,
            &request,
            now,
        )?;
        Ok(None)
    })
    .await?;
    match done {
        Ok(None) => Ok(see_other("/alert-rules")),
        Ok(Some(test)) => {
            rules_page_with(&state, &user, form, Problems::default(), Some(test)).await
        }
        Err(err) => rules_page_with(&state, &user, form, Problems::of(err)?, None).await,
    }
}

#[derive(Template)]
#[template(path = "alert_rule.html")]
struct RulePage {
    signed_in: Option<Nav>,
    csrf: String,
    row: RuleRow,
    is_admin: bool,
    sites: Vec<(i64, String)>,
    devices: Vec<String>,
    form: RuleForm,
    problems: Problems,
    test: Option<TestResult>,
}

/// A rule `user` can see, or "not found".
fn visible_rule(
    conn: &mut appliance::DbConnection,
    user: &User,
    id: i64,
) -> appliance::error::Result<(AlertRule, String)> {
    visible_rules(conn, user)?
        .into_iter()
        .find(|(rule, _)| rule.id.0 == id)
        .ok_or(appliance::Error::NotFound("alert rule"))
}

async fn rule_page_with(
    state: &web::Data<AppState>,
    user: &SignedIn,
    id: i64,
    form: Option<RuleForm>,
    problems: Problems,
    test: Option<TestResult>,
) -> Page {
    let (app, account) = (state.app.clone(), user.user.clone());
    let (rule, stored, choices) = web::block(move || {
        let mut conn = app.store.conn()?;
        let found = visible_rule(&mut conn, &account, id)?;
        let stored = input_of(&mut conn, &found.0)?;
        Ok::<_, appliance::Error>((found, stored, choices(&mut conn, &account)?))
    })
    .await??;
    let status = problems.status();
    html_with_status(
        &RulePage {
            signed_in: Some(user.nav()),
            csrf: user.csrf.clone(),
            row: rule_row(rule),
            is_admin: user.role == Role::Admin,
            sites: choices.sites,
            devices: choices.devices,
            form: form.unwrap_or_else(|| RuleForm::of(&stored)),
            problems,
            test,
        },
        status,
    )
}

pub async fn rule_page(state: web::Data<AppState>, user: SignedIn, path: web::Path<i64>) -> Page {
    rule_page_with(
        &state,
        &user,
        path.into_inner(),
        None,
        Problems::default(),
        None,
    )
    .await
}

/// Saves a rule's new settings, or with `action=test` shows what they would have raised.
pub async fn update(
    state: web::Data<AppState>,
    user: SignedIn,
    path: web::Path<i64>,
    form: web::Form<RuleForm>,
) -> Page {
    user.admin_only("Changing alert rules")?;
    user.check_csrf(&form.csrf)?;
    let (form, id) = (form.into_inner(), path.into_inner());
    let testing = form.action == "test";
    let (app, account, now) = (state.app.clone(), user.user.clone(), state.now());
    let input = form.input();
    let done = web::block(move || -> appliance::error::Result<Option<TestResult>> {
        visible_rule(&mut *app.store.conn()?, &account, id)?;
        let input = input?;
        if testing {
            return test_rule(&app, &account, &input, now).map(Some);
        }
        let request = input.resolve(&mut *app.store.conn()?, &account)?;
        AlertRule::update(
            &app.audit,
            &Actor::User(account.id),
            account.organisation_id,
            AlertRuleId(id),
            &request,
            now,
        )?;
        Ok(None)
    })
    .await?;
    match done {
        Ok(None) => Ok(see_other(&format!("/alert-rules/{id}"))),
        Ok(Some(test)) => {
            rule_page_with(
                &state,
                &user,
                id,
                Some(form),
                Problems::default(),
                Some(test),
            )
            .await
        }
        Err(appliance::Error::NotFound(what)) => Err(appliance::Error::NotFound(what).into()),
        Err(err) => rule_page_with(&state, &user, id, Some(form), Problems::of(err)?, None).await,
    }
}

/// Disables, enables or removes a rule (`change` is `disable`, `enable` or `remove`).
pub async fn change(
    state: web::Data<AppState>,
    user: SignedIn,
    path: web::Path<(i64, String)>,
    form: web::Form<CsrfForm>,
) -> Page {
    user.admin_only("Changing alert rules")?;
    user.check_csrf(&form.csrf)?;
    let (id, change) = path.into_inner();
    if !matches!(change.as_str(), "disable" | "enable" | "remove") {
        return Err(WebError::NotFound);
    }
    let (app, account, now) = (state.app.clone(), user.user.clone(), state.now());
    let removing = change == "remove";
    web::block(move || {
        visible_rule(&mut *app.store.conn()?, &account, id)?;
        let (actor, org, rule) = (
            Actor::User(account.id),
            account.organisation_id,
            AlertRuleId(id),
        );
        match change.as_str() {
            "remove" => AlertRule::remove(&app.audit, &actor, org, rule, now),
            enable => {
                AlertRule::set_enabled(&app.audit, &actor, org, rule, enable == "enable", now)
            }
        }
    })
    .await??;
    Ok(see_other(&if removing {
        "/alert-rules".to_owned()
    } else {
        format!("/alert-rules/{id}")
    }))
}
