//! Mutual TLS with Plantgate's device CA, driven by tools nobody here wrote: `openssl req`
//! makes the key and CSR, `curl` enrols it with a one-time token, posts readings with the
//! client certificate, renews it, `mosquitto_pub` publishes with it, and both are refused
//! in the TLS handshake once the certificates are revoked.
#![allow(clippy::expect_used, clippy::unwrap_used)] // test code: a failed expectation is a failed test

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use appliance::device_ca;
use appliance::devices::DeviceKind;
use common::{Backend, TestIngest, actor};
use testkit::on_both_backends;

fn make_csr(dir: &Path, name: &str) -> (PathBuf, String) {
    let key = dir.join(format!("{name}.key"));
    let csr = dir.join(format!("{name}.csr"));
    let status = Command::new("openssl")
        .args([
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&csr)
        .args(["-subj", "/CN=whatever-the-device-says"])
        .status()
        .expect("openssl req");
    assert!(status.success());
    (key, std::fs::read_to_string(&csr).unwrap())
}

/// curl against the ingest; `auth` is extra arguments (a bearer header or a client cert).
fn curl(t: &TestIngest, path: &str, auth: &[&str], body: &str) -> (u16, String) {
    let output = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "30",
            "-o",
            "-",
            "-w",
            "\n%{http_code}",
            "--cacert",
        ])
        .arg(t.cert())
        .args(auth)
        .args([
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            body,
        ])
        .arg(format!("https://127.0.0.1:{}{path}", t.https_port))
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

fn enrol(t: &TestIngest, auth: &[&str], serial: &str, csr: &str) -> (u16, String) {
    let body = serde_json::json!({ "serial": serial, "csr": csr }).to_string();
    curl(t, "/v1/enrol", auth, &body)
}

fn reading(seq: i64) -> String {
    serde_json::json!({ "readings": [{ "metric": "cycle_count", "value": seq, "ts": 1_767_225_600_000_i64 + seq, "seq": seq }] }).to_string()
}

