//! The `fieldreport-station` command line, for the end-to-end tests.

fn main() -> std::process::ExitCode {
    fieldreport_station::cli::main()
}
