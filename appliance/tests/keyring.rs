//! The table of keys (`appliance::keyring::KEY_FILES`) against what people read and what
//! first boot makes: ARCHITECTURE.md's table, the image's accounts, and the files
//! `plantgate init` leaves in `{data_dir}/keys/` when run as root with service accounts.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use appliance::keyring::{Group, KEY_FILES, KeyFile, Owner, Service};

const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
const IMAGE_FILES: &str = "image/meta-plantgate/recipes-plantgate/plantgate/files";

/// The image's account names (plantgate.sysusers), as ARCHITECTURE.md writes them.
fn account(owner: Owner) -> &'static str {
    match owner {
        Owner::Root => "root",
        Owner::Of(Service::Web) => "plantgate-web",
        Owner::Of(Service::Ingest) => "plantgate-ingest",
        Owner::Of(Service::Firewall) => "plantgate-fw",
    }
}

fn group(group: Group) -> &'static str {
    match group {
        Group::Root => "root",
        Group::Services => "plantgate",
        Group::Mail => "plantgate-mail",
    }
}

fn reader(service: Service) -> &'static str {
    match service {
        Service::Web => "web",
        Service::Ingest => "ingest",
        Service::Firewall => "firewall",
    }
}

/// A row of the table as ARCHITECTURE.md should print it.
fn documented(row: &KeyFile) -> String {
    let readers: Vec<&str> = row.readers.iter().map(|s| reader(*s)).collect();
    format!(
        "| `{}` | {}:{} | {:04o} | {} | {} |",
        row.file,
        account(row.owner),
        group(row.group),
        row.mode,
        readers.join(", "),
        row.why
    )
}

#[test]
fn architecture_md_shows_the_table_the_code_enforces() {
    let text = std::fs::read_to_string(Path::new(REPO).join("ARCHITECTURE.md")).unwrap();
    let section = text
        .split("## Keys: who reads what")
        .nth(1)
        .expect("ARCHITECTURE.md has a section \"Keys: who reads what\"");
    let section = section.split("\n## ").next().unwrap_or_default();
    let rows: Vec<&str> = section
        .lines()
        .filter(|line| line.starts_with("| `"))
        .collect();
    let wanted: Vec<String> = KEY_FILES.iter().map(documented).collect();
    assert_eq!(
        rows,
        wanted,
        "ARCHITECTURE.md's key table differs from appliance::keyring::KEY_FILES; it should read:\n{}",
        wanted.join("\n")
    );
}

#[test]
fn the_image_names_the_accounts_and_groups_the_table_uses() {
    let files = Path::new(REPO).join(IMAGE_FILES);
    let sysusers = std::fs::read_to_string(files.join("plantgate.sysusers")).unwrap();
    let toml = std::fs::read_to_string(files.join("plantgate.toml")).unwrap();
    for (key, name) in [
        ("web", account(Owner::Of(Service::Web))),
        ("ingest", account(Owner::Of(Service::Ingest))),
        ("firewall", account(Owner::Of(Service::Firewall))),
        ("group", group(Group::Services)),
        ("mail_group", group(Group::Mail)),
    ] {
        assert!(
            toml.contains(&format!("\n{key} = \"{name}\"")),
            "plantgate.toml's [accounts] must set {key} = \"{name}\""
        );
        assert!(
            sysusers
                .lines()
                .any(|line| line.split_whitespace().nth(1) == Some(name)),
            "plantgate.sysusers must declare {name}"
        );
    }
    // The mail group holds exactly the services that read a key of that group.
    let mut members: Vec<&str> = sysusers
        .lines()
        .filter(|line| line.starts_with("m ") && line.ends_with(group(Group::Mail)))
        .filter_map(|line| line.split_whitespace().nth(1))
        .collect();
    members.sort_unstable();
    let mut readers: Vec<&str> = KEY_FILES
        .iter()
        .filter(|row| row.group == Group::Mail)
        .flat_map(|row| row.readers.iter().map(|s| account(Owner::Of(*s))))
        .collect();
    readers.sort_unstable();
    readers.dedup();
    assert_eq!(members, readers);
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .any(|line| line.starts_with("Uid:") && line.split_whitespace().nth(2) == Some("0"))
}

#[test]
fn first_boot_makes_every_key_with_the_tables_owner_and_mode_and_nothing_else() {
    assert!(
        is_root(),
        "\n\n*** This test gives key files to service accounts: run it (scripts/test) as root.\n"
    );
    let (web, ingest, firewall, services, mail) = (61901, 61902, 61903, 61900, 61904);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("plantgate.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\n[accounts]\nweb = \"{web}\"\ningest = \"{ingest}\"\n\
             firewall = \"{firewall}\"\ngroup = \"{services}\"\nmail_group = \"{mail}\"\n",
            dir.path().join("data").display().to_string()
        ),
    )
    .unwrap();
    let init = Command::new(env!("CARGO_BIN_EXE_plantgate"))
        .arg("init")
        .env("PLANTGATE_CONFIG", &config)
        .output()
        .unwrap();
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );

    let keys = dir.path().join("data/keys");
    let meta = std::fs::metadata(&keys).unwrap();
    assert_eq!(
        (meta.uid(), meta.gid(), meta.mode() & 0o7777),
        (0, services, appliance::keyring::KEYS_DIR_MODE)
    );
    let mut made: Vec<String> = std::fs::read_dir(&keys)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    made.sort();
    let mut listed: Vec<String> = KEY_FILES.iter().map(|row| row.file.to_owned()).collect();
    listed.sort();
    assert_eq!(made, listed, "init made exactly the table's files");
    for row in &KEY_FILES {
        let meta = std::fs::metadata(keys.join(row.file)).unwrap();
        let uid = match row.owner {
            Owner::Root => 0,
            Owner::Of(Service::Web) => web,
            Owner::Of(Service::Ingest) => ingest,
            Owner::Of(Service::Firewall) => firewall,
        };
        let gid = match row.group {
            Group::Root => 0,
            Group::Services => services,
            Group::Mail => mail,
        };
        assert_eq!(
            (meta.uid(), meta.gid(), meta.mode() & 0o7777),
            (uid, gid, row.mode),
            "{}",
            row.file
        );
    }
    // The store's files are the services' group's to write, nothing for others.
    let db = std::fs::metadata(dir.path().join("data/plantgate.db")).unwrap();
    assert_eq!(
        (db.gid(), db.mode() & 0o007, db.mode() & 0o060),
        (services, 0, 0o060)
    );

    // Root appends after init, as the boot health check does: the signed head it rewrites
    // stays the services' group's to read and write, or no service could append again.
    // Without relying on the directory's setgid bit, which the booted image was seen
    // without.
    use std::os::unix::fs::PermissionsExt;
    let data = dir.path().join("data");
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o770)).unwrap();
    let loaded = appliance::config::Config::load(Some(&config)).unwrap();
    let actor = appliance::Actor::System("health".into());
    let app = appliance::Appliance::open(loaded, &actor).unwrap();
    app.audit
        .record(appliance::AuditEvent::new(actor, "test.root.append"))
        .unwrap();
    for file in ["audit-head.json", "audit-head.lock"] {
        let meta = std::fs::metadata(dir.path().join("data").join(file)).unwrap();
        assert_eq!(
            (meta.gid(), meta.mode() & 0o777),
            (services, 0o660),
            "{file} after root appended"
        );
    }
}
