//! Publish: from a WebSocket frame or `POST /api/publish`, the same checks and the same
//! engine call.
//!
//! [`check`] (credential, channel name, policy, rate, message limits) returns an [`Allowed`]
//! publish that owns its request, whose [`Allowed::run`] future a WebSocket can keep in its
//! pipeline while it reads the next frame.

use std::sync::Arc;
use std::time::Instant;

use redistribute_protocol::{ErrorCode, StreamId};

use super::{authorize, engine_deadline, validate_channel, Publish};
use crate::auth::{Action, AuthContext};
use crate::core_state::Core;
use crate::engine::{EngineError, PublishRequest};
use crate::error::RequestError;
use crate::limits::TokenBucket;

/// A publish that passed [`check`]; only it can be carried out.
#[derive(Debug)]
pub(crate) struct Allowed(Publish);

/// Checks a publish: a credential, a valid channel, the policy's consent, a token of the
/// publish `bucket` when the transport keeps one (`rate_limited` without), and the message
/// limits ([`crate::message::check_fields`]).
pub(crate) fn check(
    core: &Core,
    caller: &AuthContext,
    bucket: Option<&mut TokenBucket>,
    request: Publish,
) -> Result<Allowed, RequestError> {
    validate_channel(&request.channel)?;
    authorize(
        core,
        caller,
        Action::Publish {
            channel: &request.channel,
            fields: &request.fields,
        },
    )?;
    if let Some(bucket) = bucket {
        if !bucket.try_take(Instant::now()) {
            return Err(RequestError::new(
                ErrorCode::RateLimited,
                "too many publishes; slow down",
            ));
        }
    }
    crate::message::check_fields(&request.fields)?;
    Ok(Allowed(request))
}

impl Allowed {
    /// Publishes through the engine, bounded by the request timeout; returns the request's
    /// channel with the offset.
    pub(crate) async fn run(self, core: Arc<Core>) -> (String, Result<StreamId, RequestError>) {
        let Publish {
            channel,
            fields,
            maxlen,
            idempotency_key,
        } = self.0;
        let request = PublishRequest {
            channel: &channel,
            fields: &fields,
            maxlen,
            idempotency_key: idempotency_key.as_deref(),
        };
        // The Redis engine enforces `request_timeout` itself, and a command it times out is
        // never sent later (fred skips timed-out commands when it replays its buffer after a
        // reconnect). This outer bound only guards against an engine that hangs; it must not
        // fire first, or a publish reported `unavailable` could still be written once Redis is
        // back.
        let started = Instant::now();
        let result = match tokio::time::timeout(
            engine_deadline(&core),
            core.engine.publish(request),
        )
        .await
        {
            Ok(result) => result.map_err(RequestError::from),
            Err(_) => Err(EngineError::Unavailable("publish timed out".into()).into()),
        };
        crate::metrics::engine_op("publish", started);
        if result.is_ok() {
            crate::metrics::hot().published.increment(1);
        }
        (channel, result)
    }
}

/// Checks and carries out one publish.
pub(crate) async fn publish(
    core: &Arc<Core>,
    caller: &AuthContext,
    bucket: Option<&mut TokenBucket>,
    request: Publish,
) -> Result<StreamId, RequestError> {
    check(core, caller, bucket, request)?
        .run(core.clone())
        .await
        .1
}
