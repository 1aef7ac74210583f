//! The REST API's OpenAPI document against the API itself: the routes the portal really
//! registers, the values each parameter really takes, the methods each path really answers,
//! and schemathesis fuzzing the running portal with every check it has.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::print_stdout)] // test code

mod common;

use common::*;

use std::collections::BTreeSet;
use std::process::Command;

use serde_json::Value;
use testkit::on_both_backends;
use testkit::store::Backend;

const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// `(METHOD, path)` for every operation in the document.
fn documented(doc: &Value) -> BTreeSet<(String, String)> {
    let mut operations = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in METHODS {
            if item.get(method).is_some() {
                operations.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    operations
}

/// The document as the running portal serves it.
fn served_document(portal: &Portal) -> Value {
    let (status, doc) = portal.api(None, "/api/v1/openapi.json");
    assert_eq!(status, 200, "{doc}");
    assert!(
        doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")),
        "{doc}"
    );
    doc
}

/// A parameter of an operation, by name.
fn parameter<'a>(doc: &'a Value, method: &str, path: &str, name: &str) -> &'a Value {
    doc["paths"][path][method]["parameters"]
        .as_array()
        .unwrap_or_else(|| panic!("{method} {path} has no parameters"))
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("{method} {path} does not declare {name}"))
}

/// The values a parameter's schema lists (directly, or under `oneOf`/`anyOf` beside null).
fn enum_values(schema: &Value) -> BTreeSet<String> {
    let mut values = BTreeSet::new();
    let mut collect = |s: &Value| {
        for v in s["enum"].as_array().into_iter().flatten() {
            if let Some(v) = v.as_str() {
                values.insert(v.to_owned());
            }
        }
    };
    collect(schema);
    for key in ["oneOf", "anyOf"] {
        for s in schema[key].as_array().into_iter().flatten() {
            collect(s);
        }
    }
    values
}

fn status_of(portal: &Portal, token: &str, method: &str, path: &str) -> (u16, Reply) {
    let url = format!("{}{path}", portal.origin());
    let auth = format!("Authorization: Bearer {token}");
    let reply = portal.curl(None, &["-X", method, "-H", &auth, &url]);
    (reply.status, reply)
}

fn allow_set(reply: &Reply) -> BTreeSet<String> {
    reply
        .header("allow")
        .unwrap_or_else(|| panic!("405 without Allow: {reply:?}"))
        .split(',')
        .map(|m| m.trim().to_uppercase())
        .filter(|m| !m.is_empty())
        .collect()
}

#[test]
fn the_document_lists_exactly_the_routes_the_portal_registers() {
    // The table the API's router is built from, against the document it serves.
    let registered: BTreeSet<(String, String)> = portal::api::routes()
        .iter()
        .map(|r| (r.method.to_string(), format!("/api/v1{}", r.path)))
        .collect();
    let portal = Portal::start("api_requests_per_minute = 100000");
    let doc = served_document(&portal);
    let documented = documented(&doc);
    let undocumented: Vec<_> = registered.difference(&documented).collect();
    let unserved: Vec<_> = documented.difference(&registered).collect();
    assert!(
        undocumented.is_empty(),
        "registered but not documented: {undocumented:?}"
    );
    assert!(
        unserved.is_empty(),
        "documented but not served: {unserved:?}"
    );

    // And the running portal answers every documented operation, and only those: without a
    // token a secured operation is refused by its handler (401), not by the router (404 or
    // 405); any other method gets 405 with exactly the documented methods in `Allow`.
    let paths: BTreeSet<&String> = documented.iter().map(|(_, p)| p).collect();
    for path in paths {
        let allowed: BTreeSet<String> = documented
            .iter()
            .filter(|(_, p)| p == path)
            .map(|(m, _)| m.clone())
            .collect();
        for method in ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"] {
            let reply = portal.curl(None, &["-X", method, &format!("{}{path}", portal.origin())]);
            if allowed.contains(method) {
                let expected = if path == "/api/v1/openapi.json" {
                    200
                } else {
                    401
                };
                assert_eq!(reply.status, expected, "{method} {path}: {}", reply.body);
            } else {
                assert_eq!(reply.status, 405, "{method} {path}: {}", reply.body);
                assert_eq!(allow_set(&reply), allowed, "{method} {path}");
                let body: Value = serde_json::from_str(&reply.body).expect("JSON error");
                assert_eq!(body["error"], "request.method_not_allowed", "{body}");
            }
        }
    }
    // A path the API does not have is still 404, whatever the method.
    for method in ["GET", "DELETE"] {
        let reply = portal.curl(
            None,
            &["-X", method, &format!("{}/api/v1/nothing", portal.origin())],
        );
        assert_eq!(reply.status, 404, "{method}: {}", reply.body);
        assert!(reply.body.contains("request.not_found"), "{}", reply.body);
    }
}

