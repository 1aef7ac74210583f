//! Data connector delivery: sends the outbox (`connector_deliveries`) to each connector's
//! HTTPS endpoint, signed, in id order per connector, with exponential backoff.
//!
//! One thread with its own actix runtime, so the awc client never competes with the
//! listeners. Each round offers the head of every connector's queue; the connectors are
//! sent to concurrently, and a connector that failed waits out its backoff alone.

use std::collections::HashMap;
use std::time::Duration;

use appliance::connectors::{self, Connector, Delivery, SIGNATURE_HEADER, SealingKey};
use appliance::ids::ConnectorId;
use appliance::keyring::{self, Secret};
use appliance::time::now_us;
use appliance::{Actor, Appliance};
use openssl::ssl::{SslConnector, SslMethod, SslVersion};
use openssl::x509::X509;

const POLL_EVERY: Duration = Duration::from_millis(500);

/// Starts the delivery thread.
pub fn start(app: Appliance) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("ingest-deliver".into())
        .spawn(move || actix_web::rt::System::new().block_on(run(app)))?;
    Ok(())
}

async fn run(app: Appliance) {
    let actor = Actor::System("ingest".into());
    let key = match SealingKey::load(&keyring::path(&app.config, Secret::ConnectorSealing)) {
        Ok(key) => key,
        Err(err) => {
            tracing::error!(error = %err, "data connectors are off: no sealing key");
            return;
        }
    };
    let mut clients: HashMap<ConnectorId, awc::Client> = HashMap::new();
    loop {
        let due = app
            .store
            .conn()
            .and_then(|mut conn| connectors::due(&mut conn, now_us()));
        let due = match due {
            Ok(due) => due,
            Err(err) => {
                tracing::error!(error = %err, "cannot read the connector outbox");
                actix_web::rt::time::sleep(POLL_EVERY).await;
                continue;
            }
        };
        if due.is_empty() {
            actix_web::rt::time::sleep(POLL_EVERY).await;
            continue;
        }
        let mut attempts = Vec::with_capacity(due.len());
        for (connector, delivery) in due {
            let client = match clients.get(&connector.id) {
                Some(client) => Ok(client.clone()),
                None => client_for(&connector, &app).inspect(|client| {
                    clients.insert(connector.id, client.clone());
                }),
            };
            attempts.push(attempt(client, &key, connector, delivery));
        }
        let mut any_delivered = false;
        for (delivery, outcome) in futures_util::future::join_all(attempts).await {
            let recorded = match outcome {
                Ok(()) => {
                    any_delivered = true;
                    app.store.conn().and_then(|mut conn| {
                        connectors::mark_delivered(&mut conn, &delivery, now_us())
                    })
                }
                Err(reason) => {
                    tracing::warn!(delivery = delivery.id, %reason, "connector delivery failed");
                    let settings = &app.config.ingest.connectors;
                    connectors::mark_failed(
                        &app.audit,
                        &actor,
                        &delivery,
                        &reason,
                        settings.max_attempts,
                        settings.max_backoff_seconds,
                        now_us(),
                    )
                }
            };
            if let Err(err) = recorded {
                tracing::error!(error = %err, "cannot record a connector delivery");
            }
        }
        if !any_delivered {
            actix_web::rt::time::sleep(POLL_EVERY).await;
        }
    }
}

/// An HTTPS client trusting the system's CAs and the connector's own, TLS 1.2+, no redirects.
fn client_for(connector: &Connector, app: &Appliance) -> Result<awc::Client, String> {
    let mut tls = SslConnector::builder(SslMethod::tls_client()).map_err(|e| e.to_string())?;
    tls.set_min_proto_version(Some(SslVersion::TLS1_2))
        .map_err(|e| e.to_string())?;
    if let Some(pem) = &connector.ca_pem {
        for cert in X509::stack_from_pem(pem.as_bytes()).map_err(|e| e.to_string())? {
            tls.cert_store_mut()
                .add_cert(cert)
                .map_err(|e| e.to_string())?;
        }
    }
    let timeout = Duration::from_secs(app.config.ingest.connectors.timeout_seconds);
    let connector = awc::Connector::new().openssl(tls.build()).timeout(timeout);
    Ok(awc::Client::builder()
        .connector(connector)
        .timeout(timeout)
        .disable_redirects()
        .finish())
}

async fn attempt(
    client: Result<awc::Client, String>,
    key: &SealingKey,
    connector: Connector,
    delivery: Delivery,
) -> (Delivery, Result<(), String>) {
    let outcome = send(client, key, &connector, &delivery).await;
    (delivery, outcome)
}

async fn send(
    client: Result<awc::Client, String>,
    key: &SealingKey,
    connector: &Connector,
    delivery: &Delivery,
) -> Result<(), String> {
    let client = client?;
    let secret = key
        .open(&connector.secret_sealed)
        .map_err(|e| e.to_string())?;
    let signature =
        connectors::signature_header(&secret, now_us() / 1_000_000, delivery.body.as_bytes())
            .map_err(|e| e.to_string())?;
    let response = client
        .post(&connector.url)
        .insert_header(("Content-Type", "application/json"))
        .insert_header((SIGNATURE_HEADER, signature))
        .insert_header(("Plantgate-Delivery", delivery.id.to_string()))
        .insert_header(("Plantgate-Event", delivery.kind.clone()))
        .send_body(delivery.body.clone())
        .await
        .map_err(|e| e.to_string())?;
    if response.status().is_success() {
        Ok(())
    } else {
        Err(format!("the endpoint answered HTTP {}", response.status()))
    }
}
