//! The HTTPS listener: every accepted connection takes a slot of the same [`Gate`] as the
//! MQTT listener before its TLS handshake starts, and gives it back once a request on it
//! authenticated ([`crate::auth::authenticated`]).
//!
//! So the caps on connections that have not authenticated (`ingest.max_unauthenticated`
//! in all, `ingest.max_unauthenticated_per_address` per source address) count both
//! protocols together: they bound the file descriptors that clients which never sign in
//! can hold in this process, whichever port they use. At a cap the gate takes back an
//! older slot (see [`crate::gate`]), and that connection's reads and writes fail at once,
//! which closes it: a new connection is never kept waiting behind idle ones. An
//! authenticated device's connection holds no slot and is never evicted.
//!
//! actix-web's `HttpServer` offers no hook before the TLS handshake, so the listener is
//! put together here from its parts: actix-server accepts, [`GatedStream`] wraps the TCP
//! stream with its slot, actix-tls does the handshake, actix-http serves the application.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_http::{HttpService, Protocol};
use actix_service::{ServiceFactoryExt, fn_service, map_config};
use actix_tls::accept::openssl::{Acceptor, TlsStream};
use actix_web::App;
use actix_web::body::MessageBody;
use actix_web::dev::{AppConfig, ServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::rt::net::{ActixStream, Ready, TcpStream};
use openssl::ssl::SslAcceptor;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::gate::{Gate, GateSlot};

/// A TCP stream that fails once its connection's slot was taken back.
#[derive(Debug)]
pub struct GatedStream {
    tcp: TcpStream,
    slot: GateSlot,
}

fn evicted_error() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "closed to make room for a newer connection: it had not authenticated",
    )
}

impl AsyncRead for GatedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.slot.evicted(cx) {
            return Poll::Ready(Err(evicted_error()));
        }
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for GatedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.slot.evicted(cx) {
            return Poll::Ready(Err(evicted_error()));
        }
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

impl ActixStream for GatedStream {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<Ready>> {
        if self.slot.evicted(cx) {
            return Poll::Ready(Err(evicted_error()));
        }
        ActixStream::poll_read_ready(&self.tcp, cx)
    }

    fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<Ready>> {
        if self.slot.evicted(cx) {
            return Poll::Ready(Err(evicted_error()));
        }
        ActixStream::poll_write_ready(&self.tcp, cx)
    }
}

/// For the connection's data: the verified client certificate, if one was sent
/// ([`crate::auth::PeerCertificate`]), and the connection's [`GateSlot`].
fn on_connect(tls: &TlsStream<GatedStream>, data: &mut actix_web::dev::Extensions) {
    let stream = tls.get_ref();
    data.insert(stream.slot.clone());
    if let Some(cert) = tls.ssl().peer_certificate()
        && let Ok(der) = cert.to_der()
    {
        data.insert(crate::auth::PeerCertificate(der));
    }
}

/// How the HTTPS listener runs.
#[derive(Clone, Debug)]
pub struct Listener {
    pub workers: usize,
    /// Connections of all kinds, authenticated or not, per worker.
    pub max_connections_per_worker: usize,
    /// Each of the TLS handshake and the first request's head must arrive within this.
    pub half_deadline: Duration,
}

/// Builds the HTTPS server on `listener` (not started: `run` it), with the application
/// `app` makes for each worker.
pub fn server<F, T, B>(
    listener: std::net::TcpListener,
    settings: &Listener,
    tls: SslAcceptor,
    gate: Arc<Gate>,
    app: F,
) -> io::Result<actix_web::dev::Server>
where
    F: Fn() -> App<T> + Send + Clone + 'static,
    T: ServiceFactory<
            ServiceRequest,
            Config = (),
            Response = ServiceResponse<B>,
            Error = actix_web::Error,
            InitError = (),
        > + 'static,
    B: MessageBody + 'static,
{
    let local = listener.local_addr()?;
    let half_deadline = settings.half_deadline;
    let server = actix_web::dev::Server::build()
        .workers(settings.workers)
        .max_concurrent_connections(settings.max_connections_per_worker)
        .listen("ingest-https", listener, move || {
            let gate = gate.clone();
            let mut tls = Acceptor::new(tls.clone());
            tls.set_handshake_timeout(half_deadline);
            let application = map_config(
                actix_service::IntoServiceFactory::into_factory(app())
                    .map_err(|err: actix_web::Error| err.error_response()),
                |()| AppConfig::default(),
            );
            let http = HttpService::build()
                .client_request_timeout(half_deadline)
                .local_addr(local)
                .on_connect_ext(on_connect)
                .finish(application);
            fn_service(move |tcp: TcpStream| {
                let slot = tcp
                    .peer_addr()
                    .map(|peer| GateSlot::new(gate.admit(peer.ip())));
                async move {
                    // Reading the peer's address fails only for a connection already gone.
                    let slot = slot?;
                    if let Err(err) = tcp.set_nodelay(true) {
                        tracing::warn!(error = %err, "cannot set TCP_NODELAY");
                    }
                    Ok::<_, Dropped>(GatedStream { tcp, slot })
                }
            })
            .and_then(tls.map_err(|_| Dropped::Handshake))
            .map(|tls: TlsStream<GatedStream>| {
                let peer = tls.get_ref().tcp.peer_addr().ok();
                (tls, Protocol::Http1, peer)
            })
            .and_then(http.map_err(|_| Dropped::Http))
        })?;
    Ok(server.run())
}

/// Why a connection ended before or while it was served; actix-server only drops it.
#[derive(Debug)]
enum Dropped {
    Gone,
    Handshake,
    Http,
}

impl From<io::Error> for Dropped {
    fn from(_: io::Error) -> Dropped {
        Dropped::Gone
    }
}

/// Binds the HTTPS port as actix-web would (address reuse, a backlog of 1,024).
pub fn bind(address: SocketAddr) -> io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(
        Domain::for_address(address),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.bind(&address.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}
