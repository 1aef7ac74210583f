//! How an HTTPS request proves who sent it, and what a connection may do before it has.
//!
//! A connection that has not authenticated holds a slot of the gate (`crate::https`) and is
//! held to deadlines: the TLS handshake timeout and the first request's head take half of
//! `ingest.handshake_timeout_seconds` each; then [`guard`] bounds the body read before the
//! request authenticated by the whole of it, and closes the connection after every response
//! to a request that did not authenticate ([`authenticated`]), so keep-alive (whose later
//! request heads actix does not time) is only for devices. A request authenticates with a
//! bearer secret ([`bearer`]) or with the client certificate its connection presented
//! ([`PeerCertificate`]).

use std::cell::Cell;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{ConnectionType, header};
use actix_web::middleware::Next;
use actix_web::{HttpMessage, HttpRequest, web};

use crate::error::IngestError;
use crate::gate::GateSlot;
use crate::shared::Shared;

/// The client certificate (DER) the TLS handshake verified against the device CA, put in
/// the connection's data by the listener (`crate::https`).
#[derive(Debug, Clone)]
pub struct PeerCertificate(pub Vec<u8>);

/// Whether the request authenticated; shared by [`guard`] and the request's body.
#[derive(Clone, Default)]
struct Authenticated(Rc<Cell<bool>>);

/// Marks the request as sent by an authenticated device: its body is no longer held to the
/// deadline, its connection may stay open for the next request, and the connection gives
/// its slot of the gate back (`crate::https`).
pub(crate) fn authenticated(req: &HttpRequest) {
    if let Some(state) = req.extensions().get::<Authenticated>() {
        state.0.set(true);
    }
    if let Some(slot) = req.conn_data::<GateSlot>() {
        slot.release();
    }
}

/// Middleware for every route: see the module's comment.
pub async fn guard(
    mut req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let deadline = req
        .app_data::<web::Data<Shared>>()
        .map(|shared| shared.app.config.ingest.handshake_timeout_seconds)
        .unwrap_or(10);
    let state = Authenticated::default();
    req.extensions_mut().insert(state.clone());
    let body = req.take_payload();
    let body: Pin<Box<dyn futures_util::Stream<Item = _>>> = Box::pin(Deadlined {
        body,
        sleep: Box::pin(tokio::time::sleep(Duration::from_secs(deadline))),
        lifted: state.0.clone(),
        expired: false,
    });
    req.set_payload(body.into());
    let mut response = next.call(req).await?;
    if !state.0.get() {
        response
            .response_mut()
            .head_mut()
            .set_connection_type(ConnectionType::Close);
    }
    Ok(response)
}

/// A request body that fails once the deadline passed, unless the request authenticated.
struct Deadlined {
    body: actix_web::dev::Payload,
    sleep: Pin<Box<tokio::time::Sleep>>,
    lifted: Rc<Cell<bool>>,
    expired: bool,
}

impl futures_util::Stream for Deadlined {
    type Item = Result<bytes::Bytes, actix_web::error::PayloadError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.expired {
            return Poll::Ready(None);
        }
        if !self.lifted.get() && self.sleep.as_mut().poll(cx).is_ready() {
            self.expired = true;
            return Poll::Ready(Some(Err(actix_web::error::PayloadError::Io(
                std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the body did not arrive before the deadline",
                ),
            ))));
        }
        Pin::new(&mut self.body).poll_next(cx)
    }
}

pub(crate) fn bearer(req: &HttpRequest) -> Result<String, IngestError> {
    req.headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(|secret| secret.trim().to_owned())
        .filter(|secret| !secret.is_empty())
        .ok_or(IngestError::MissingCredential)
}