fn a_device_enrols_posts_with_its_certificate_renews_and_is_refused_once_revoked(backend: Backend) {
    let mut t = TestIngest::new(backend);
    let monitor = t.register("MM-CERT", DeviceKind::Monitor, None);
    t.register("MM-OTHER", DeviceKind::Monitor, None);
    t.start();
    let dir = t.dir.path().to_owned();
    let token = device_ca::issue_enrolment_token(
        &t.app.audit,
        &actor(),
        "MM-CERT",
        appliance::time::now_us(),
    )
    .unwrap();
    let bearer = format!("Authorization: Bearer {}", token.reveal());
    let (key, csr) = make_csr(&dir, "first");

    // The token is for MM-CERT only.
    let (status, reply) = enrol(&t, &["-H", &bearer], "MM-OTHER", &csr);
    assert_eq!(status, 400, "{reply}");
    let (status, reply) = enrol(&t, &["-H", &bearer], "MM-CERT", &csr);
    assert_eq!(status, 200, "{reply}");
    let issued: serde_json::Value = serde_json::from_str(&reply).unwrap();
    let cert = dir.join("first.crt");
    std::fs::write(&cert, issued["certificate"].as_str().unwrap()).unwrap();
    let subject = Command::new("openssl")
        .args(["x509", "-noout", "-subject", "-in"])
        .arg(&cert)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&subject.stdout).contains("CN = MM-CERT"),
        "the CA names the device, not the CSR"
    );
    let (status, reply) = enrol(&t, &["-H", &bearer], "MM-CERT", &csr);
    assert_eq!(status, 400, "a token enrols once: {reply}");

    let with_cert = |cert: &Path, key: &Path| -> Vec<String> {
        vec![
            "--cert".into(),
            cert.display().to_string(),
            "--key".into(),
            key.display().to_string(),
        ]
    };
    let first = with_cert(&cert, &key);
    let first: Vec<&str> = first.iter().map(String::as_str).collect();
    let (status, reply) = curl(&t, "/v1/readings", &first, &reading(1));
    assert_eq!(status, 200, "{reply}");
    assert_eq!(t.stored_seqs(&monitor.device), [1]);

    // A certificate speaks for its own device only.
    let foreign = serde_json::json!({ "readings": [{ "device": "MM-OTHER", "metric": "cycle_count", "value": 1, "ts": 1_767_225_600_000_i64, "seq": 1 }] }).to_string();
    let (status, _) = curl(&t, "/v1/readings", &first, &foreign);
    assert_eq!(status, 403);

    // Renewal with the current certificate, for a new key.
    let (new_key, new_csr) = make_csr(&dir, "renewed");
    let (status, reply) = enrol(&t, &first, "MM-CERT", &new_csr);
    assert_eq!(status, 200, "{reply}");
    let renewed: serde_json::Value = serde_json::from_str(&reply).unwrap();
    let new_cert = dir.join("renewed.crt");
    std::fs::write(&new_cert, renewed["certificate"].as_str().unwrap()).unwrap();
    let second = with_cert(&new_cert, &new_key);
    let second: Vec<&str> = second.iter().map(String::as_str).collect();
    let (status, reply) = curl(&t, "/v1/readings", &second, &reading(2));
    assert_eq!(status, 200, "{reply}");

    // A certificate from another CA fails the handshake.
    let (stranger_pem, stranger_key_pem) = appliance::tls::self_signed("MM-CERT", &[]).unwrap();
    let stranger = dir.join("stranger.crt");
    let stranger_key = dir.join("stranger.key");
    std::fs::write(&stranger, stranger_pem).unwrap();
    std::fs::write(&stranger_key, stranger_key_pem).unwrap();
    let foreign_ca = with_cert(&stranger, &stranger_key);
    let foreign_ca: Vec<&str> = foreign_ca.iter().map(String::as_str).collect();
    let (status, _) = curl(&t, "/v1/readings", &foreign_ca, &reading(9));
    assert_eq!(status, 0, "no HTTP status: the handshake was refused");

    // MQTT with the same certificate: mosquitto_pub, no password.
    let mqtt = |cert: &Path, key: &Path, seq: i64| {
        Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &t.mqtt_port.to_string(), "-q", "1"])
            .arg("--cafile")
            .arg(t.cert())
            .arg("--cert")
            .arg(cert)
            .arg("--key")
            .arg(key)
            .args([
                "-u",
                "MM-CERT",
                "-i",
                "MM-CERT",
                "-t",
                "plantgate/MM-CERT/readings",
            ])
            .args(["-m", &reading(seq)])
            .output()
            .expect("mosquitto_pub")
    };
    let published = mqtt(&new_cert, &new_key, 3);
    assert!(
        published.status.success(),
        "{}",
        String::from_utf8_lossy(&published.stderr)
    );
    assert_eq!(t.stored_seqs(&monitor.device), [1, 2, 3]);

    let revoked = device_ca::revoke_certificates(
        &t.app.audit,
        &actor(),
        "MM-CERT",
        appliance::time::now_us(),
    )
    .unwrap();
    assert_eq!(revoked, 2);
    // Refused in the TLS handshake: no HTTP answer at all.
    for auth in [&first, &second] {
        let (status, reply) = curl(&t, "/v1/readings", auth, &reading(4));
        assert_eq!(
            status, 0,
            "a revoked certificate got an HTTP answer: {reply}"
        );
        let (status, _) = enrol(&t, auth, "MM-CERT", &new_csr);
        assert_eq!(status, 0, "a revoked certificate cannot renew itself");
    }
    let handshake = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &format!("127.0.0.1:{}", t.https_port),
        ])
        .arg("-CAfile")
        .arg(t.cert())
        .arg("-cert")
        .arg(&new_cert)
        .arg("-key")
        .arg(&new_key)
        .args(["-tls1_2", "-verify_return_error"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("openssl s_client");
    let said = String::from_utf8_lossy(&handshake.stdout).into_owned()
        + &String::from_utf8_lossy(&handshake.stderr);
    assert!(
        said.contains("alert") && !handshake.status.success(),
        "the handshake with a revoked certificate completed:\n{said}"
    );
    assert!(
        !mqtt(&new_cert, &new_key, 6).status.success(),
        "revoked over MQTT too"
    );
    assert_eq!(t.stored_seqs(&monitor.device), [1, 2, 3]);
    // The bearer secret still works alongside.
    let (status, reply) = t.curl(&monitor.secret, reading(5).as_bytes(), &[]);
    assert_eq!(status, 200, "{reply}");
}

on_both_backends!(a_device_enrols_posts_with_its_certificate_renews_and_is_refused_once_revoked);
