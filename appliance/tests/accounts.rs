//! Logins, lockout and sessions at the core, on both backends, with an injected clock:
//! nothing here sleeps.
#![allow(clippy::expect_used, clippy::unwrap_used)] // test code: a failed expectation is a failed test

mod common;

use appliance::accounts::{self, Lockout, PasswordPolicy};
use appliance::models::{Organisation, Role, User};
use appliance::sessions::{self, Rejected, SessionLimits};
use common::{Backend, TestAppliance, test_actor};

const PASSWORD: &str = "Vierkant-Schraube-77";
const MINUTE: i64 = 60_000_000;
const LOCKOUT: Lockout = Lockout {
    attempts: 5,
    minutes: 15,
};

fn with_user(backend: Backend) -> (TestAppliance, User) {
    let t = TestAppliance::new(backend);
    let org = Organisation::create(&t.app.audit, &test_actor(), "Plant").unwrap();
    let user = User::create(
        &t.app.audit,
        &test_actor(),
        org.id,
        "Ada",
        "ada@plant.example",
        Role::Approver,
    )
    .unwrap();
    accounts::set_password(
        &t.app.audit,
        &test_actor(),
        &user,
        PASSWORD,
        PasswordPolicy { min_chars: 12 },
        0,
    )
    .unwrap();
    (t, user)
}

fn sessions_end_at_the_absolute_and_the_idle_limit(backend: Backend) {
    let (t, user) = with_user(backend);
    let limits = SessionLimits::from_minutes(8 * 60, 30);
    let start = 1_800_000_000_000_000;
    let (token, _) = sessions::start(
        &mut t.conn(),
        user.id,
        "10.0.0.5",
        "test",
        start,
        sessions::SecondFactor::Done,
    )
    .unwrap();
    let resume = |now| {
        sessions::resume(&t.app.audit, token.reveal(), now, limits)
            .unwrap()
            .map(|(s, _)| s.id)
    };

    // Active every 20 minutes: alive until the 8-hour mark, then gone for good.
    let mut now = start;
    while now + 20 * MINUTE < start + 8 * 60 * MINUTE {
        now += 20 * MINUTE;
        assert!(
            resume(now).is_ok(),
            "ended early at {} minutes",
            (now - start) / MINUTE
        );
    }
    assert_eq!(
        resume(start + 8 * 60 * MINUTE),
        Err(Rejected::AbsoluteLimit)
    );
    assert_eq!(
        resume(start + 8 * 60 * MINUTE - MINUTE),
        Err(Rejected::Ended),
        "an ended session came back"
    );

    // Idle for 30 minutes ends a fresh session.
    let (idle, _) = sessions::start(
        &mut t.conn(),
        user.id,
        "10.0.0.5",
        "test",
        start,
        sessions::SecondFactor::Done,
    )
    .unwrap();
    assert!(
        sessions::resume(&t.app.audit, idle.reveal(), start + 29 * MINUTE, limits)
            .unwrap()
            .is_ok()
    );
    let later = start + 29 * MINUTE + 30 * MINUTE;
    assert_eq!(
        sessions::resume(&t.app.audit, idle.reveal(), later, limits)
            .unwrap()
            .map(|_| ()),
        Err(Rejected::IdleLimit)
    );
    assert_eq!(
        sessions::resume(&t.app.audit, "made-up", start, limits)
            .unwrap()
            .map(|_| ()),
        Err(Rejected::Unknown)
    );
    // Configured limits never exceed 8 hours.
    assert_eq!(
        SessionLimits::from_minutes(24 * 60, 30).absolute_us,
        8 * 60 * MINUTE
    );
}

fn five_failures_lock_the_account_until_the_lockout_ends_or_an_admin_unlocks(backend: Backend) {
    let (t, user) = with_user(backend);
    let now = 1_800_000_000_000_000;
    let login = |password: &str, at: i64| {
        accounts::login(
            &t.app.audit,
            "ada@plant.example",
            password,
            "10.0.0.9",
            at,
            LOCKOUT,
        )
        .unwrap()
    };
    for _ in 0..5 {
        assert!(login("Wrong-password-1", now).user.is_none());
    }
    let locked = login(PASSWORD, now + MINUTE);
    assert!(
        locked.user.is_none(),
        "the right password opened a locked account"
    );
    assert_eq!(locked.reason, "account locked");
    assert!(
        login(PASSWORD, now + 16 * MINUTE).user.is_some(),
        "the lockout did not end after 15 minutes"
    );

    for _ in 0..5 {
        login("Wrong-password-1", now + 20 * MINUTE);
    }
    assert!(login(PASSWORD, now + 21 * MINUTE).user.is_none());
    accounts::unlock(&t.app.audit, &test_actor(), user.organisation_id, user.id).unwrap();
    assert!(
        login(PASSWORD, now + 21 * MINUTE).user.is_some(),
        "unlock did not lift the lockout"
    );
    // Mixed-case email finds the same account.
    assert!(
        accounts::login(
            &t.app.audit,
            "ADA@Plant.Example",
            PASSWORD,
            "x",
            now + 22 * MINUTE,
            LOCKOUT
        )
        .unwrap()
        .user
        .is_some()
    );
}

fn contractor_accounts_stop_at_their_expiry(backend: Backend) {
    let (t, user) = with_user(backend);
    {
        use appliance::schema::users::dsl::*;
        use diesel::prelude::*;
        diesel::update(users.find(user.id))
            .set(expires_at_us.eq(Some(1_000)))
            .execute(&mut *t.conn())
            .unwrap();
    }
    let result = accounts::login(
        &t.app.audit,
        "ada@plant.example",
        PASSWORD,
        "x",
        2_000,
        LOCKOUT,
    )
    .unwrap();
    assert_eq!(
        (result.user.is_none(), result.reason),
        (true, "account expired")
    );
}

fn a_user_without_a_password_cannot_log_in(backend: Backend) {
    let t = TestAppliance::new(backend);
    let org = Organisation::create(&t.app.audit, &test_actor(), "Plant").unwrap();
    User::create(
        &t.app.audit,
        &test_actor(),
        org.id,
        "Nopass",
        "nopass@plant.example",
        Role::Viewer,
    )
    .unwrap();
    for guess in ["", "x", PASSWORD] {
        assert!(
            accounts::login(&t.app.audit, "nopass@plant.example", guess, "x", 0, LOCKOUT)
                .unwrap()
                .user
                .is_none()
        );
    }
}

on_both_backends!(
    sessions_end_at_the_absolute_and_the_idle_limit,
    five_failures_lock_the_account_until_the_lockout_ends_or_an_admin_unlocks,
    contractor_accounts_stop_at_their_expiry,
    a_user_without_a_password_cannot_log_in,
);
