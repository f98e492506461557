//! The client commands of the `redistribute` binary, `sub`, `pub` and `history`, built on the native
//! client ([`redistribute_client`]). They are what a user types to see the system work, like
//! `redis-cli` or `nats sub`. The operator tools (`token`, `config`, `completions`) are in
//! [`tools`].
//!
//! Give-up rule: both commands fail (exit 1) once no target accepted a connection for
//! `--give-up-after` seconds (default 10), at start or after losing a connection; the
//! message names each target and its last error. Until then `sub` follows failovers and
//! restarts and resumes every channel where it stopped. Each failed attempt is reported on
//! stderr as it happens.

mod fields;
mod history;
mod sub;
mod tools;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use redistribute_client::{Client, DisconnectReason, Event, Offset, PublishOptions, StreamId};

pub use fields::parse_fields;
pub use history::run_history;
pub use sub::run_sub;
pub use tools::{mint_token, sample_config, TokenArgs};

/// Connection flags shared by `sub` and `pub`.
#[derive(Args, Debug, Clone)]
pub struct ClientArgs {
    /// Server WebSocket URL (ws:// or wss://); repeat for failover, tried in order.
    #[arg(
        long = "target",
        value_name = "URL",
        env = "REDISTRIBUTE_TARGET",
        value_delimiter = ',',
        default_value = "ws://127.0.0.1:8080/ws"
    )]
    pub targets: Vec<String>,
    /// JWT sent in the `connect` frame of every connection.
    #[arg(long, env = "REDISTRIBUTE_TOKEN")]
    pub token: Option<String>,
    /// PEM file of an extra trusted root certificate for wss:// targets.
    #[arg(long, value_name = "PEM", env = "REDISTRIBUTE_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// Seconds one connection attempt (TCP, TLS, WebSocket upgrade) may take.
    #[arg(long, value_name = "SECS", default_value = "5", value_parser = parse_secs)]
    pub connect_timeout: Duration,
    /// Seconds a request (subscribe, publish) may wait for its reply, reconnects included.
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = parse_secs)]
    pub timeout: Duration,
    /// Give up (exit 1) after this many seconds without a connection.
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = parse_secs)]
    pub give_up_after: Duration,
}

impl ClientArgs {
    /// Starts a client with these settings (it connects in the background).
    pub fn client(&self) -> Result<Client> {
        let mut builder = Client::builder()
            .targets(self.targets.iter().cloned())
            .connect_timeout(self.connect_timeout)
            .request_timeout(self.timeout)
            .give_up_after(self.give_up_after);
        if let Some(token) = &self.token {
            builder = builder.token(token.clone());
        }
        if let Some(path) = &self.ca_file {
            let pem = std::fs::read(path)
                .with_context(|| format!("cannot read --ca-file {}", path.display()))?;
            builder = builder.add_root_certificate(pem);
        }
        Ok(builder.build()?)
    }
}

