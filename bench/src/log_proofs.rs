//! The transparency log's proofs at size (docs/log.md): a log of 1M
//! leaves (10,000 on `--quick`) built the way `verify` builds it, then
//! inclusion and consistency proofs made and checked from its stored
//! hashes. The station serves proofs from the same numbering through its
//! database; this row is the arithmetic and hashing, not the SQL.
//!
//! Run by `fieldreport-bench` (`log-proofs`).

use std::time::Instant;

use fieldreport_core::tlog::{check_consistency, check_inclusion, LeafView, TreeBuilder};
use sha2::Digest;

use crate::report::Row;

/// A change leaf with commitments derived from `i` (what a change's leaf
/// holds: two hashes).
fn leaf(i: u64) -> Vec<u8> {
    let h = |tag: &[u8]| -> [u8; 32] {
        let mut d = sha2::Sha256::new();
        d.update(tag);
        d.update(i.to_be_bytes());
        d.finalize().into()
    };
    LeafView::Change {
        report: h(b"report"),
        body: h(b"body"),
    }
    .encode()
}

pub fn run(quick: bool) -> anyhow::Result<Vec<Row>> {
    let n: u64 = if quick { 10_000 } else { 1_000_000 };
    let t = Instant::now();
    let mut tree = TreeBuilder::default();
    for i in 0..n {
        tree.push(&leaf(i))?;
    }
    let root = tree.root()?;
    let build = t.elapsed();

    // Inclusion: a spread of indexes, each proof made and checked.
    let samples: u64 = 1_000;
    let mut longest = 0usize;
    let (mut prove_ns, mut check_ns) = (0u128, 0u128);
    for k in 0..samples {
        let index = (k * 7_919 * 104_729) % n;
        let t = Instant::now();
        let proof = tlog_tiles::prove_record(n, index, &tree)
            .map_err(|e| anyhow::anyhow!("prove_record: {e:?}"))?;
        prove_ns += t.elapsed().as_nanos();
        longest = longest.max(proof.len());
        let leaf_hash = tlog_tiles::record_hash(&leaf(index));
        let t = Instant::now();
        check_inclusion(&proof, n, root, index, leaf_hash)?;
        check_ns += t.elapsed().as_nanos();
    }
    let per = |ns: u128| ns as f64 / samples as f64 / 1000.0;

    // Consistency from half the log to all of it.
    let mut half = TreeBuilder::default();
    for i in 0..n / 2 {
        half.push(&leaf(i))?;
    }
    let half_root = half.root()?;
    let consistency = tlog_tiles::prove_tree(n, n / 2, &tree)
        .map_err(|e| anyhow::anyhow!("prove_tree: {e:?}"))?;
    check_consistency(&consistency, n / 2, half_root, n, root)?;

    // log2(1M) = 20 hashes; 1 ms is what a phone may spend per receipt.
    let bound = 64 - (n - 1).leading_zeros() as usize;
    Ok(vec![
        Row::absolute(
            format!("log of {n} leaves: inclusion proof size (longest of {samples})"),
            format!("{longest} hashes, {} bytes", longest * 32),
            &format!("≤ {bound} hashes (⌈log2 n⌉)"),
            longest <= bound,
        ),
        Row::absolute(
            format!("log of {n} leaves: inclusion proof, make and check (mean of {samples})"),
            format!("make {:.1} µs, check {:.1} µs", per(prove_ns), per(check_ns)),
            "< 1 ms each",
            per(prove_ns) < 1000.0 && per(check_ns) < 1000.0,
        ),
        Row::absolute(
            format!("log of {n} leaves: consistency proof from {} leaves", n / 2),
            format!("{} hashes, {} bytes", consistency.len(), consistency.len() * 32),
            &format!("≤ {} hashes", 2 * bound),
            consistency.len() <= 2 * bound,
        ),
        Row::absolute(
            format!("log of {n} leaves: build the tree from its leaves (what verify does with a package)"),
            format!("{:.2} s", build.as_secs_f64()),
            "< 30 s",
            build.as_secs() < 30,
        ),
    ])
}
