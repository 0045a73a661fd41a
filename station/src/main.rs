//! `fieldreport-station`: see [`fieldreport_station::cli`].

fn main() -> std::process::ExitCode {
    fieldreport_station::cli::main()
}
