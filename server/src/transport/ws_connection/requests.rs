//! A WebSocket connection's requests: `connect` (authentication and token refresh) and the
//! request frames (`subscribe`, `unsubscribe`, `publish`, `ack`, `history`), each handed to the request
//! layer ([`crate::request`]) and answered with its reply frame.

use std::time::Instant;

use futures_util::stream::FuturesOrdered;
use redistribute_protocol::{ClientFrame, ServerFrame, PROTOCOL_VERSION};
use tracing::{Instrument, Span};

use super::{close_code, Connection, End, Publishing};
use crate::auth::{lifetime, Credential};
use crate::error::RequestError;
use crate::limits::TokenBucket;
use crate::request::{history, presence, publish, subscribe, Request};

impl Connection {
    /// `connect`: (re)authenticates with the token; a bad token closes the connection. On an
    /// authenticated connection this is a refresh: the new token must allow every current
    /// subscription ([`lifetime::check_refresh`]), and replaces the claims and the expiry.
    pub(super) async fn on_connect(&mut self, id: u64, token: Option<&str>) -> Result<(), End> {
        let refreshed = self
            .app
            .core
            .authenticate(token)
            .and_then(|claims| match claims {
                Some(claims) if self.authenticated => lifetime::check_refresh(
                    &*self.app.core.authorizer,
                    &self.ctx,
                    claims,
                    self.feed.channels(),
                )
                .map(|ctx| ctx.claims),
                claims => Ok(claims),
            });
        match refreshed {
            Ok(claims) => {
                if claims.is_some() {
                    self.expiry = lifetime::deadline(claims.as_deref());
                    self.ctx.claims = claims;
                    self.ctx.credential = Credential::Token;
                }
                self.authenticated = true;
                self.bad_frames = 0;
                let reply = ServerFrame::Connected {
                    id,
                    client: self.app.core.client_id(self.feed.id()),
                    version: PROTOCOL_VERSION,
                };
                self.send(&reply).await
            }
            Err(err) => {
                self.send(&err.into_frame(id)).await?;
                Err(End::Close(close_code::POLICY, "unauthorized"))
            }
        }
    }

    /// Hands a request to the request layer and answers it (a publish is answered when its
    /// engine call completes, in order with the connection's other publishes).
    pub(super) async fn on_request(&mut self, frame: ClientFrame) -> Result<(), RequestError> {
        if let ClientFrame::Ping { id } = frame {
            return self.reply(&ServerFrame::Pong { id }).await;
        }
        // `connect` is answered by `on_connect` before requests are dispatched here.
        let Some((id, request)) = Request::from_frame(frame) else {
            return Ok(());
        };
        let app = &self.app;
        let reply = match request {
            Request::Subscribe(request) => {
                let bucket = Some(&mut self.subscribe_bucket);
                let subscribed =
                    subscribe::subscribe(&app.core, &self.ctx, bucket, &mut self.feed, &request)
                        .await?;
                let channel = request.channel;
                match subscribed {
                    // For a group, `offset` is the group's last delivered ID.
                    subscribe::Subscribed::Group(last) => ServerFrame::Subscribed {
                        id,
                        channel,
                        offset: last,
                        truncated: false,
                    },
                    subscribe::Subscribed::Plain(start) => {
                        let reply = ServerFrame::Subscribed {
                            id,
                            channel: channel.clone(),
                            offset: start.after,
                            truncated: start.truncated,
                        };
                        self.reply(&reply).await?;
                        let Some((from, to)) = start.gap else {
                            return Ok(());
                        };
                        ServerFrame::Gap { channel, from, to }
                    }
                }
            }
            Request::Unsubscribe(request) => {
                subscribe::unsubscribe(&app.core, &self.ctx, &mut self.feed, &request)?;
                let channel = request.channel;
                ServerFrame::Unsubscribed { id, channel }
            }
            Request::Publish(request) => {
                let limits = &app.core.config.limits;
                let publishing = self.publishing.get_or_insert_with(|| {
                    Box::new(Publishing {
                        bucket: TokenBucket::new(
                            limits.publish_rate,
                            limits.publish_burst,
                            Instant::now(),
                        ),
                        replies: FuturesOrdered::new(),
                    })
                });
                let allowed =
                    publish::check(&app.core, &self.ctx, Some(&mut publishing.bucket), request)?;
                let core = app.core.clone();
                publishing.replies.push_back(Box::pin(
                    async move {
                        match allowed.run(core).await {
                            (channel, Ok(offset)) => ServerFrame::Published {
                                id,
                                channel,
                                offset,
                            },
                            (_, Err(err)) => err.into_frame(id),
                        }
                    }
                    .instrument(Span::current()),
                ));
                return Ok(());
            }
            Request::Ack(request) => {
                let count = subscribe::ack(&app.core, &self.ctx, &mut self.feed, &request).await?;
                ServerFrame::Acked { id, count }
            }
            Request::History(request) => {
                let page = history::history(&app.core, &self.ctx, &request).await?;
                let text = history::page_frame(id, &page);
                return self.send_text(text).await.map_err(|_| RequestError::Socket);
            }
            Request::Presence(query) => {
                let answer = presence::presence(&app.core, &self.ctx, &query).await?;
                answer.into_frame(id, query.channel)
            }
        };
        self.reply(&reply).await
    }

    async fn reply(&mut self, frame: &ServerFrame) -> Result<(), RequestError> {
        self.send(frame).await.map_err(|_| RequestError::Socket)
    }
}
