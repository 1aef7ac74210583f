//! Logins, lockout and sessions at the core, on both backends, with an injected clock:
//! nothing here sleeps.
#![allow(clippy::expect_used, clippy::unwrap_used)] // test code: a failed expectation is a failed test

mod common;

use appliance::accounts::{self, Lockout, PasswordPolicy};
use appliance::models::{Role, User};
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
    let org = t.organisation("Plant");
    let user = User::create(
        &t.app.audit,
        &test_actor(),
        org.id,
        "Ada",
        "ada@plant.example",
        Role::Approver,
        appliance::time::now_us(),
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
    let org = t.organisation("Plant");
    User::create(
        &t.app.audit,
        &test_actor(),
        org.id,
        "Nopass",
        "nopass@plant.example",
        Role::Viewer,
        appliance::time::now_us(),
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

/// A stranger's guesses lock "new browsers" only: a browser the owner signed in with keeps
/// signing in, and counts its own failures, so its cookie alone buys five guesses.
fn a_known_browser_is_not_locked_out_by_strangers(backend: Backend) {
    let (t, user) = with_user(backend);
    let now = 1_800_000_000_000_000;
    let login = |password: &str, browser: Option<&str>, at: i64| {
        accounts::login_from(
            &t.app.audit,
            "ada@plant.example",
            password,
            "10.0.0.9",
            browser,
            at,
            LOCKOUT,
        )
        .unwrap()
    };
    let browser =
        accounts::remember_browser(&t.app.audit, user.id, None, "10.0.0.5", "test", now).unwrap();
    // Presenting it again keeps it: no second browser is made.
    assert_eq!(
        accounts::remember_browser(
            &t.app.audit,
            user.id,
            Some(&browser),
            "10.0.0.5",
            "test",
            now
        )
        .unwrap(),
        browser
    );
    for _ in 0..5 {
        assert_eq!(
            login("Wrong-password-1", None, now).reason,
            "wrong password"
        );
    }
    assert_eq!(login(PASSWORD, None, now).reason, "account locked");
    assert_eq!(
        login(PASSWORD, Some("made-up-cookie"), now).reason,
        "account locked",
        "an unknown cookie is a new browser"
    );
    assert!(login(PASSWORD, Some(&browser), now).user.is_some());

    // The known browser's own budget.
    for _ in 0..5 {
        assert_eq!(
            login("Wrong-password-1", Some(&browser), now).reason,
            "wrong password"
        );
    }
    assert_eq!(
        login(PASSWORD, Some(&browser), now).reason,
        "account locked"
    );
    accounts::unlock(&t.app.audit, &test_actor(), user.organisation_id, user.id).unwrap();
    assert!(login(PASSWORD, Some(&browser), now).user.is_some());
    assert!(login(PASSWORD, None, now).user.is_some());

    // A browser unused for longer than it is kept is a new browser again.
    let later = now + (appliance::lockout::KNOWN_BROWSER_DAYS + 1) * 24 * 60 * MINUTE;
    assert_eq!(
        appliance::lockout::known_browser(&mut t.conn(), user.id, &browser, later).unwrap(),
        None
    );
    let actions: Vec<String> = {
        use appliance::schema::audit_log::dsl::*;
        use diesel::prelude::*;
        audit_log
            .select(action)
            .order(seq)
            .load(&mut *t.conn())
            .unwrap()
    };
    assert_eq!(
        actions
            .iter()
            .filter(|a| *a == "auth.account.locked")
            .count(),
        2
    );
    assert_eq!(
        actions
            .iter()
            .filter(|a| *a == "auth.browser.remembered")
            .count(),
        1
    );
}

/// Five wrong second-factor codes lock codes for the account; the next code ends the
/// sign-ins waiting for one, unread; the lock ends with the lockout time.
fn wrong_codes_lock_the_second_factor_for_the_account(backend: Backend) {
    use appliance::second_factor::{self, CodeCheck};
    let (t, user) = with_user(backend);
    let key = appliance::sealing::SealingKey::load(&appliance::keyring::path(
        &t.app.config,
        appliance::keyring::Secret::TotpSealing,
    ))
    .unwrap();
    let now = 1_800_000_000_000_000;
    let secret = second_factor::new_secret().unwrap();
    let code = second_factor::code_at(&secret, now).unwrap();
    second_factor::enable(&t.app.audit, &key, &user, &secret, &code, now).unwrap();
    let limits = SessionLimits::from_minutes(8 * 60, 30);
    let (pending, _) = sessions::start(
        &mut t.conn(),
        user.id,
        "10.0.0.9",
        "test",
        now,
        sessions::SecondFactor::Pending,
    )
    .unwrap();
    let check = |code: &str, at: i64| {
        second_factor::check(&t.app.audit, &key, user.id, code, "10.0.0.9", at, 15).unwrap()
    };
    let valid: Vec<String> = (-1..=40)
        .map(|step| second_factor::code_at(&secret, now + step * 30_000_000).unwrap())
        .collect();
    let wrong = (0..10)
        .map(|d| d.to_string().repeat(6))
        .find(|c| !valid.contains(c))
        .unwrap();
    for _ in 0..5 {
        assert_eq!(check(&wrong, now), CodeCheck::Refused);
    }
    assert!(
        sessions::resume(&t.app.audit, pending.reveal(), now, limits)
            .unwrap()
            .is_ok(),
        "five wrong codes leave the sign-in waiting"
    );
    let next = second_factor::code_at(&secret, now + 30_000_000).unwrap();
    assert_eq!(
        check(&next, now),
        CodeCheck::LockedOut,
        "the right code during the lock"
    );
    assert_eq!(
        sessions::resume(&t.app.audit, pending.reveal(), now, limits)
            .unwrap()
            .map(|_| ()),
        Err(Rejected::Ended)
    );
    let owed: i64 = {
        use appliance::schema::mail_outbox::dsl::*;
        use diesel::prelude::*;
        mail_outbox
            .filter(subject.eq("[Plantgate] Too many wrong sign-in codes"))
            .count()
            .get_result(&mut *t.conn())
            .unwrap()
    };
    assert_eq!(owed, 1, "the owner is told once");
    let later = now + 16 * MINUTE;
    let code = second_factor::code_at(&secret, later).unwrap();
    assert_eq!(check(&code, later), CodeCheck::Accepted, "the lock ends");
}

on_both_backends!(
    a_known_browser_is_not_locked_out_by_strangers,
    wrong_codes_lock_the_second_factor_for_the_account,
    sessions_end_at_the_absolute_and_the_idle_limit,
    five_failures_lock_the_account_until_the_lockout_ends_or_an_admin_unlocks,
    contractor_accounts_stop_at_their_expiry,
    a_user_without_a_password_cannot_log_in,
);
