//! Properties of the head scanner, checked on generated input (proptest, a bounded number
//! of cases so they run in the ordinary test suite):
//!
//! - arbitrary bytes, split anywhere, never make it panic, and how the bytes are split
//!   never changes what it decides;
//! - on generated request heads (a grammar of the tricky pieces: `content-length` and
//!   `transfer-encoding` variants, obs-fold, `#`, bare CR and LF, NUL), it refuses exactly
//!   the heads that [`reference`], a plain whole-head reading of SPEC.md "Strict
//!   parsing", refuses.

use proptest::prelude::*;

use super::{HeadScanner, Verdicts};

/// The verdicts the scanner gives for `input`, fed in the pieces `cuts` makes.
fn verdicts(input: &[u8], cuts: &[usize]) -> Vec<bool> {
    let verdicts = Verdicts::default();
    let mut scanner = HeadScanner::default();
    let mut at = 0;
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
    cuts.sort_unstable();
    for cut in cuts.into_iter().chain([input.len()]) {
        scanner.scan(&input[at..cut.max(at)], &verdicts);
        at = cut.max(at);
    }
    (0..verdicts.len()).map(|_| verdicts.pop().problem.is_some()).collect()
}

/// Whether SPEC.md "Strict parsing" refuses this one complete request head, read whole.
fn reference(head: &[u8]) -> bool {
    if head.contains(&0) {
        return true;
    }
    for (i, &b) in head.iter().enumerate() {
        let bare_lf = b == b'\n' && (i == 0 || head[i - 1] != b'\r');
        let bare_cr = b == b'\r' && head.get(i + 1) != Some(&b'\n');
        if bare_lf || bare_cr {
            return true;
        }
    }
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n").skip_while(|line| line.is_empty());
    let request_line = lines.next().unwrap_or_default();
    if request_line.split(' ').nth(1).is_some_and(|target| target.contains('#')) {
        return true;
    }
    let (mut lengths, mut codings) = (Vec::new(), Vec::new());
    for line in lines.take_while(|line| !line.is_empty()) {
        if line.starts_with([' ', '\t']) {
            return true;
        }
        let Some((name, value)) = line.split_once(':') else { continue };
        match name.to_ascii_lowercase().as_str() {
            "content-length" => lengths.push(value.to_owned()),
            "transfer-encoding" => codings.push(value.to_owned()),
            _ => {}
        }
    }
    let ws: &[char] = &[' ', '\t'];
    let numbers: Vec<Option<u64>> = lengths
        .iter()
        .flat_map(|value| value.split(','))
        .map(|n| n.trim_matches(ws))
        .map(|n| if n.bytes().all(|b| b.is_ascii_digit()) { n.parse().ok() } else { None })
        .collect();
    let bad_length = numbers.iter().any(Option::is_none) || numbers.windows(2).any(|w| w[0] != w[1]);
    let bad_coding = codings.len() > 1 || codings.iter().any(|c| !c.trim_matches(ws).eq_ignore_ascii_case("chunked"));
    bad_length || bad_coding || (!lengths.is_empty() && !codings.is_empty())
}

const NAMES: &[&str] =
    &["content-length", "Content-Length", "transfer-encoding", "TRANSFER-ENCODING", "host", "x-a", "upgrade"];
const VALUES: &[&str] = &[
    "5",
    "5, 5",
    "5,6",
    " 7\t",
    "+3",
    "",
    ",5",
    "99999999999999999999999",
    "chunked",
    " Chunked ",
    "chunked, chunked",
    "gzip, chunked",
    "xchunked",
    "identity",
    "a#b",
    "websocket",
];
const TARGETS: &[&str] = &["/", "/a#b", "/x?y=1", "http://a/b", "#", "/a/../b"];

/// Ways to break a generated head at a position.
#[derive(Debug, Clone, Copy)]
enum Damage {
    Nul,
    /// A CRLF becomes LF.
    BareLf,
    /// A CRLF becomes CR.
    BareCr,
}

fn head() -> impl Strategy<Value = Vec<u8>> {
    let header = (any::<u8>(), prop::sample::select(NAMES), prop::sample::select(VALUES));
    let damage = (prop::sample::select(&[Damage::Nul, Damage::BareLf, Damage::BareCr][..]), any::<usize>());
    (
        prop::sample::select(&["GET", "POST", "CONNECT"][..]),
        prop::sample::select(TARGETS),
        prop::collection::vec(header, 0..6),
        prop::option::weighted(0.2, damage),
    )
        .prop_map(|(method, target, headers, damage)| {
            let mut head = format!("{method} {target} HTTP/1.1\r\n").into_bytes();
            for (shape, name, value) in headers {
                // Mostly plain `name: value`; sometimes folded, sometimes without a colon.
                let line = match shape % 16 {
                    0 => format!(" {name}: {value}\r\n"),
                    1 => format!("{name} {value}\r\n"),
                    _ => format!("{name}: {value}\r\n"),
                };
                head.extend_from_slice(line.as_bytes());
            }
            if let Some((damage, at)) = damage {
                let crlfs: Vec<usize> =
                    head.windows(2).enumerate().filter(|(_, w)| w == b"\r\n").map(|(i, _)| i).collect();
                match damage {
                    Damage::Nul => head.insert(at % head.len(), 0),
                    Damage::BareLf => drop(head.remove(crlfs[at % crlfs.len()])),
                    Damage::BareCr => drop(head.remove(crlfs[at % crlfs.len()] + 1)),
                }
            }
            head.extend_from_slice(b"\r\n");
            head
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic_and_splits_do_not_matter(
        input in prop::collection::vec(any::<u8>(), 0..512),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        prop_assert_eq!(verdicts(&input, &cuts), verdicts(&input, &[]));
    }

    #[test]
    fn refuses_exactly_what_the_reference_refuses(head in head(), cuts in prop::collection::vec(any::<usize>(), 0..4)) {
        let verdicts = verdicts(&head, &cuts);
        prop_assert_eq!(verdicts.len(), 1, "one verdict per head: {:?}", String::from_utf8_lossy(&head));
        prop_assert_eq!(verdicts[0], reference(&head), "head {:?}", String::from_utf8_lossy(&head));
    }
}
