//! Token sources for short-lived JWTs: an application callback ([`TokenProvider`]) called
//! before every connection and a little before the current token expires. The driver hands
//! each token and its lifetime (read from the JWT's `exp`, unverified) to the session, which
//! switches the live connection to it without a reconnect
//! ([`Session::refresh_token`](redistribute_protocol::session::Session::refresh_token)).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redistribute_protocol::session::token_lifetime;

/// What a token provider may fail with.
pub type TokenError = Box<dyn std::error::Error + Send + Sync>;

/// The future a token provider returns.
pub type TokenFuture = Pin<Box<dyn Future<Output = Result<String, TokenError>> + Send>>;

/// An async callback giving a fresh token; see
/// [`ClientBuilder::token_provider`](crate::ClientBuilder::token_provider).
#[derive(Clone)]
pub(crate) struct TokenProvider(Arc<dyn Fn() -> TokenFuture + Send + Sync>);

impl fmt::Debug for TokenProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenProvider")
    }
}

/// A token and how long it stays valid (`None`: not a JWT with `exp`; never refreshed early).
pub(crate) type Fetched = (String, Option<Duration>);

impl TokenProvider {
    /// Wraps an application callback.
    pub(crate) fn new<F, Fut, E>(provider: F) -> TokenProvider
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<String, E>> + Send + 'static,
        E: Into<TokenError>,
    {
        TokenProvider(Arc::new(move || {
            let fut = provider();
            Box::pin(async move { fut.await.map_err(Into::into) })
        }))
    }

    /// Calls the provider, bounded by `timeout`; the error is a description for events and
    /// logs (never the token).
    pub(crate) fn fetch(
        &self,
        timeout: Duration,
    ) -> impl Future<Output = Result<Fetched, String>> + Send + 'static {
        let fut = (self.0)();
        async move {
            let token = match tokio::time::timeout(timeout, fut).await {
                Ok(Ok(token)) => token,
                Ok(Err(e)) => return Err(format!("token provider failed: {e}")),
                Err(_) => return Err(format!("token provider took longer than {timeout:?}")),
            };
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            let lifetime = token_lifetime(&token, now);
            Ok((token, lifetime))
        }
    }
}
