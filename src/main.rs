//! Thin entry point: everything lives in the library (see `app::main_entry`).

fn main() -> std::process::ExitCode {
    std::process::ExitCode::from(ecs_bootstrap::app::main_entry(
        std::env::args_os().collect(),
    ))
}