#[test]
fn the_portals_pages_answer_an_unsupported_method_with_405_too() {
    let portal = Portal::start("");
    let origin = format!("Origin: {}", portal.origin());
    let put = |path: &str| {
        portal.curl(
            None,
            &[
                "-X",
                "PUT",
                "-H",
                &origin,
                &format!("{}{path}", portal.origin()),
            ],
        )
    };
    let reply = put("/login");
    assert_eq!(reply.status, 405, "{}", reply.body);
    assert_eq!(
        allow_set(&reply),
        BTreeSet::from(["GET".to_owned(), "POST".to_owned()])
    );
    assert!(reply.body.contains("does not take that kind of request"));
    let reply = put("/users/7");
    assert_eq!(reply.status, 405);
    assert_eq!(
        allow_set(&reply),
        BTreeSet::from(["GET".to_owned(), "POST".to_owned()])
    );
    // A path no page has stays 404.
    assert_eq!(put("/no-such-page").status, 404);
    assert_eq!(portal.get(None, "/no-such-page").status, 404);
}

#[test]
fn every_restricted_parameter_declares_its_values_and_the_api_takes_exactly_those() {
    let portal = Portal::start("api_requests_per_minute = 100000");
    portal.setup_admin();
    let (token, _) = portal.token(
        &[
            "audit:read",
            "readings:read",
            "access:read",
            "firmware:read",
            "firmware:write",
        ],
        30,
        0,
    );
    let doc = served_document(&portal);
    // (path, parameter, the values the document must list, a query that makes every
    // other check pass, so the status shows how the value alone was taken).
    let cases = [
        (
            "/api/v1/audit",
            "outcome",
            &["success", "failure", "denied"][..],
            "",
        ),
        ("/api/v1/access-requests", "state", &["open", "all"][..], ""),
        (
            "/api/v1/readings/export",
            "format",
            &["csv", "jsonl"][..],
            "site=1&",
        ),
    ];
    for (path, name, values, base) in cases {
        let declared = enum_values(&parameter(&doc, "get", path, name)["schema"]);
        let expected: BTreeSet<String> = values.iter().map(|v| (*v).to_owned()).collect();
        assert_eq!(declared, expected, "{path} {name}");
        for value in values {
            let (status, reply) = status_of(
                &portal,
                &token,
                "GET",
                &format!("{path}?{base}{name}={value}"),
            );
            // The export's site 1 is the admin organisation's first site or none: 200 or
            // 404, but never a refusal of the value.
            assert!(
                status == 200 || status == 404,
                "{path}?{name}={value}: {status} {}",
                reply.body
            );
        }
        let (status, reply) = status_of(
            &portal,
            &token,
            "GET",
            &format!("{path}?{base}{name}=maybe"),
        );
        assert_eq!(status, 400, "{path}?{name}=maybe: {}", reply.body);
        assert!(reply.body.contains("request.invalid"), "{}", reply.body);
    }

    // The firmware model: a pattern, and the API holds to it exactly.
    let model = &parameter(&doc, "post", "/api/v1/firmware", "model")["schema"];
    assert_eq!(model["pattern"], "^[A-Za-z0-9._-]{1,64}$", "{model}");
    let upload = |query: &str| {
        let url = format!("{}/api/v1/firmware?{query}", portal.origin());
        let auth = format!("Authorization: Bearer {token}");
        portal
            .curl(
                None,
                &[
                    "-X",
                    "POST",
                    "-H",
                    &auth,
                    "-H",
                    "Content-Type: application/octet-stream",
                    "--data-binary",
                    "not a bundle",
                    &url,
                ],
            )
            .status
    };
    for bad in ["model=%20pump", "model=pump%20", "model=pu%2Fmp", "model="] {
        assert_eq!(upload(bad), 400, "{bad}");
    }
    // A model in the pattern gets past the parameter check (to the bundle's verification:
    // refused as malformed, or 503 without trust anchors here).
    assert!(matches!(upload("model=pump-2.b_1"), 422 | 503));

    // The live stream is documented as what it is.
    let stream = &doc["paths"]["/api/v1/readings/stream"]["get"];
    assert!(
        stream["responses"]["200"]["content"]["text/event-stream"].is_object(),
        "{stream}"
    );
    for name in ["metric", "Last-Event-ID"] {
        parameter(&doc, "get", "/api/v1/readings/stream", name);
    }
    // The export and the stream take exactly one of device and site: an exploded query
    // object that is one of two one-property objects.
    for path in ["/api/v1/readings/export", "/api/v1/readings/stream"] {
        let of = parameter(&doc, "get", path, "of");
        assert_eq!(of["explode"], true, "{of}");
        let alternatives: Vec<&Value> = of["schema"]["oneOf"]
            .as_array()
            .expect("oneOf")
            .iter()
            .collect();
        let names: BTreeSet<String> = alternatives
            .iter()
            .map(|a| a["required"][0].as_str().expect("one required").to_owned())
            .collect();
        assert_eq!(
            names,
            BTreeSet::from(["device".to_owned(), "site".to_owned()]),
            "{of}"
        );
        let (status, reply) = status_of(&portal, &token, "GET", &format!("{path}?device=X&site=1"));
        assert_eq!(status, 400, "both: {}", reply.body);
        let (status, reply) = status_of(&portal, &token, "GET", &format!("{path}?metric=t"));
        assert_eq!(status, 400, "neither: {}", reply.body);
    }
}

