//! Subscribe, unsubscribe and ack: the requests that act on a caller's [`Feed`].
//!
//! A subscribe is checked first ([`check`]: credential, channel name, policy, rate) and only
//! the [`Allowed`] result can be carried out, so a transport that subscribes to several
//! channels at once checks them all before the engine is asked anything.

use std::time::Instant;

use redistribute_protocol::{ErrorCode, PresenceMember, StreamId};

use super::{authorize, ensure_authenticated, validate_channel, Ack, Subscribe, Unsubscribe};
use crate::auth::{Action, AuthContext, Denied};
use crate::core_state::Core;
use crate::error::RequestError;
use crate::feed::{Feed, Start};
use crate::limits::TokenBucket;

/// A subscribe that passed [`check`]; only it can be carried out. It carries whether the
/// caller may create the channel ([`Action::Create`]), which subscribing to a channel that
/// does not exist may need (a consumer group, or resuming beyond the tip).
#[derive(Debug)]
pub(crate) struct Allowed<'a> {
    request: &'a Subscribe,
    create: Result<(), Denied>,
    /// The member the subscriber becomes on a presence channel (its client id is the feed's).
    member: Option<PresenceMember>,
}

/// Where a subscription starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Subscribed {
    /// A plain subscription, from this start.
    Plain(Start),
    /// A consumer-group subscription; the group's last delivered ID.
    Group(StreamId),
}

/// Checks a subscribe: a credential, a valid channel, the policy's consent and, when the
/// transport keeps one, a token of the subscribe `bucket` (`rate_limited` without).
pub(crate) fn check<'a>(
    core: &Core,
    caller: &AuthContext,
    bucket: Option<&mut TokenBucket>,
    request: &'a Subscribe,
) -> Result<Allowed<'a>, RequestError> {
    validate_channel(&request.channel)?;
    authorize(
        core,
        caller,
        Action::Subscribe {
            channel: &request.channel,
        },
    )?;
    if let Some(bucket) = bucket {
        if !bucket.try_take(Instant::now()) {
            return Err(RequestError::new(
                ErrorCode::RateLimited,
                "too many subscribes; slow down",
            ));
        }
    }
    let create = core.may_create(caller, &request.channel);
    let member = super::presence::becomes_member(core, caller, request)
        .then(|| super::presence::member_of(core, caller, 0));
    Ok(Allowed {
        request,
        create,
        member,
    })
}

impl Allowed<'_> {
    /// The channel.
    pub(crate) fn channel(&self) -> &str {
        &self.request.channel
    }

    /// Subscribes `feed` (the feed bounds its engine calls by the request timeout) and, on a
    /// presence channel, makes it a member; a refused membership ends the subscription.
    pub(crate) async fn run(self, feed: &mut Feed) -> Result<Subscribed, RequestError> {
        let Allowed {
            request,
            create,
            member,
        } = self;
        let subscribed = match &request.group {
            Some((group, consumer)) => feed
                .subscribe_group(&request.channel, group, consumer, request.offset, create)
                .await
                .map(Subscribed::Group)?,
            None => feed
                .subscribe_rewind(
                    &request.channel,
                    request.offset,
                    request.rewind,
                    create.is_ok(),
                )
                .await
                .map(Subscribed::Plain)?,
        };
        if let Some(mut member) = member {
            member.client = feed.client_id();
            let joined = feed
                .join_presence(&request.channel, member, request.join_leave)
                .await;
            if let Err(err) = joined {
                feed.unsubscribe(&request.channel);
                return Err(err);
            }
        }
        Ok(subscribed)
    }
}

/// Checks and carries out one subscribe.
pub(crate) async fn subscribe(
    core: &Core,
    caller: &AuthContext,
    bucket: Option<&mut TokenBucket>,
    feed: &mut Feed,
    request: &Subscribe,
) -> Result<Subscribed, RequestError> {
    check(core, caller, bucket, request)?.run(feed).await
}

/// Ends one of the caller's own subscriptions (`not_found` when there is none).
pub(crate) fn unsubscribe(
    core: &Core,
    caller: &AuthContext,
    feed: &mut Feed,
    request: &Unsubscribe,
) -> Result<(), RequestError> {
    ensure_authenticated(core, caller)?;
    if feed.unsubscribe(&request.channel) {
        Ok(())
    } else {
        Err(RequestError::new(
            ErrorCode::NotFound,
            format!("not subscribed to {:?}", request.channel),
        ))
    }
}

/// Acknowledges consumer-group entries; the number that were pending.
pub(crate) async fn ack(
    core: &Core,
    caller: &AuthContext,
    feed: &mut Feed,
    request: &Ack,
) -> Result<u64, RequestError> {
    validate_channel(&request.channel)?;
    authorize(
        core,
        caller,
        Action::Ack {
            channel: &request.channel,
            group: &request.group,
        },
    )?;
    feed.ack(&request.channel, &request.group, &request.offsets)
        .await
}
