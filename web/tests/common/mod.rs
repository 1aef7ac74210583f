//! The portal harness shared by the tests and the load benchmark: the real `plantgate-web`
//! binary, driven by `curl`.
//!
//! The portal listens on port 0: the kernel gives it free ports as it binds them, and it
//! reports them with its readiness (`sd_notify`'s `READY=1` and `STATUS=`, sent once both
//! listeners are bound and TLS is set up) on a socket the test listens on. Nothing here picks
//! a port by binding and releasing it (another process could take it meanwhile, and a TCP
//! connect would then reach that process and call the portal ready), and nothing waits a
//! fixed time.
#![allow(dead_code, clippy::expect_used, clippy::unwrap_used)]

use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use appliance::config::Config;
use appliance::enrolment::{self, FIRST_ADMIN};
use appliance::{Actor, Appliance};

pub mod certificates;
pub mod in_process;
pub mod pages;
pub mod people;

pub const PASSWORD: &str = "Vierkant-Schraube-77";
pub const EMAIL: &str = "ada@plant.example";

pub struct Portal {
    pub dir: tempfile::TempDir,
    pub https: u16,
    pub http: u16,
    pub token: String,
    pub app: Appliance,
    child: Child,
    /// The PostgreSQL database the portal stores in, for [`Portal::start_on`]; dropped last.
    database: Option<testkit::store::PostgresDatabase>,
}

