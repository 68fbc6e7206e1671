//! The `kseg` binary: parses the command line, runs the command
//! (`kseg::cli`, one module per command) and reports errors: one line on
//! stderr and exit status 1. A closed standard output (`kseg info FILE |
//! head`) ends the program quietly, as Unix tools do; an interrupt removes
//! the temporary files of writes in progress and exits with status 130.

use clap::Parser;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    // SAFETY: first thing in main, no other thread yet.
    unsafe { kseg::init_cpu_runtime() };
    // SIGINT or SIGTERM: remove the temporary files of writes in progress
    // (outputs and checkpoints are renamed into place only when whole, so
    // nothing else needs undoing), then exit as an interrupted program.
    // A run folder's lock is released with the process.
    let _ = ctrlc::set_handler(|| {
        eprintln!("interrupted");
        kseg::volume::fs::remove_in_flight_and_exit(130)
    });
    match kseg::cli::Cli::parse().run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) if broken_pipe(&e) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

/// `e` and its causes on one line, each cause said once: an error that
/// already quotes its source (`path: No such file or directory`) is not
/// followed by the same words again.
fn one_line(e: &anyhow::Error) -> String {
    let mut msg = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !msg.contains(&c) {
            msg.push_str(": ");
            msg.push_str(&c);
        }
    }
    msg
}

/// Whether `e` comes from writing to a closed pipe.
fn broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
