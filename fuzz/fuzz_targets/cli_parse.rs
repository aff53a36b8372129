//! Fuzz target: argument parsing (`Cli::try_parse_from`, then the settings'
//! second stage `Settings::validate`). The input is split at NUL bytes into
//! arguments. No panic whatever the arguments.
#![no_main]

use clap::Parser;
use ksm_balloon::cli::Cli;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let args = std::iter::once("ksm-balloon").chain(text.split('\0'));
    if let Ok(cli) = Cli::try_parse_from(args) {
        let _ = cli.settings.validate();
    }
});
