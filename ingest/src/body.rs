//! Reading a request body within a limit.

use actix_web::web;
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt as _;

use crate::error::IngestError;

/// How much of a body over its limit is read and dropped before the refusal is sent.
const DRAIN_BYTES: usize = 16 << 20;

/// The body, when it is at most `limit` bytes. A longer body is refused
/// ([`IngestError::TooLarge`]) only after the rest of it, up to [`DRAIN_BYTES`] more, was
/// read and dropped: a server that answers while the client is still sending and then
/// closes with the body unread makes the kernel reset the connection, and the client may
/// see the reset instead of the 413 and its reason.
pub async fn read_within(mut payload: web::Payload, limit: usize) -> Result<Bytes, IngestError> {
    let mut body = BytesMut::new();
    let mut over_by: Option<usize> = None;
    while let Some(chunk) = payload.next().await {
        let chunk = chunk
            .map_err(|err| IngestError::BadJson(format!("the body could not be read: {err}")))?;
        match over_by.as_mut() {
            Some(dropped) => {
                *dropped += chunk.len();
                if *dropped > DRAIN_BYTES {
                    break;
                }
            }
            None if body.len() + chunk.len() > limit => {
                over_by = Some(chunk.len());
                body = BytesMut::new();
            }
            None => body.extend_from_slice(&chunk),
        }
    }
    match over_by {
        Some(_) => Err(IngestError::TooLarge { limit }),
        None => Ok(body.freeze()),
    }
}
