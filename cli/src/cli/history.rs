//! `redistribute history`: one JSON line per stored message, `{"channel","offset","fields"}`
//! (as `redistribute sub` prints them), paging through the range with the client's `history`.
//!
//! A trimmed range is reported on stderr (`trimmed: (from, to]`) and the messages that are
//! left are printed; a closed stdout (e.g. `| head`) ends the command quietly with success.

use std::io::{self, Write};

use anyhow::{anyhow, Result};
use redistribute_client::{HistoryOptions, Offset, MAX_HISTORY_LIMIT};

use super::sub::{write_line, write_ok};
use super::HistoryArgs;

/// Runs `redistribute history` until the range is printed, `--limit` messages were, or stdout
/// closes.
pub async fn run_history(args: HistoryArgs) -> Result<()> {
    let client = args.client.client()?;
    let result = print_history(&client, &args).await;
    client.close().await;
    result
}

async fn print_history(client: &redistribute_client::Client, args: &HistoryArgs) -> Result<()> {
    let mut left = args.limit;
    let mut options = HistoryOptions {
        from: args.from,
        to: args.to,
        limit: None,
        reverse: args.reverse,
    };
    let mut out = io::BufWriter::with_capacity(64 * 1024, io::stdout());
    let mut reported = false;
    while left != Some(0) {
        options.limit = Some(left.map_or(MAX_HISTORY_LIMIT, |l| l.min(MAX_HISTORY_LIMIT)));
        let page = client
            .history(args.channel.clone(), options)
            .await
            .map_err(|e| anyhow!("cannot read the history of {:?}: {e}", args.channel))?;
        if page.truncated && !reported {
            reported = true;
            match page.gap {
                Some(gap) => eprintln!("trimmed: ({}, {}]", gap.from, gap.to),
                None => eprintln!("trimmed: messages of the range were removed"),
            }
        }
        for message in &page.messages {
            if !write_ok(write_line(&mut out, &args.channel, message))? {
                return Ok(());
            }
        }
        left = left.map(|l| l.saturating_sub(page.messages.len() as u64));
        if !page.more {
            break;
        }
        if args.reverse {
            options.to = Some(page.next);
        } else {
            options.from = Some(Offset::Id(page.next));
        }
    }
    write_ok(out.flush())?;
    Ok(())
}
