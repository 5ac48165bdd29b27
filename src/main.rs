fn main() -> std::process::ExitCode {
    companero::cli::main()
}