/// Waits for `READY=1` from `child` on `socket`, and returns the message (with its
/// `STATUS=` line); fails the test if the child exits first or stays silent too long.
fn wait_until_ready(socket: &UnixDatagram, child: &mut Child) -> String {
    // Generous: a cold PostgreSQL database on a busy machine takes its time to migrate.
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut message = [0u8; 4096];
    loop {
        match socket.recv(&mut message) {
            Ok(n) => {
                let text = String::from_utf8_lossy(&message[..n]).into_owned();
                if text.lines().any(|line| line == "READY=1") {
                    return text;
                }
            }
            Err(err)
                if matches!(
                    err.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(err) => panic!("notify socket: {err}"),
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the service exited at start: {status}");
        }
        assert!(
            Instant::now() < deadline,
            "the service did not say it was ready"
        );
    }
}

/// `plantgate-ingest` beside a [`Portal`], killed when dropped.
pub struct Ingest {
    child: Child,
    pub https: u16,
}

impl Ingest {
    /// Posts readings (the ingest's JSON) with a device's secret; returns (status, body).
    pub fn post(&self, secret: &str, body: &str) -> (u16, String) {
        let output = Command::new("curl")
            .args([
                "-sS",
                "-k",
                "--max-time",
                "60",
                "-o",
                "-",
                "-w",
                "\n%{http_code}",
            ])
            .args(["-H", &format!("Authorization: Bearer {secret}")])
            .args([
                "-H",
                "Content-Type: application/json",
                "--data-binary",
                body,
            ])
            .arg(format!("https://127.0.0.1:{}/v1/readings", self.https))
            .output()
            .expect("curl");
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (code.trim().parse().unwrap_or(0), body.to_owned())
    }
}

impl Drop for Ingest {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A response as curl saw it.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

impl Portal {
    /// A portal where no role needs a second factor, unless `web_settings` says otherwise;
    /// the second factor has tests of its own.
    pub fn start(web_settings: &str) -> Portal {
        Portal::start_on(testkit::store::Backend::Sqlite, web_settings)
    }

    /// [`Portal::start`] on a store of the given backend: SQLite in the data directory, or
    /// a fresh PostgreSQL database at `TEST_POSTGRES_URL`.
    pub fn start_on(backend: testkit::store::Backend, web_settings: &str) -> Portal {
        let database = (backend == testkit::store::Backend::Postgres)
            .then(testkit::store::PostgresDatabase::create);
        let store = database
            .as_ref()
            .map(|db| format!("[store]\nurl = {:?}\n", db.url()))
            .unwrap_or_default();
        let second_factor = if web_settings.contains("second_factor_roles") {
            ""
        } else {
            "second_factor_roles = []"
        };
        // The second factor's line first: `web_settings` may end with tables of their own
        // (`[smtp]`, `[ingest]`), which a line after it would land in.
        let web_settings = format!("{second_factor}\n{web_settings}");
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("plantgate.toml");
        std::fs::write(
            &config_path,
            format!(
                "data_dir = {:?}\n{store}[log]\nlevel = \"warn\"\n[web]\nhttps_listen = \"127.0.0.1:0\"\n\
                 http_listen = \"127.0.0.1:0\"\nhost_name = \"localhost\"\n{web_settings}\n",
                dir.path().join("data").display().to_string()
            ),
        )
        .unwrap();
        let config = Config::load(Some(&config_path)).unwrap();
        config.prepare_data_dir().unwrap();
        appliance::provision::keys(&config).unwrap();
        let app = Appliance::create(config, &Actor::System("test".into())).unwrap();
        let (token, _) = enrolment::issue(
            &app.audit,
            &Actor::System("test".into()),
            FIRST_ADMIN,
            3_600_000_000,
            appliance::time::now_us(),
        )
        .unwrap();
        let socket_path = dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&socket_path).expect("notify socket");
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("notify socket timeout");
        let mut child = Command::new(env!("CARGO_BIN_EXE_plantgate-web"))
            .env("PLANTGATE_CONFIG", &config_path)
            .env("NOTIFY_SOCKET", &socket_path)
            .stdout(Stdio::null())
            .spawn()
            .expect("start plantgate-web");
        let status = wait_until_ready(&socket, &mut child);
        let _ = std::fs::remove_file(&socket_path);
        let port = |name: &str| {
            appliance::sd_notify::status_port(&status, name)
                .unwrap_or_else(|| panic!("no {name} address in {status:?}"))
        };
        Portal {
            https: port("https"),
            http: port("http"),
            dir,
            token: token.reveal().to_owned(),
            app,
            child,
            database,
        }
    }

    /// Starts `plantgate-ingest` (built beside the portal: `cargo build --bins`) on the
    /// portal's configuration and store, which must have an `[ingest]` table; returns it
    /// with its HTTPS port once it says it is ready.
    pub fn start_ingest(&self) -> Ingest {
        let binary =
            PathBuf::from(env!("CARGO_BIN_EXE_plantgate-web")).with_file_name("plantgate-ingest");
        assert!(
            binary.exists(),
            "\n\n*** {} is missing: build the workspace's binaries first (`cargo build --bins`; scripts/test does).\n",
            binary.display()
        );
        let socket_path = self.dir.path().join("ingest-notify.sock");
        let socket = UnixDatagram::bind(&socket_path).expect("notify socket");
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("notify socket timeout");
        let mut child = Command::new(binary)
            .env("PLANTGATE_CONFIG", self.dir.path().join("plantgate.toml"))
            .env("NOTIFY_SOCKET", &socket_path)
            .stdout(Stdio::null())
            .spawn()
            .expect("start plantgate-ingest");
        let status = wait_until_ready(&socket, &mut child);
        let _ = std::fs::remove_file(&socket_path);
        let https = appliance::sd_notify::status_port(&status, "https")
            .unwrap_or_else(|| panic!("no https address in {status:?}"));
        Ingest { child, https }
    }

    pub fn origin(&self) -> String {
        format!("https://127.0.0.1:{}", self.https)
    }

    pub fn jar(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.cookies"))
    }

    /// `curl` against the portal; `jar` keeps cookies between calls like a browser.
    pub fn curl(&self, jar: Option<&str>, args: &[&str]) -> Reply {
        let mut cmd = Command::new("curl");
        cmd.args(["-sk", "-i", "--max-time", "20"]);
        if let Some(jar) = jar {
            let jar = self.jar(jar);
            cmd.arg("-b").arg(&jar).arg("-c").arg(&jar);
        }
        let output = cmd
            .args(args)
            .output()
            .expect("curl (apt-get install curl)");
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let mut lines = head.lines();
        let status = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let headers = lines
            .filter_map(|l| l.split_once(": "))
            .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
            .collect();
        Reply {
            status,
            headers,
            body: body.to_owned(),
        }
    }

    pub fn get(&self, jar: Option<&str>, path: &str) -> Reply {
        self.curl(jar, &[&format!("{}{path}", self.origin())])
    }

    /// A form post from the portal's own page (Origin set, as a browser does).
    pub fn post(&self, jar: Option<&str>, path: &str, fields: &[(&str, &str)]) -> Reply {
        self.post_with(jar, path, fields, &[])
    }

    /// [`Portal::post`] with more curl arguments, such as `--interface 127.0.0.2` to come
    /// from another address, or extra headers.
    pub fn post_with(
        &self,
        jar: Option<&str>,
        path: &str,
        fields: &[(&str, &str)],
        extra: &[&str],
    ) -> Reply {
        let origin = format!("Origin: {}", self.origin());
        let mut args: Vec<String> = extra.iter().map(|a| (*a).to_owned()).collect();
        args.extend(["-H".into(), origin, format!("{}{path}", self.origin())]);
        for (k, v) in fields {
            args.push("--data-urlencode".into());
            args.push(format!("{k}={v}"));
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.curl(jar, &args)
    }

    pub fn setup_admin(&self) {
        let reply = self.post(
            None,
            "/setup",
            &[
                ("token", &self.token),
                ("organisation", "Moulding Plant Nord"),
                ("name", "Ada Admin"),
                ("email", EMAIL),
                ("password", PASSWORD),
            ],
        );
        assert_eq!(reply.status, 303, "{}", reply.body);
    }

    pub fn login(&self, jar: &str, email: &str, password: &str) -> Reply {
        self.post(
            Some(jar),
            "/login",
            &[("email", email), ("password", password)],
        )
    }

    /// The CSRF token in a page's forms.
    pub fn csrf_from(&self, page: &str) -> String {
        csrf_in(page)
    }

    /// The CSRF token from a signed-in page.
    pub fn csrf(&self, jar: &str) -> String {
        let page = self.get(Some(jar), "/sessions");
        let at = page
            .body
            .find("name=\"csrf\" value=\"")
            .expect("csrf field")
            + 19;
        page.body[at..at + 64].to_owned()
    }

    pub fn actions(&self) -> Vec<String> {
        audit_actions(&self.app)
    }

    /// Every audit record, oldest first.
    pub fn records(&self) -> Vec<appliance::audit::chain::AuditRecord> {
        let mut records = Vec::new();
        let mut conn = self.app.store.conn().unwrap();
        appliance::audit::export::for_each_record(&mut conn, &Default::default(), |r| {
            records.push(r);
            Ok(true)
        })
        .unwrap();
        records
    }

    pub fn s_client(&self, args: &[&str]) -> String {
        let output = Command::new("openssl")
            .args(["s_client", "-connect", &format!("127.0.0.1:{}", self.https)])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("openssl");
        String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr)
    }
}

impl Drop for Portal {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Portal {
    /// A token for the first administrator with `scopes`, issued `age_days` ago for `days`.
    pub fn token(
        &self,
        scopes: &[&str],
        days: u32,
        age_days: i64,
    ) -> (String, appliance::ids::TokenId) {
        first_admin_token(&self.app, scopes, days, age_days)
    }

    pub fn api(&self, token: Option<&str>, path: &str) -> (u16, serde_json::Value) {
        let auth = token.map(|t| format!("Authorization: Bearer {t}"));
        let mut args = vec![format!("{}{path}", self.origin())];
        if let Some(auth) = &auth {
            args.insert(0, auth.clone());
            args.insert(0, "-H".into());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let reply = self.curl(None, &args);
        (
            reply.status,
            serde_json::from_str(&reply.body).unwrap_or(serde_json::Value::Null),
        )
    }
}

/// Chromium's WebDriver, for the browser tests: it binds a port of its own choosing
/// (`--port=0`) and says which once it listens, so no port is picked by binding and
/// releasing, and readiness is read, not guessed by connecting. Killed on drop, so a failed
/// assertion does not leave it running.
pub struct ChromeDriver {
    child: Child,
    pub port: u16,
}

impl ChromeDriver {
    pub fn start() -> ChromeDriver {
        use std::io::BufRead;
        let mut child = Command::new("/usr/bin/chromedriver")
            .arg("--port=0")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        let (tell, told) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            // "ChromeDriver was started successfully on port 41307."; the rest is drained so
            // that chromedriver never blocks on a full pipe.
            const STARTED: &str = "started successfully on port ";
            for line in stdout.lines().map_while(Result::ok) {
                if let Some(port) = line
                    .split_once(STARTED)
                    .and_then(|(_, rest)| rest.trim_end_matches('.').parse::<u16>().ok())
                {
                    let _ = tell.send(port);
                }
            }
        });
        let mut driver = ChromeDriver { child, port: 0 };
        driver.port = told
            .recv_timeout(Duration::from_secs(60))
            .expect("chromedriver did not say it was listening");
        driver
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Portal {
    /// Stops the portal as the service manager does (SIGTERM, a graceful shutdown) and
    /// waits until it has exited; true when it exited cleanly.
    pub fn terminate(&mut self) -> bool {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(sent.success(), "SIGTERM was not delivered");
        self.child.wait().expect("wait for plantgate-web").success()
    }
}

/// How many of `actions` (as [`Portal::actions`] lists them) are `action`.
pub fn count(actions: &[String], action: &str) -> usize {
    actions.iter().filter(|a| *a == action).count()
}

/// The CSRF token in a page's forms.
pub fn csrf_in(page: &str) -> String {
    let at = page.find("name=\"csrf\" value=\"").expect("csrf field") + 19;
    page[at..at + 64].to_owned()
}

/// The audit log's actions, oldest first.
pub fn audit_actions(app: &Appliance) -> Vec<String> {
    let mut actions = Vec::new();
    let mut conn = app.store.conn().expect("a store connection");
    appliance::audit::export::for_each_record(&mut conn, &Default::default(), |r| {
        actions.push(r.action);
        Ok(true)
    })
    .expect("audit records");
    actions
}

/// A token for the first administrator (`EMAIL`) with `scopes`, issued `age_days` ago for
/// `days`: its secret and id.
pub fn first_admin_token(
    app: &Appliance,
    scopes: &[&str],
    days: u32,
    age_days: i64,
) -> (String, appliance::ids::TokenId) {
    let user = appliance::models::User::find_by_email(
        &mut app.store.conn().expect("a store connection"),
        EMAIL,
    )
    .expect("the users")
    .expect("the first administrator");
    let scopes: Vec<String> = scopes.iter().map(|s| (*s).to_owned()).collect();
    let issued = appliance::time::now_us() - age_days * 86_400_000_000;
    let (secret, token) = appliance::tokens::create(
        &app.audit,
        &Actor::System("test".into()),
        &user,
        "siem",
        &scopes,
        days,
        issued,
    )
    .expect("a token");
    (secret.reveal().to_owned(), token.id)
}
