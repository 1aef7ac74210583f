//! The store on both backends: migrations that really reverse, the directory's rules, and
//! changes that commit together with their audit records or not at all.
#![allow(clippy::expect_used, clippy::unwrap_used)] // test code: a failed expectation is a failed test

mod common;

use appliance::error::Error;
use appliance::ids::GrantId;
use appliance::models::{Organisation, OrganisationId, Role, Site, User};
use appliance::time::now_us;
use appliance::{AuditEvent, DbConnection};
use common::{Backend, Cli, TestAppliance, test_actor};
use diesel::prelude::*;

/// Our tables, as the database itself lists them.
fn tables(backend: Backend, conn: &mut DbConnection) -> Vec<String> {
    #[derive(QueryableByName)]
    struct Name {
        #[diesel(sql_type = diesel::sql_types::Text)]
        name: String,
    }
    let sql = match backend {
        Backend::Sqlite => {
            "SELECT name FROM sqlite_master WHERE type IN ('table', 'trigger') AND name NOT LIKE 'sqlite_%' ORDER BY name"
        }
        Backend::Postgres => {
            "SELECT table_name AS name FROM information_schema.tables WHERE table_schema = 'public' \
                              UNION SELECT proname AS name FROM pg_proc WHERE pronamespace = 'public'::regnamespace ORDER BY name"
        }
    };
    diesel::sql_query(sql)
        .load::<Name>(conn)
        .expect("list tables")
        .into_iter()
        .map(|n| n.name)
        .collect()
}

fn every_migration_down_reverses_its_up(backend: Backend) {
    let t = TestAppliance::new(backend);
    let migrated = tables(backend, &mut t.conn());
    assert!(migrated.contains(&"audit_log".to_owned()), "{migrated:?}");
    let reverted = t.app.store.revert_all_migrations().expect("revert");
    assert!(!reverted.is_empty());
    assert_eq!(
        tables(backend, &mut t.conn()),
        ["__diesel_schema_migrations"]
    );
    t.app.store.migrate().expect("migrate again");
    assert_eq!(tables(backend, &mut t.conn()), migrated);
}

