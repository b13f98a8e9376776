//! `berthd`, the supervisor daemon; everything it does is in `berth::daemon`.

fn main() -> std::process::ExitCode {
    berth::daemon::main()
}