/// `redistribute sub`: print messages as JSON lines.
#[derive(Args, Debug, Clone)]
pub struct SubArgs {
    /// Channels to subscribe to.
    #[arg(required = true, value_name = "CHANNEL")]
    pub channels: Vec<String>,
    /// Where to start, for every channel: `$` (only new messages), `0` (everything retained)
    /// or an offset `<ms>-<seq>` (the messages after it).
    #[arg(long, value_name = "OFFSET", default_value = "$", value_parser = parse_offset)]
    pub from: Offset,
    /// Start with each channel's last N messages (at most 1000), then live, instead of
    /// `--from` (not with `--group`).
    #[arg(long, value_name = "N", conflicts_with_all = ["from", "group"])]
    pub rewind: Option<u64>,
    /// Exit 0 after printing this many messages (over all channels).
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
    /// Join this consumer group (one channel only; needs `--consumer`): each message goes
    /// to one consumer of the group. `--from` is where the group starts if this creates it.
    #[arg(long, value_name = "GROUP", requires = "consumer")]
    pub group: Option<String>,
    /// Consumer name within `--group`; reconnecting under the same name first redelivers its
    /// unacknowledged messages.
    #[arg(long, value_name = "NAME", requires = "group")]
    pub consumer: Option<String>,
    /// With `--group`: acknowledge each message once it is printed (without it, messages stay
    /// pending and are delivered again later).
    #[arg(long, requires = "group")]
    pub ack: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `redistribute history`: print a channel's stored messages.
#[derive(Args, Debug, Clone)]
pub struct HistoryArgs {
    /// Channel to read.
    #[arg(value_name = "CHANNEL")]
    pub channel: String,
    /// The messages after this offset (exclusive): `0` (everything retained, the default),
    /// `$` (nothing before now) or `<ms>-<seq>`.
    #[arg(long, value_name = "OFFSET", value_parser = parse_offset)]
    pub from: Option<Offset>,
    /// Up to and including this offset `<ms>-<seq>` (default: the newest message).
    #[arg(long, value_name = "OFFSET", value_parser = parse_stream_id)]
    pub to: Option<StreamId>,
    /// Print at most this many messages (default: the whole range, read in pages of 1000).
    #[arg(long, value_name = "N")]
    pub limit: Option<u64>,
    /// Newest first, going back from `--to`.
    #[arg(long)]
    pub reverse: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `redistribute pub`: publish one message and print its offset.
#[derive(Args, Debug, Clone)]
pub struct PubArgs {
    /// Channel to publish to.
    #[arg(value_name = "CHANNEL")]
    pub channel: String,
    /// Fields: `key=value` (the JSON string "value") or `key:=<json>` (a JSON value).
    #[arg(required = true, value_name = "FIELD")]
    pub fields: Vec<String>,
    /// Trim the channel to about this many entries.
    #[arg(long, value_name = "N")]
    pub maxlen: Option<u64>,
    /// Idempotency key: publishing again with the same key returns the first offset.
    #[arg(long, value_name = "KEY")]
    pub idempotency_key: Option<String>,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Runs `redistribute pub`.
pub async fn run_pub(args: PubArgs) -> Result<()> {
    let fields = parse_fields(&args.fields).map_err(anyhow::Error::msg)?;
    let client = args.client.client()?;
    let events = tokio::spawn(report_events(client.events()));
    let options = PublishOptions {
        maxlen: args.maxlen,
        idempotency_key: args.idempotency_key.clone(),
    };
    let result = client.publish_with(&args.channel, fields, options).await;
    client.close().await;
    events.abort();
    let offset = result.with_context(|| format!("publish to {:?} failed", args.channel))?;
    println!("{offset}");
    Ok(())
}

/// Reports connection trouble on stderr while a command runs.
/// "connected" is only worth saying after a failure.
pub(crate) async fn report_events(mut events: redistribute_client::Events) {
    let mut troubled = false;
    while let Some(event) = events.recv().await {
        match event {
            Event::ConnectFailed { target, reason } => {
                troubled = true;
                eprintln!(
                    "redistribute: cannot connect to {target}: {}; retrying",
                    describe(&reason)
                );
            }
            Event::Disconnected { target, reason } if reason != DisconnectReason::Closed => {
                troubled = true;
                eprintln!(
                    "redistribute: connection to {target} lost ({}); reconnecting",
                    describe(&reason)
                );
            }
            Event::Connected { target } if troubled => {
                troubled = false;
                eprintln!("redistribute: connected to {target}");
            }
            Event::Gap { channel, from, to } => eprintln!(
                "redistribute: gap in {channel}: messages after {from} up to {to} were gone \
                 before they could be delivered"
            ),
            Event::SubscriptionLost { channel, error } => {
                eprintln!("redistribute: subscription to {channel} lost: {error}");
            }
            Event::SubscribeRetrying {
                channel,
                error,
                attempt,
                retry_in,
            } => eprintln!(
                "redistribute: subscribe to {channel} failed ({error}, attempt {attempt}); \
                 retrying in {retry_in:.1?}"
            ),
            Event::Overflow { channel, .. } => eprintln!(
                "redistribute: output is slower than {channel}; replaying it from the stream"
            ),
            Event::ServerError { code, message } => {
                eprintln!("redistribute: server error {code}: {message}");
            }
            _ => {}
        }
    }
}

/// A disconnect reason without the "transport closed" prefix when the client's own
/// description (which names the failing step) says it all.
fn describe(reason: &DisconnectReason) -> String {
    match reason {
        DisconnectReason::Transport { code: None, reason } => reason.clone(),
        other => other.to_string(),
    }
}

/// Parses `--from`.
fn parse_offset(s: &str) -> Result<Offset, String> {
    Offset::parse(s).map_err(|_| {
        format!(
            "invalid offset {s:?}: expected \"$\", \"0\" or \"<ms>-<seq>\" such as 1700000000000-0"
        )
    })
}

/// Parses a number of seconds such as `5` or `0.5`.
fn parse_stream_id(s: &str) -> Result<StreamId, String> {
    StreamId::parse(s).map_err(|e| e.to_string())
}

fn parse_secs(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("invalid number of seconds {s:?}"))?;
    Duration::try_from_secs_f64(secs)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| format!("seconds must be positive, not {s:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_seconds_and_offsets() {
        assert_eq!(parse_secs("0.5").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_secs("3").unwrap(), Duration::from_secs(3));
        assert!(parse_secs("0").is_err());
        assert!(parse_secs("-1").is_err());
        assert!(parse_secs("x").is_err());
        assert_eq!(parse_offset("$").unwrap(), Offset::Latest);
        assert_eq!(parse_offset("0").unwrap(), Offset::Earliest);
        assert!(parse_offset("1-2").is_ok());
        assert!(parse_offset("abc").unwrap_err().contains("\"abc\""));
    }
}
