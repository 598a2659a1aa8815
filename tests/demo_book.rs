//! The demo's order books over real sockets: `watch --book`'s client (tungstenite) keeps a
//! book from the snapshot and deltas, checks every checksum, and disconnects and resumes
//! every half second; the server recovers each resume exactly, so the same book carries on
//! and no checksum fails.

mod common;

use std::time::Duration;

use common::*;
use corecast::demo::{Feed, FeedConfig};
use corecast::watch::{run_book, BookWatch};

#[test]
fn a_kept_book_checks_out_across_disconnects_and_resumes() {
    let server = start(corecast::demo::declare_namespaces);
    let feed = Feed::start(
        server.publisher.clone(),
        FeedConfig {
            symbols: 5,
            rate_scale: 20.0,
        },
    );
    let report = run_book(&BookWatch {
        token: None,
        url: server.url.clone(),
        topic: "book.BTCUSD".into(),
        reconnect_every: Some(Duration::from_millis(500)),
        duration: Some(Duration::from_secs(4)),
        print: false,
    })
    .expect("the watcher runs");
    feed.stop();
    assert_eq!(report.failed, 0, "{report:?}");
    assert_eq!(report.holes, 0, "{report:?}");
    assert_eq!(report.gaps, 0, "{report:?}");
    assert!(report.snapshots >= 1, "{report:?}");
    assert!(report.checked >= 200, "deltas at 20x: {report:?}");
    assert!(report.resumes >= 4, "{report:?}");
    assert_eq!(
        report.recovered, report.resumes,
        "every resume recovered: {report:?}"
    );
}
