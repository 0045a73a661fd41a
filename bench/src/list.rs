//! Opening a device store that holds 10k reports and listing the newest 50
//! (what the app does at launch). Absolute goal: < 50 ms.

use std::path::Path;
use std::time::{Duration, Instant};

use fieldreport_core::store::{ListQuery, Store};
use fieldreport_core::{Change, Origin};

use crate::core_figures::remote_changes;
use crate::report::Row;

pub fn run(dir: &Path, quick: bool) -> anyhow::Result<Vec<Row>> {
    // devices × reports per device, 2 changes each.
    let (devices, per) = if quick { (10, 100) } else { (100, 100) };
    let reports = devices * per;
    let path = dir.join("list-store");
    {
        let (ids, wire) = remote_changes(devices, per, 2);
        let store = Store::open(&path)?;
        for id in &ids {
            store.add_known_device(&id.record)?;
        }
        for batch in wire.chunks(1000) {
            let changes = batch
                .iter()
                .map(|(b, s)| Change::from_parts(b.clone(), *s))
                .collect::<Result<Vec<_>, _>>()?;
            store.apply_changes(changes, Origin::Station)?;
        }
    }
    let mut times = Vec::new();
    for _ in 0..7 {
        let t = Instant::now();
        let store = Store::open(&path)?;
        let page = store.list_reports(&ListQuery {
            limit: 50,
            ..Default::default()
        })?;
        times.push(t.elapsed());
        anyhow::ensure!(page.len() == 50, "listed {} reports", page.len());
        drop(store);
    }
    times.sort();
    let median: Duration = times[times.len() / 2];
    Ok(vec![Row::absolute(
        format!("open a store holding {reports} reports and list the newest 50 (median of 7)"),
        format!("{:.1} ms", median.as_secs_f64() * 1e3),
        "< 50 ms",
        median < Duration::from_millis(50),
    )])
}
