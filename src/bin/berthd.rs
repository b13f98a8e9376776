fn main() -> std::process::ExitCode {
    berth::daemon::main()
}
