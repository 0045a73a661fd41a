//! One sync of a device store, as a process the kill-loop tests SIGKILL at
//! random points: `device-sync STORE_DIR STATION_URL CREDENTIAL`. Exits 0
//! when the sync completed, 3 when it failed (the station was away).

use fieldreport_core::store::Store;
use fieldreport_core::sync::{NoProgress, StationPin, SyncClient};

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let [_, dir, url, credential] = &args[..] else {
        eprintln!("usage: device-sync STORE_DIR STATION_URL CREDENTIAL");
        return std::process::ExitCode::from(2);
    };
    let run = || -> fieldreport_core::Result<()> {
        let store = Store::open(dir)?;
        let pin = store
            .sync_value("station_pin")?
            .map(|p| StationPin::parse(&p))
            .transpose()?;
        let mut client = SyncClient::new(url, credential, pin)?;
        client.max_attempts = 1;
        client.sync(&store, &NoProgress, &Default::default())?;
        Ok(())
    };
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sync failed: {e}");
            std::process::ExitCode::from(3)
        }
    }
}
