//! People in the organisation first-run setup made, for tests that need more than its
//! administrator.

use appliance::accounts::{self, PasswordPolicy};
use appliance::models::{Organisation, Role, User};
use appliance::time::now_us;
use appliance::{Actor, Appliance};

/// The organisation `setup_admin` created.
pub fn organisation(app: &Appliance) -> Organisation {
    Organisation::find_by_name(
        &mut app.store.conn().expect("a store connection"),
        "Moulding Plant Nord",
    )
    .expect("the organisations")
    .expect("set up")
}

/// A user `name` (`name@plant.example`, lower case) with `role` and the tests' password.
pub fn person(app: &Appliance, org: &Organisation, name: &str, role: Role) -> User {
    let actor = Actor::System("test".into());
    let user = User::create(
        &app.audit,
        &actor,
        org.id,
        name,
        &format!("{}@plant.example", name.to_lowercase()),
        role,
        now_us(),
    )
    .expect("a user");
    accounts::set_password(
        &app.audit,
        &actor,
        &user,
        super::PASSWORD,
        PasswordPolicy { min_chars: 12 },
        0,
    )
    .expect("a password");
    user
}
