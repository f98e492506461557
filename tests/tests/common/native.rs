//! Helpers for the tests that drive the native client: bounded waits and exact delivery checks.

use std::future::Future;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use futures_util::StreamExt;
use redistribute_client::{Message, StreamId, Subscription};

use super::STEP;

/// Awaits `fut` for at most [`STEP`].
pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> Result<T> {
    tokio::time::timeout(STEP, fut)
        .await
        .with_context(|| format!("timed out after {STEP:?}: {what}"))
}

/// `got` is exactly the messages at `offsets`, in order, each once.
pub fn check_offsets(got: &[Message], offsets: &[StreamId]) -> Result<()> {
    let got: Vec<StreamId> = got.iter().map(|m| m.offset).collect();
    if got != offsets {
        let first = got.iter().zip(offsets).position(|(a, b)| a != b);
        bail!(
            "{} messages for {} owed; first difference at {first:?}",
            got.len(),
            offsets.len()
        );
    }
    Ok(())
}

/// Nothing more arrives for a moment (no duplicate after the last message).
pub async fn expect_silence(sub: &mut Subscription) -> Result<()> {
    if let Ok(extra) = tokio::time::timeout(Duration::from_millis(300), sub.next()).await {
        bail!("unexpected extra message: {extra:?}");
    }
    Ok(())
}