fn directory_records_are_created_validated_and_audited(backend: Backend) {
    let t = TestAppliance::new(backend);
    let actor = test_actor();
    let org = Organisation::create(&t.app.audit, &actor, "  Moulding Plant Nord ", now_us())
        .expect("org");
    assert_eq!(org.name, "Moulding Plant Nord");
    let site = Site::create(
        &t.app.audit,
        &actor,
        org.id,
        "Hall 3",
        "Building B",
        now_us(),
    )
    .expect("site");
    let user = User::create(
        &t.app.audit,
        &actor,
        org.id,
        "Ada",
        "Ada@Plant.Example",
        Role::Approver,
        now_us(),
    )
    .expect("user");
    assert_eq!(user.email, "ada@plant.example");
    assert_eq!(user.role().expect("role"), Role::Approver);
    assert_eq!(
        Site::list_for(&mut t.conn(), org.id).expect("sites"),
        std::slice::from_ref(&site)
    );

    // Each creation is in the log, naming its target.
    let exported = t.cli().args(["audit", "export"]).output().expect("export");
    let text = String::from_utf8_lossy(&exported.stdout);
    for (action, target) in [
        ("organisation.created", org.id.to_string()),
        ("site.created", site.id.to_string()),
        ("user.created", user.id.to_string()),
    ] {
        assert!(
            text.lines()
                .any(|l| l.contains(&format!("\"action\":\"{action}\""))
                    && l.contains(&format!("\"target\":\"{target}\""))),
            "{action} {target} not audited:\n{text}"
        );
    }

    // Bad input: a clear error, and nothing written, not even an audit record.
    let tail = t.tail();
    let refused = [
        Organisation::create(&t.app.audit, &actor, "   ", now_us()).map(|_| ()),
        Organisation::create(&t.app.audit, &actor, "Moulding Plant Nord", now_us()).map(|_| ()),
        Site::create(&t.app.audit, &actor, org.id, "Hall 3", "", now_us()).map(|_| ()),
        Site::create(
            &t.app.audit,
            &actor,
            OrganisationId(9999),
            "Hall 9",
            "",
            now_us(),
        )
        .map(|_| ()),
        User::create(
            &t.app.audit,
            &actor,
            org.id,
            "Eve",
            "ADA@plant.example",
            Role::Viewer,
            now_us(),
        )
        .map(|_| ()),
        User::create(
            &t.app.audit,
            &actor,
            org.id,
            "Eve",
            "not-an-email",
            Role::Viewer,
            now_us(),
        )
        .map(|_| ()),
        User::create(
            &t.app.audit,
            &actor,
            org.id,
            &"x".repeat(201),
            "eve@plant.example",
            Role::Viewer,
            now_us(),
        )
        .map(|_| ()),
        User::create(
            &t.app.audit,
            &actor,
            org.id,
            "Eve\u{7}",
            "eve@plant.example",
            Role::Viewer,
            now_us(),
        )
        .map(|_| ()),
        User::create(
            &t.app.audit,
            &actor,
            OrganisationId(9999),
            "Eve",
            "eve@plant.example",
            Role::Viewer,
            now_us(),
        )
        .map(|_| ()),
    ];
    let codes: Vec<&str> = refused
        .iter()
        .map(|r| r.as_ref().map_or_else(Error::code, |()| "accepted"))
        .collect();
    assert_eq!(
        codes,
        [
            "request.invalid",
            "request.conflict",
            "request.conflict",
            "request.not_found",
            "request.conflict",
            "request.invalid",
            "request.invalid",
            "request.invalid",
            "request.not_found"
        ]
    );
    assert_eq!(t.tail(), tail, "a refused change left an audit record");
    assert_eq!(User::list_all(&mut t.conn()).expect("users").len(), 1);
}

fn a_change_and_its_audit_record_commit_together(backend: Backend) {
    let t = TestAppliance::new(backend);
    let tail = t.tail();
    // The change succeeds but its audit event is invalid: both roll back.
    let result = t.app.audit.record_with(|conn| {
        diesel::insert_into(appliance::schema::organisations::table)
            .values((
                appliance::schema::organisations::name.eq("Ghost"),
                appliance::schema::organisations::created_at_us.eq(0),
            ))
            .execute(conn)?;
        Ok(((), vec![AuditEvent::new(test_actor(), "Not A Code")]))
    });
    assert_eq!(result.err().map(|e| e.code()), Some("audit.invalid_event"));
    assert_eq!(
        Organisation::find_by_name(&mut t.conn(), "Ghost").expect("query"),
        None
    );
    assert_eq!(t.tail(), tail);
}

on_both_backends!(
    every_migration_down_reverses_its_up,
    directory_records_are_created_validated_and_audited,
    a_change_and_its_audit_record_commit_together,
);

mod grants {
    use super::*;
    use appliance::grants::{Agent, Grant, GrantRequest};

    fn request(from: &str, to: &str, agent: &str, seconds: u64) -> GrantRequest {
        GrantRequest {
            requester: from.into(),
            device: to.into(),
            agent: agent.into(),
            duration_seconds: seconds,
            reason: "PLC firmware check".into(),
            dnat_port: None,
        }
    }

