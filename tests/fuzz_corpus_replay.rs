//! Replays the fuzz targets' committed seed corpus and every regression input (a past crash
//! or hang) through the same checks the targets run (`fuzz/checks.rs`), on the stable
//! toolchain, so CI keeps them honest. Live fuzzing is `cargo +nightly fuzz run TARGET`
//! (docs/conformance.md).

#[path = "../fuzz/checks.rs"]
mod checks;

use std::path::Path;

/// Runs `check` on every file under `fuzz/corpus/<target>` and `fuzz/regressions/<target>`;
/// returns how many it ran.
fn replay(target: &str, check: fn(&[u8])) -> usize {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut n = 0;
    for dir in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            let outcome = std::panic::catch_unwind(|| check(&data));
            assert!(outcome.is_ok(), "{} fails its check", path.display());
            n += 1;
        }
    }
    n
}

#[test]
fn upgrade_corpus_passes() {
    assert!(replay("upgrade", checks::upgrade) >= 5);
}

#[test]
fn reassembler_corpus_passes() {
    assert!(replay("reassembler", checks::reassembler) >= 5);
}

#[test]
fn request_corpus_passes() {
    assert!(replay("request", checks::request) >= 4);
}

#[test]
fn publisher_lines_corpus_passes() {
    assert!(replay("publisher_lines", checks::publisher_lines) >= 2);
}

#[test]
fn the_split_helper_covers_every_byte_once() {
    let body: Vec<u8> = (0..=255).collect();
    for seed in [0u8, 1, 77, 255] {
        let joined: Vec<u8> = checks::split(seed, &body).concat();
        assert_eq!(joined, body);
    }
}