#[test]
fn a_firmware_upload_without_trust_anchors_is_503_without_a_path_on_the_appliance() {
    // The updater settings file named here does not exist: the appliance cannot verify
    // firmware, and the client is told so without learning where anything lives.
    let portal = Portal::start("updater_config = \"/nonexistent/plantgate-updater.toml\"");
    portal.setup_admin();
    let (token, _) = portal.token(&["firmware:write"], 30, 0);
    let url = format!("{}/api/v1/firmware?model=pump", portal.origin());
    let auth = format!("Authorization: Bearer {token}");
    let reply = portal.curl(
        None,
        &[
            "-X",
            "POST",
            "-H",
            &auth,
            "-H",
            "Content-Type: application/octet-stream",
            "--data-binary",
            "not a bundle",
            &url,
        ],
    );
    assert_eq!(reply.status, 503, "{}", reply.body);
    let body: Value = serde_json::from_str(&reply.body).expect("JSON error");
    assert_eq!(body["error"], "firmware.unavailable", "{body}");
    let message = body["message"].as_str().expect("message");
    assert!(!message.contains('/'), "a path in the message: {message}");
    assert!(!message.contains("nonexistent"), "{message}");
    assert!(
        message.contains("cannot be verified"),
        "the client is told what is wrong: {message}"
    );
}

/// Runs schemathesis with every check against the document `doc` (saved to a file: run from
/// the document's own URL, schemathesis leaves that operation out), with `config` as its
/// configuration and `args` added; fails the test on any failure. Returns its report.
fn schemathesis(
    portal: &Portal,
    dir: &std::path::Path,
    token: &str,
    config: &str,
    args: &[&str],
) -> String {
    let doc_file = dir.join("openapi.json");
    std::fs::write(&doc_file, served_document(portal).to_string()).unwrap();
    let config_file = dir.join("schemathesis.toml");
    std::fs::write(&config_file, config).unwrap();
    let output = Command::new("schemathesis")
        .arg("--config-file")
        .arg(&config_file)
        .arg("run")
        .arg(&doc_file)
        .args(["--url", &portal.origin()])
        .args(["--checks", "all", "--tls-verify", "false"])
        .args(["--max-examples", "60", "--seed", "1"])
        // Should a stream open, this ends the request as a failure rather than a hang.
        .args(["--request-timeout", "30"])
        .args(["--header", &format!("Authorization: Bearer {token}")])
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .expect(
            "\n*** schemathesis is missing: scripts/test installs it (pip install schemathesis)\n",
        );
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    println!("{text}");
    assert!(
        output.status.success(),
        "schemathesis found a problem:\n{text}"
    );
    text
}

