//! `redistribute sub`: one JSON line per message, `{"channel","offset","fields"}`.
//!
//! Output is buffered and flushed whenever no further message is ready at once, so a burst
//! costs one write while a single message still shows up immediately. A closed stdout (e.g.
//! `| head`) ends the command quietly with success.

use std::io::{self, Write};
use std::sync::Arc;

use anyhow::{anyhow, bail, Result};
use futures_util::stream::{self, StreamExt};
use futures_util::FutureExt;
use redistribute_client::{ConnectionState, Fields, StreamId};
use serde::Serialize;

use super::{report_events, SubArgs};

/// One output line.
#[derive(Serialize)]
struct Line<'a> {
    channel: &'a str,
    offset: StreamId,
    fields: &'a Fields,
}

/// Runs `redistribute sub` until `--count` messages were printed, stdout closes, the client
/// gives up, or ctrl-c.
pub async fn run_sub(args: SubArgs) -> Result<()> {
    let client = args.client.client()?;
    let events = tokio::spawn(report_events(client.events()));
    let result = tokio::select! {
        result = print_messages(&client, &args) => result,
        _ = tokio::signal::ctrl_c() => Ok(()),
    };
    client.close().await;
    events.abort();
    result
}

async fn print_messages(client: &redistribute_client::Client, args: &SubArgs) -> Result<()> {
    if args.count == Some(0) {
        return Ok(());
    }
    if let (Some(group), Some(consumer)) = (&args.group, &args.consumer) {
        return print_group(client, args, group, consumer).await;
    }
    let mut subscriptions = Vec::with_capacity(args.channels.len());
    for channel in &args.channels {
        let options = match args.rewind {
            Some(rewind) => redistribute_client::SubscribeOptions::new().rewind(rewind),
            None => redistribute_client::SubscribeOptions::new().offset(args.from),
        };
        let subscription = client
            .subscribe_with(channel.clone(), options)
            .await
            .map_err(|e| anyhow!("cannot subscribe to {channel:?}: {e}"))?;
        let name: Arc<str> = Arc::from(channel.as_str());
        subscriptions.push(subscription.map(move |m| (name.clone(), m)));
    }
    let mut messages = stream::select_all(subscriptions);
    let mut out = io::BufWriter::with_capacity(64 * 1024, io::stdout());
    let mut printed = 0u64;
    loop {
        let next = match messages.next().now_or_never() {
            Some(next) => next,
            None => {
                if !write_ok(out.flush())? {
                    return Ok(());
                }
                messages.next().await
            }
        };
        let Some((channel, message)) = next else {
            break;
        };
        if !write_ok(write_line(&mut out, &channel, &message))? {
            return Ok(());
        }
        printed += 1;
        if args.count == Some(printed) {
            write_ok(out.flush())?;
            return Ok(());
        }
    }
    write_ok(out.flush())?;
    // Every subscription ended without being asked to: say why.
    match client.state() {
        ConnectionState::Closed { error: Some(error) } => bail!("{error}"),
        _ => bail!("the subscriptions ended (see the messages above)"),
    }
}

/// `sub --group G --consumer C [--ack]`: one line per message the group assigns to this
/// consumer, flushed before it is acknowledged (so an acknowledged message was printed).
async fn print_group(
    client: &redistribute_client::Client,
    args: &SubArgs,
    group: &str,
    consumer: &str,
) -> Result<()> {
    let [channel] = args.channels.as_slice() else {
        bail!("--group takes exactly one channel");
    };
    let mut jobs = client
        .subscribe_group(channel.clone(), group, consumer, args.from)
        .await
        .map_err(|e| anyhow!("cannot join group {group:?} of {channel:?}: {e}"))?;
    let mut out = io::BufWriter::new(io::stdout());
    let mut printed = 0u64;
    while let Some(job) = jobs.recv().await {
        let line = Line {
            channel,
            offset: job.offset,
            fields: &job.fields,
        };
        let written = serde_json::to_writer(&mut out, &line)
            .map_err(io::Error::from)
            .and_then(|()| out.write_all(b"\n"))
            .and_then(|()| out.flush());
        if !write_ok(written)? {
            return Ok(());
        }
        if args.ack {
            job.ack()
                .await
                .map_err(|e| anyhow!("cannot acknowledge {}: {e}", job.offset))?;
        }
        printed += 1;
        if args.count == Some(printed) {
            return Ok(());
        }
    }
    match client.state() {
        ConnectionState::Closed { error: Some(error) } => bail!("{error}"),
        _ => bail!("the group subscription ended (see the messages above)"),
    }
}

/// Writes one output line for `message` of `channel`.
pub(super) fn write_line(
    out: &mut impl Write,
    channel: &str,
    message: &redistribute_client::Message,
) -> io::Result<()> {
    let line = Line {
        channel,
        offset: message.offset,
        fields: &message.fields,
    };
    serde_json::to_writer(&mut *out, &line).map_err(io::Error::from)?;
    out.write_all(b"\n")
}

/// `Ok(false)` when stdout was closed by the reader (stop quietly), the error otherwise.
pub(super) fn write_ok(result: io::Result<()>) -> Result<bool> {
    match result {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(anyhow!("cannot write to stdout: {e}")),
    }
}
