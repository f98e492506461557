//! Run with `cargo run -p native-pubsub -- [ws://127.0.0.1:8080/ws …]` against a running server
//! (`cargo run -p redistribute-cli`).
//!
//! A small Rust service on redistribute-client: it subscribes to `orders`, publishes a few
//! orders (typed structs, serialized to message fields), and prints each order it receives
//! with its offset, then the connection events it saw. Kill and restart the server while it
//! runs with `--forever` to watch it reconnect and resume without losing an order.

use std::time::Duration;

use anyhow::{Context, Result};
use futures_util::StreamExt;
use redistribute_client::{Client, Event, Offset};
use serde::{Deserialize, Serialize};

/// The message this service publishes and consumes.
#[derive(Debug, Serialize, Deserialize)]
struct Order {
    id: u64,
    item: String,
    quantity: u32,
}

#[tokio::main]
async fn main() -> Result<()> {
    let mut targets: Vec<String> = Vec::new();
    let mut forever = false;
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--forever" => forever = true,
            _ => targets.push(arg),
        }
    }
    if targets.is_empty() {
        targets.push("ws://127.0.0.1:8080/ws".into());
    }

    let client = Client::builder()
        .targets(targets)
        .give_up_after(Duration::from_secs(30))
        .connect()
        .await
        .context("connecting")?;
    let mut events = client.events();

    // Only orders published from now on; pass a saved offset to resume instead.
    let mut orders = client.subscribe("orders", Offset::Latest).await?;
    println!("subscribed to orders after {}", orders.start_offset());

    // Publish from another task, as another part of the service would.
    let publisher = client.clone();
    let count = if forever { u64::MAX } else { 5 };
    tokio::spawn(async move {
        for id in 1..=count {
            let order = Order {
                id,
                item: "widget".into(),
                quantity: (id % 3 + 1) as u32,
            };
            match publisher.publish("orders", &order).await {
                Ok(offset) => println!("published order {id} at {offset}"),
                Err(e) => eprintln!("order {id} not published: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });

    let mut received = 0;
    while let Some(message) = orders.next().await {
        let order: Order = serde_json::from_value(message.fields.into())
            .context("an order message with unexpected fields")?;
        println!("received {order:?} at {}", message.offset);
        received += 1;
        if received == count {
            break;
        }
    }

    while let Some(event) = events.try_recv() {
        if !matches!(event, Event::Lagged { .. }) {
            println!("event: {event:?}");
        }
    }
    client.close().await;
    Ok(())
}
