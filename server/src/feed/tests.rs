//! Tests of the feed's start positions.

use super::*;

#[test]
fn start_positions() {
    let pos = Position {
        last_id: StreamId::new(100, 0),
        trimmed_through: Some(StreamId::new(50, 0)),
    };
    let plain = |ms| Start {
        after: StreamId::new(ms, 0),
        truncated: false,
        gap: None,
    };
    assert_eq!(Start::resolve(Offset::Latest, pos), plain(100));
    assert_eq!(Start::resolve(Offset::Earliest, pos), plain(0));
    assert_eq!(
        Start::resolve(Offset::Id(StreamId::new(50, 0)), pos),
        plain(50)
    );
    assert_eq!(
        Start::resolve(Offset::Id(StreamId::new(10, 0)), pos),
        Start {
            after: StreamId::new(50, 0),
            truncated: true,
            gap: Some((StreamId::new(10, 0), StreamId::new(50, 0)))
        }
    );
    // Beyond the tip (not raised: too far ahead of the clock): from the tip, flagged.
    assert_eq!(
        Start::resolve(Offset::Id(StreamId::new(200, 0)), pos),
        Start {
            after: StreamId::new(100, 0),
            truncated: true,
            gap: None
        }
    );
}
