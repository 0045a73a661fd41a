//! Sync of 1 GB of photos from one device: the device runs in a child
//! process (this binary) so its peak RSS (VmHWM) is its own; the station
//! runs here. Absolute goal: device peak RSS < 100 MB.

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use fieldreport_core::store::{MediaMeta, Store};
use fieldreport_core::sync::{NoProgress, SyncClient};
use fieldreport_core::{Person, Role};
use fieldreport_station::{SqliteStorage, StationStorage};

use crate::report::Row;

const DEVICE_ENV: &str = "FR_PHOTO_SYNC_DEVICE";
const PHOTO_MB: usize = 10;

/// In the child process: capture and sync, print `rss_kb sync_ms bytes`.
pub fn device_if_child() -> anyhow::Result<bool> {
    let Ok(args) = std::env::var(DEVICE_ENV) else {
        return Ok(false);
    };
    let parts: Vec<&str> = args.split('|').collect();
    let [dir, url, code, photos] = parts[..] else {
        anyhow::bail!("bad {DEVICE_ENV}");
    };
    let photos: usize = photos.parse()?;
    let dir = Path::new(dir);
    let store = Store::open(dir.join("phone"))?;
    let client = SyncClient::enroll(&store, url, code)?;
    let report = store.create_report()?;
    let mut bytes = 0u64;
    for p in 0..photos {
        // Deterministic, incompressible-looking bytes, written in 1 MiB steps.
        let path = dir.join(format!("photo-{p}.jpg"));
        let mut f = std::io::BufWriter::new(std::fs::File::create(&path)?);
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ p as u64;
        let mut buf = vec![0u8; 1 << 20];
        for _ in 0..PHOTO_MB {
            for b in buf.chunks_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                b.copy_from_slice(&x.to_le_bytes()[..b.len()]);
            }
            f.write_all(&buf)?;
        }
        f.into_inner()?.sync_all()?;
        let m = store.attach_media(
            report,
            &path,
            MediaMeta {
                mime_type: "image/jpeg".into(),
                ..Default::default()
            },
        )?;
        bytes += m.size;
        std::fs::remove_file(&path)?;
    }
    let t = Instant::now();
    client.sync(&store, &NoProgress, &Default::default())?;
    let sync_ms = t.elapsed().as_millis();
    anyhow::ensure!(store.pending_media()?.is_empty(), "media left to upload");
    println!("{} {sync_ms} {bytes}", peak_rss_kb());
    Ok(true)
}

fn peak_rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

pub fn run(dir: &Path, quick: bool) -> anyhow::Result<Vec<Row>> {
    let photos = if quick { 5 } else { 100 };
    let work = tempfile::tempdir_in(dir)?;
    let rt = tokio::runtime::Runtime::new()?;
    let storage = Arc::new(SqliteStorage::open(&work.path().join("station"))?);
    let (station, code) = rt.block_on(async {
        let l = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        // Over TLS, as phones sync.
        let (tls, _, _) = fieldreport_station::tls::StationTls::generate(&[])?;
        let st = fieldreport_station::spawn(
            l,
            storage.clone(),
            fieldreport_station::Transport::Tls(Arc::new(tls)),
        )
        .await?;
        let (code, _) = storage
            .create_enrollment(
                Person {
                    name: "Officer P".into(),
                    star_number: "1".into(),
                    role: Role::Officer,
                    unit: "D9".into(),
                },
                600_000,
            )
            .await?;
        anyhow::Ok((st, code))
    })?;
    let out = Command::new(std::env::current_exe()?)
        .env(
            DEVICE_ENV,
            format!(
                "{}|{}|{code}|{photos}",
                work.path().display(),
                station.url()
            ),
        )
        .output()?;
    rt.block_on(station.stop());
    anyhow::ensure!(
        out.status.success(),
        "device process failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = String::from_utf8_lossy(&out.stdout);
    let nums: Vec<u64> = line
        .split_whitespace()
        .filter_map(|s| s.parse().ok())
        .collect();
    let [rss_kb, sync_ms, bytes] = nums[..] else {
        anyhow::bail!("device printed {line}");
    };
    let counts = rt.block_on(storage.counts())?;
    anyhow::ensure!(
        counts.media_bytes == bytes,
        "station holds {} of {bytes} bytes",
        counts.media_bytes
    );
    let mb = bytes as f64 / (1 << 20) as f64;
    Ok(vec![Row::absolute(
        format!("sync of {mb:.0} MB of photos from one device ({photos} × {PHOTO_MB} MB)"),
        format!(
            "device peak RSS {:.0} MB; sync {:.1} s ({:.0} MB/s)",
            rss_kb as f64 / 1024.0,
            sync_ms as f64 / 1e3,
            mb / (sync_ms as f64 / 1e3)
        ),
        "device peak RSS < 100 MB",
        rss_kb < 100 * 1024,
    )])
}
