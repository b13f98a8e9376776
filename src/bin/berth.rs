//! `berth`, the command-line client; everything it does is in `berth::cli`.

fn main() -> std::process::ExitCode {
    berth::cli::main()
}
