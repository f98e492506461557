//! WebSocket protocol violations (RFC 6455) written byte by byte after a real upgrade: each
//! one is answered with a close frame carrying the code the RFC asks for (1002 protocol error,
//! 1007 invalid UTF-8, 1009 too big) before the server closes the TCP connection, and the
//! server goes on serving others.

mod common;

use std::time::Duration;

use anyhow::{ensure, Result};
use common::raw_ws::{frame, op, RawWs, FIN};
use common::{client, setup, Backend, STEP};
use serde_json::json;

/// Opens a server, sends `bytes` on an upgraded connection, and checks the close frame's code
/// (and that the reason is not empty), then that a new client is served.
async fn violation_closes_with(bytes: Vec<u8>, code: u16) -> Result<()> {
    let setup = setup(Backend::Embedded, &["--max-frame-bytes", "65536"]).await?;
    let mut ws = RawWs::connect(setup.server.addr(), STEP).await?;
    // A valid frame first: the connection works before the violation.
    ws.send(FIN | op::TEXT, br#"{"type":"ping","id":1}"#)
        .await?;
    let pong = ws.recv(STEP).await?.expect("a pong frame");
    ensure!(
        String::from_utf8_lossy(&pong.payload).contains("pong"),
        "{pong:?}"
    );
    ws.send_raw(&bytes).await?;
    let (got, reason) = ws.expect_close(STEP).await?;
    assert_eq!(got, code, "close reason {reason:?}");
    ensure!(!reason.is_empty(), "the close frame gives no reason");
    // The server closes the TCP connection after its close frame.
    ensure!(
        ws.recv(STEP).await?.is_none(),
        "the connection stayed open after the close frame"
    );
    let mut other = client(&setup.server).await?;
    assert_eq!(
        other.request(json!({"type": "ping"})).await?["type"],
        "pong"
    );
    Ok(())
}

/// A client frame without a mask (RFC 6455 §5.1): 1002.
#[tokio::test]
async fn unmasked_frame_closes_with_1002() -> Result<()> {
    violation_closes_with(frame(FIN | op::TEXT, br#"{"type":"ping"}"#, false), 1002).await
}

/// A reserved data opcode (0x3): 1002.
#[tokio::test]
async fn reserved_data_opcode_closes_with_1002() -> Result<()> {
    violation_closes_with(frame(FIN | 0x3, b"x", true), 1002).await
}

/// A reserved control opcode (0xB): 1002.
#[tokio::test]
async fn reserved_control_opcode_closes_with_1002() -> Result<()> {
    violation_closes_with(frame(FIN | 0xB, b"", true), 1002).await
}

/// A reserved bit (RSV1) without a negotiated extension: 1002.
#[tokio::test]
async fn reserved_bit_closes_with_1002() -> Result<()> {
    violation_closes_with(frame(FIN | 0x40 | op::TEXT, b"{}", true), 1002).await
}

/// A continuation frame with no message to continue: 1002.
#[tokio::test]
async fn continuation_first_closes_with_1002() -> Result<()> {
    violation_closes_with(frame(FIN | op::CONTINUATION, b"{}", true), 1002).await
}

/// A new text frame while a fragmented message waits for its continuation: 1002.
#[tokio::test]
async fn new_message_inside_a_fragmented_one_closes_with_1002() -> Result<()> {
    let mut bytes = frame(op::TEXT, br#"{"type":"#, true);
    bytes.extend(frame(FIN | op::TEXT, br#"{"type":"ping"}"#, true));
    violation_closes_with(bytes, 1002).await
}

/// A fragmented control frame (a ping without FIN): 1002.
#[tokio::test]
async fn fragmented_ping_closes_with_1002() -> Result<()> {
    violation_closes_with(frame(op::PING, b"hi", true), 1002).await
}

/// A control frame with more than 125 bytes of payload: 1002.
#[tokio::test]
async fn oversized_ping_closes_with_1002() -> Result<()> {
    violation_closes_with(frame(FIN | op::PING, &[b'p'; 126], true), 1002).await
}

/// A close frame whose payload is one byte (a code needs two): 1002.
#[tokio::test]
async fn one_byte_close_payload_closes_with_1002() -> Result<()> {
    violation_closes_with(frame(FIN | op::CLOSE, &[3], true), 1002).await
}

/// A text frame that is not UTF-8: 1007.
#[tokio::test]
async fn invalid_utf8_text_closes_with_1007() -> Result<()> {
    violation_closes_with(
        frame(FIN | op::TEXT, b"{\"type\":\"\xff\xfe\"}", true),
        1007,
    )
    .await
}

/// A fragmented text message whose fragments are not UTF-8 together: 1007.
#[tokio::test]
async fn invalid_utf8_across_fragments_closes_with_1007() -> Result<()> {
    // "é" is C3 A9; the continuation brings a second lead byte instead of A9.
    let mut bytes = frame(op::TEXT, b"{\"a\":\"\xc3", true);
    bytes.extend(frame(FIN | op::CONTINUATION, b"\xc3\"}", true));
    violation_closes_with(bytes, 1007).await
}

/// A close frame whose reason is not UTF-8: 1007.
#[tokio::test]
async fn invalid_utf8_close_reason_closes_with_1007() -> Result<()> {
    violation_closes_with(frame(FIN | op::CLOSE, b"\x03\xe8\xff", true), 1007).await
}

/// A frame announcing more than `--max-frame-bytes` is refused from its header alone, without
/// waiting for (or buffering) the payload: 1009.
#[tokio::test]
async fn announced_huge_frame_closes_with_1009() -> Result<()> {
    // 2^40 bytes announced, none sent.
    let mut bytes = vec![FIN | op::TEXT, 0x80 | 127];
    bytes.extend_from_slice(&(1u64 << 40).to_be_bytes());
    bytes.extend_from_slice(&[1, 2, 3, 4]);
    violation_closes_with(bytes, 1009).await
}

/// A fragmented message that grows past `--max-frame-bytes` over small fragments: 1009.
#[tokio::test]
async fn fragments_past_the_limit_close_with_1009() -> Result<()> {
    let mut bytes = frame(op::TEXT, &[b' '; 40_000], true);
    bytes.extend(frame(op::CONTINUATION, &[b' '; 40_000], true));
    violation_closes_with(bytes, 1009).await
}

/// A peer that closes with a valid close frame is answered with the same code (the closing
/// handshake), not with an error.
#[tokio::test]
async fn a_valid_close_is_echoed() -> Result<()> {
    violation_closes_with(frame(FIN | op::CLOSE, b"\x03\xe8bye", true), 1000).await
}

/// The control for the cases above: a raw connection that sends nothing wrong stays open and
/// is answered (so a server that closed every raw connection would fail here).
#[tokio::test]
async fn a_quiet_raw_connection_stays_open() -> Result<()> {
    let setup = setup(Backend::Embedded, &[]).await?;
    let mut ws = RawWs::connect(setup.server.addr(), STEP).await?;
    let quiet = ws.recv(Duration::from_millis(500)).await;
    ensure!(quiet.is_err(), "the server sent or closed: {quiet:?}");
    ws.send(FIN | op::TEXT, br#"{"type":"ping","id":7}"#)
        .await?;
    let pong = ws.recv(STEP).await?.expect("a pong frame");
    ensure!(
        String::from_utf8_lossy(&pong.payload).contains("\"id\":7"),
        "{pong:?}"
    );
    Ok(())
}