/// One expectation widened, for one operation: a schema-valid body is not yet a valid
/// bundle. Whether the bytes are a bundle signed by this appliance's trust anchors is the
/// verification's to say (422, with the refusal's code, as documented), and no schema can
/// express a signature.
const FIRMWARE_BODIES: &str = r#"
[[operations]]
include-path = "/api/v1/firmware"
include-method = "POST"
checks.positive_data_acceptance.expected-statuses = ["2xx", "401", "403", "404", "409", "422", "429"]
"#;

on_both_backends!(schemathesis_with_every_check_finds_no_failure_against_the_document);

fn schemathesis_with_every_check_finds_no_failure_against_the_document(backend: Backend) {
    // Firmware uploads are verified against real trust anchors, so the fuzzed bodies meet
    // the real checks rather than a missing configuration.
    let dir = tempfile::tempdir().unwrap();
    let anchors = testkit::vendor::Vendor::new(1, "vendor")
        .write_anchor_set(&dir.path().join("anchors.pgtrust"), 1);
    let updater_toml = dir.path().join("updater.toml");
    std::fs::write(
        &updater_toml,
        format!(
            "hardware = \"x\"\nfactory_version = \"1.0.0\"\ntrust_anchors = {:?}\n\
             [slots]\na = \"/a\"\nb = \"/b\"\n[boot]\ngrubenv = \"/g\"\n",
            anchors.display().to_string()
        ),
    )
    .unwrap();
    let portal = Portal::start_on(
        backend,
        &format!(
            "api_requests_per_minute = 100000\nupdater_config = {:?}",
            updater_toml.display().to_string()
        ),
    );
    portal.setup_admin();
    let (token, _) = portal.token(&appliance::tokens::SCOPES, 30, 0);

    // Every operation, while the organisation has no sites and no devices: no stream can
    // open and leave a request waiting.
    let text = schemathesis(&portal, dir.path(), &token, FIRMWARE_BODIES, &[]);
    let operations = documented(&served_document(&portal)).len();
    assert!(
        text.contains(&format!("{operations} selected / {operations} total"))
            && text.contains("passed"),
        "schemathesis did not test every operation:\n{text}"
    );

    // Again with a site, a device and its readings, so the readings, the export and the
    // machines answer 200 and their bodies meet the schema checks. The stream is left out
    // of this run: with a real device it would stay open, as it should.
    let actor = appliance::Actor::System("test".into());
    let own = appliance::models::Organisation::list(&mut portal.app.store.conn().unwrap())
        .unwrap()
        .remove(0);
    let site = appliance::models::Site::create(
        &portal.app.audit,
        &actor,
        own.id,
        "Hall 3",
        "",
        appliance::time::now_us(),
    )
    .unwrap();
    let request = appliance::devices::DeviceRequest {
        serial: "MM-1".into(),
        kind: appliance::devices::DeviceKind::Monitor,
        site: site.id,
        gateway: None,
        model: None,
    };
    let (device, _) = appliance::devices::Device::register(
        &portal.app.audit,
        &actor,
        &request,
        appliance::time::now_us(),
    )
    .unwrap();
    let t0 = 1_795_334_400_000_000;
    let rows: Vec<appliance::readings::NewReading> = (1..=30)
        .map(|i| appliance::readings::NewReading {
            device_id: device.id,
            seq: i,
            metric: "temperature_c".into(),
            value: 70.0 + i as f64,
            measured_at_us: t0 + i * 1_000_000,
            received_at_us: t0 + i * 1_000_000,
        })
        .collect();
    appliance::readings::insert_new(&mut portal.app.store.conn().unwrap(), &rows).unwrap();
    let with_data = format!(
        "{FIRMWARE_BODIES}\n[[operations]]\ninclude-path = \"/api/v1/readings\"\n\
         parameters = {{ \"query.device\" = \"MM-1\" }}\n"
    );
    let text = schemathesis(
        &portal,
        dir.path(),
        &token,
        &with_data,
        &["--exclude-path", "/api/v1/readings/stream"],
    );
    let operations = operations - 1;
    assert!(
        text.contains(&format!("{operations} selected / {} total", operations + 1)),
        "schemathesis did not test the operations:\n{text}"
    );
}

/// The document as clients read it, kept as a snapshot: a change to the API's contract (a
/// path, a parameter, an answer) shows up as a diff in review.
#[test]
fn the_openapi_document_reads_as_its_snapshot() {
    let document = serde_json::to_string_pretty(&portal::api::document()).expect("JSON");
    testkit::snapshot::assert_snapshot(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/snapshots"),
        "openapi.json",
        &(document + "\n"),
    );
}
