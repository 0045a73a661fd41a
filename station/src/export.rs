//! Evidence packages from the station: gathers the reports' histories, the
//! authoring devices' enrollment records and the media, and hands them to
//! the core's package writer (`fieldreport_core::evidence::package`), which
//! builds, self-verifies and publishes the bag.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use fieldreport_core::evidence::package::{
    write_package, PackageInput, PackageProgress, PackageSummary,
};
use uuid::Uuid;

use crate::attest::Attestors;
use crate::error::{Result, StationError};
use crate::storage::{Enrolled, StationStorage};

/// Writes an evidence package of `reports` to `out`. `who` is the
/// requesting device (`None`: the administrator at the station console).
/// The package's checkpoint is attested by `attestors` first (a party
/// that cannot be reached is left out of the package, and logged).
pub async fn export_package(
    storage: &Arc<dyn StationStorage>,
    attestors: &Attestors,
    who: Option<&Enrolled>,
    reports: &[Uuid],
    station: &str,
    out: &Path,
    mut progress: impl FnMut(PackageProgress) + Send + 'static,
) -> Result<PackageSummary> {
    if reports.is_empty() {
        return Err(StationError::BadRequest(
            "no_report",
            "name at least one report to export".into(),
        ));
    }
    let (mut material, round) = attestors
        .attest_while(storage.as_ref(), async {
            let material = storage.export_material(who, reports).await?;
            let note = material
                .log
                .as_ref()
                .map(|l| l.checkpoint.clone())
                .ok_or_else(|| StationError::Internal("an export without the log".into()))?;
            Ok((material, note))
        })
        .await?;
    if let Some(log) = material.log.as_mut() {
        let all = storage.attestations(round.size).await?;
        log.timestamp = crate::attest::timestamp_of(&all);
        log.cosignatures = crate::attest::cosignature_lines(&all);
    }
    let input = PackageInput {
        station: station.to_string(),
        exported_at: storage.clock().now(),
        reports: material.reports,
        devices: material.devices,
        media: material.media,
        received: material.received,
        log: material.log,
    };
    let out: PathBuf = out.to_path_buf();
    tokio::task::spawn_blocking(move || write_package(input, &out, &mut progress))
        .await
        .map_err(|_| StationError::Internal("export task failed".into()))?
        .map_err(StationError::from)
}

/// Builds a package of one report for a device and packs it as a tar
/// archive in the station's scratch directory; returns the archive's path.
pub async fn export_tar(
    storage: &Arc<dyn StationStorage>,
    attestors: &Attestors,
    who: &Enrolled,
    report: Uuid,
    station: &str,
) -> Result<PathBuf> {
    let scratch = storage.scratch_dir();
    let work = tempfile::Builder::new()
        .prefix("export-")
        .tempdir_in(&scratch)?;
    let name = format!("fieldreport-{report}");
    let bag = work.path().join(&name);
    export_package(
        storage,
        attestors,
        Some(who),
        &[report],
        station,
        &bag,
        |_| {},
    )
    .await?;
    let tar_path = scratch.join(format!("{}.tar", Uuid::new_v4()));
    let tar_out = tar_path.clone();
    tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        let file = std::fs::File::create(&tar_out)?;
        let mut b = tar::Builder::new(std::io::BufWriter::new(file));
        b.mode(tar::HeaderMode::Deterministic);
        b.append_dir_all(&name, &bag)?;
        b.into_inner()?.into_inner()?.sync_all()?;
        // `work` (the unpacked bag) is removed when it drops here.
        drop(work);
        Ok(())
    })
    .await
    .map_err(|_| StationError::Internal("export task failed".into()))??;
    Ok(tar_path)
}
