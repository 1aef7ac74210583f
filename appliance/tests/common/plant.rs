//! The plant the remote-access tests share: site A (press; approvers Ann and Bert) and
//! site B (mixer; approver Carla) of one organisation, a technician, and helpers that ask and
//! decide as them and read what a refusal must leave untouched.

use appliance::Error;
use appliance::access::{
    self, Decision, Machine, NewMachine, NewRequest, PolicyChange, SitePolicy,
};
use appliance::ids::AccessRequestId;
use appliance::models::{Organisation, Role, Site, User};
use appliance::schema::{access_requests, firewall_grants, mail_outbox};
use appliance::time::now_us;
use diesel::prelude::*;

use super::{Backend, TestAppliance, test_actor};

pub const FROM: &str = "10.1.0.20";

pub struct Plant {
    pub t: TestAppliance,
    pub site_a: Site,
    pub press: Machine,
    pub mixer: Machine,
    pub tech: User,
    pub ann: User,
    pub bert: User,
    pub carla: User,
}

pub fn user(t: &TestAppliance, org: &Organisation, name: &str, role: Role) -> User {
    User::create(
        &t.app.audit,
        &test_actor(),
        org.id,
        name,
        &format!("{}@plant.example", name.to_lowercase()),
        role,
        now_us(),
    )
    .unwrap()
}

pub fn policy(allowlist: &str) -> PolicyChange {
    PolicyChange {
        approval_required: true,
        max_minutes: "60".into(),
        device_allowlist: allowlist.into(),
        ..PolicyChange::default()
    }
}

/// Site A (press, approvers Ann and Bert) and site B (mixer, approver Carla), one technician.
pub fn plant(backend: Backend) -> Plant {
    let t = TestAppliance::new(backend);
    let (audit, actor, config) = (&t.app.audit, test_actor(), &t.app.config);
    let org = Organisation::create(audit, &actor, "Plant", now_us()).unwrap();
    let site_a = Site::create(audit, &actor, org.id, "Hall A", "", now_us()).unwrap();
    let site_b = Site::create(audit, &actor, org.id, "Hall B", "", now_us()).unwrap();
    SitePolicy::set(
        audit,
        &actor,
        config,
        &site_a,
        &policy("192.168.50.0/28"),
        now_us(),
    )
    .unwrap();
    SitePolicy::set(
        audit,
        &actor,
        config,
        &site_b,
        &policy("192.168.50.16/28"),
        now_us(),
    )
    .unwrap();
    let press = Machine::add(
        audit,
        &actor,
        config,
        &site_a,
        &NewMachine {
            name: "Press 1",
            address: "192.168.50.10",
            agents: &["s7".into(), "vnc".into()],
        },
        now_us(),
    )
    .unwrap();
    let mixer = Machine::add(
        audit,
        &actor,
        config,
        &site_b,
        &NewMachine {
            name: "Mixer",
            address: "192.168.50.20",
            agents: &["modbus".into()],
        },
        now_us(),
    )
    .unwrap();
    let tech = user(&t, &org, "Tom", Role::Technician);
    let ann = user(&t, &org, "Ann", Role::Approver);
    let bert = user(&t, &org, "Bert", Role::Approver);
    let carla = user(&t, &org, "Carla", Role::Approver);
    for (site, who) in [(&site_a, &ann), (&site_a, &bert), (&site_b, &carla)] {
        access::set_approver(audit, &actor, site, who.id, true).unwrap();
    }
    Plant {
        t,
        site_a,
        press,
        mixer,
        tech,
        ann,
        bert,
        carla,
    }
}

impl Plant {
    pub fn ask(
        &self,
        who: &User,
        machine: &Machine,
        agent: &str,
        minutes: &str,
    ) -> appliance::error::Result<access::AccessRequest> {
        self.ask_with(
            who,
            &NewRequest {
                machine_id: machine.id,
                agent: agent.into(),
                minutes: minutes.into(),
                reason: "Mould temperature alarm, check PLC".into(),
                declared_address: String::new(),
            },
        )
    }

    pub fn ask_with(
        &self,
        who: &User,
        new: &NewRequest,
    ) -> appliance::error::Result<access::AccessRequest> {
        access::request(
            &self.t.app.audit,
            &self.t.app.config,
            who,
            FROM,
            new,
            now_us(),
        )
    }

    pub fn decide(
        &self,
        who: &User,
        id: AccessRequestId,
        decision: Decision,
    ) -> appliance::error::Result<access::AccessRequest> {
        access::decide(
            &self.t.app.audit,
            &self.t.app.config,
            who,
            id,
            &decision,
            "10.1.0.30",
            now_us(),
        )
    }

    pub fn approve(
        &self,
        who: &User,
        id: AccessRequestId,
    ) -> appliance::error::Result<access::AccessRequest> {
        self.decide(
            who,
            id,
            Decision::Approve {
                minutes: String::new(),
            },
        )
    }

    /// Requests, grants and audit records: what a refusal must leave as it was.
    pub fn footprint(&self) -> (i64, i64, i64) {
        let mut conn = self.t.conn();
        (
            access_requests::table
                .count()
                .get_result(&mut conn)
                .unwrap(),
            firewall_grants::table
                .count()
                .get_result(&mut conn)
                .unwrap(),
            self.t.tail(),
        )
    }

    pub fn mails_to(&self, who: &User) -> Vec<(String, String)> {
        mail_outbox::table
            .filter(mail_outbox::recipient.eq(&who.email))
            .order(mail_outbox::id)
            .select((mail_outbox::subject, mail_outbox::body))
            .load(&mut self.t.conn())
            .unwrap()
    }
}

pub fn assert_invalid(result: appliance::error::Result<access::AccessRequest>, field: &str) {
    match result {
        Err(Error::Invalid { field: f, .. }) => assert_eq!(f, field),
        other => panic!("expected a refusal of {field}, got {other:?}"),
    }
}