    fn grants_open_list_and_revoke_with_an_audit_trail(backend: Backend) {
        let t = TestAppliance::new(backend);
        let actor = test_actor();
        let config = &t.app.config; // device network 192.168.50.0/24 by default
        let s7 = Grant::open(
            &t.app.audit,
            &actor,
            config,
            &request("10.1.2.3", "192.168.50.20", "s7", 600),
            appliance::time::now_us(),
        )
        .expect("open");
        assert_eq!(s7.ports, "tcp/102");
        let eip = Grant::open(
            &t.app.audit,
            &actor,
            config,
            &request("10.1.2.3", "192.168.50.21", "ethernet-ip", 60),
            appliance::time::now_us(),
        )
        .expect("open");
        assert_eq!(eip.pinholes().expect("pinholes").len(), 2);
        let live: Vec<GrantId> = Grant::live(&mut t.conn(), appliance::time::now_us())
            .expect("live")
            .iter()
            .map(|g| g.id)
            .collect();
        assert_eq!(live, [s7.id, eip.id]);

        Grant::revoke(
            &t.app.audit,
            &actor,
            s7.id,
            "done",
            appliance::time::now_us(),
        )
        .expect("revoke");
        let live: Vec<GrantId> = Grant::live(&mut t.conn(), appliance::time::now_us())
            .expect("live")
            .iter()
            .map(|g| g.id)
            .collect();
        assert_eq!(live, [eip.id]);
        let again = Grant::revoke(
            &t.app.audit,
            &actor,
            s7.id,
            "twice",
            appliance::time::now_us(),
        )
        .expect_err("revoked twice");
        assert_eq!(again.code(), "request.conflict");
        let actions: Vec<String> = {
            use appliance::schema::audit_log::dsl::*;
            audit_log
                .order(seq)
                .select(action)
                .load(&mut t.conn())
                .expect("actions")
        };
        assert_eq!(actions.iter().filter(|a| *a == "grant.created").count(), 2);
        assert_eq!(actions.iter().filter(|a| *a == "grant.revoked").count(), 1);
    }

    fn bad_grant_requests_are_refused_and_store_nothing(backend: Backend) {
        let t = TestAppliance::new(backend);
        let actor = test_actor();
        let config = &t.app.config;
        let tail = t.tail();
        let cases = [
            (
                request("10.1.2.300", "192.168.50.20", "s7", 60),
                "requester",
            ),
            (request("10.1.2.3", "192.168.51.20", "s7", 60), "device"),
            (request("10.1.2.3", "192.168.50.0", "s7", 60), "device"),
            (
                request("192.168.50.9", "192.168.50.20", "s7", 60),
                "requester",
            ),
            (request("10.1.2.3", "192.168.50.20", "telnet", 60), "agent"),
            (request("10.1.2.3", "192.168.50.20", "s7", 0), "duration"),
            (
                request("10.1.2.3", "192.168.50.20", "s7", 9 * 3600),
                "duration",
            ),
            (
                request(
                    "10.1.2.3",
                    "192.168.50.20",
                    "'; DROP TABLE firewall_grants; --",
                    60,
                ),
                "agent",
            ),
        ];
        for (req, field) in cases {
            match Grant::open(
                &t.app.audit,
                &actor,
                config,
                &req,
                appliance::time::now_us(),
            ) {
                Err(Error::Invalid { field: got, .. }) => assert_eq!(got, field, "{req:?}"),
                other => panic!("{req:?} gave {other:?}"),
            }
        }
        let too_wide = Agent::create(
            &t.app.audit,
            &actor,
            config,
            "vendor",
            "Vendor tools",
            "tcp/10000-10020",
            appliance::time::now_us(),
        );
        assert_eq!(too_wide.err().map(|e| e.code()), Some("request.invalid"));
        assert_eq!(t.tail(), tail, "a refused request left an audit record");
        assert!(Grant::recent(&mut t.conn(), 10).expect("recent").is_empty());

        let custom = Agent::create(
            &t.app.audit,
            &actor,
            config,
            "vendor",
            "Vendor tools",
            "tcp/10000-10003,udp/2222",
            appliance::time::now_us(),
        )
        .expect("agent");
        let grant = Grant::open(
            &t.app.audit,
            &actor,
            config,
            &request("10.1.2.3", "192.168.50.20", &custom.name, 60),
            appliance::time::now_us(),
        )
        .expect("custom");
        assert_eq!(grant.ports, "tcp/10000-10003,udp/2222");
    }

    on_both_backends!(
        grants_open_list_and_revoke_with_an_audit_trail,
        bad_grant_requests_are_refused_and_store_nothing
    );
}
