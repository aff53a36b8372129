//! Writes ksm-balloon's metrics file again and again, for
//! tests/metrics/node-exporter.sh: `metrics_writer PATH COUNT [--in-place]`.
//!
//! Generation n (1..=COUNT) of the shared sample input
//! (tests/metrics_sample) is written with ksm-balloon's own atomic writer;
//! `--in-place` truncates and rewrites the file in small pieces instead,
//! the torn writes the scrape checker must be able to catch.

use std::io::Write;
use std::process::ExitCode;

#[path = "../tests/metrics_sample/mod.rs"]
mod metrics_sample;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(path), Some(count)) = (
        args.first(),
        args.get(1).and_then(|c| c.parse::<u64>().ok()),
    ) else {
        eprintln!("usage: metrics_writer PATH COUNT [--in-place]");
        return ExitCode::from(2);
    };
    let in_place = args.get(2).map(String::as_str) == Some("--in-place");
    let path = std::path::Path::new(path);
    for n in 1..=count {
        let text = ksm_balloon::metrics::render(&metrics_sample::sample(n));
        let result = if in_place {
            std::fs::File::create(path).and_then(|mut f| {
                for piece in text.as_bytes().chunks(256) {
                    f.write_all(piece)?;
                    f.flush()?;
                    std::thread::yield_now();
                }
                Ok(())
            })
        } else {
            ksm_balloon::metrics::write(path, &metrics_sample::sample(n))
                .map_err(std::io::Error::other)
        };
        if let Err(e) = result {
            eprintln!("metrics_writer: {e}");
            return ExitCode::from(1);
        }
    }
    ExitCode::SUCCESS
}
