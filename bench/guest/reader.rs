//! The I/O benchmark's workload, run inside each bench guest
//! (bench/guest/init.sh starts it; docs/BENCHMARKS.md part 1).
//!
//! Reads random 1 MiB blocks of a block device through the guest's page
//! cache, forever, holding the device open (Linux drops a block device's
//! page cache when its last opener closes it). Every interval it prints one
//! line on stdout (the guest's serial console):
//!
//! `KB-TPUT seq=<n> t=<s since start> mbps=<MB/s> blocks=<n> memtotal=<kB> memfree=<kB> buffers=<kB> cached=<kB>`
//!
//! where MB is 10^6 bytes, and the meminfo fields are the guest's own view
//! (a block device's page cache is counted in `Buffers`, not `Cached`).
//!
//! Built by bench/guest/build.sh with
//! `rustc -O -C target-feature=+crt-static`: one static binary, std only,
//! so it runs in a busybox initramfs.
//!
//! Usage: reader DEVICE [INTERVAL_S] [BLOCK_KIB] [SEED] [SPAN_MIB]
//!
//! SPAN_MIB (0 or absent: the whole device) limits the reads to the
//! device's first SPAN_MIB MiB: the working set, so two readers on disks of
//! one size can need different amounts of cache (the unequal rig).

use std::env;
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::process::ExitCode;
use std::time::{Duration, Instant};

fn meminfo() -> (u64, u64, u64, u64) {
    let text = fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (
        field("MemTotal:"),
        field("MemFree:"),
        field("Buffers:"),
        field("Cached:"),
    )
}

/// xorshift64*: good enough to pick blocks, and reproducible from a seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

fn arg<T: std::str::FromStr>(args: &[String], i: usize, default: T) -> Result<T, String> {
    match args.get(i) {
        None => Ok(default),
        Some(s) => s.parse().map_err(|_| format!("bad argument {i}: {s}")),
    }
}

fn run() -> Result<(), String> {
    let args: Vec<String> = env::args().collect();
    let dev = args
        .get(1)
        .ok_or("usage: reader DEVICE [INTERVAL_S] [BLOCK_KIB] [SEED] [SPAN_MIB]")?;
    let interval = Duration::from_secs_f64(arg(&args, 2, 2.0)?);
    let block = arg::<u64>(&args, 3, 1024)? * 1024;
    let seed: u64 = arg(&args, 4, 0x9E37_79B9_7F4A_7C15)?;
    let span = arg::<u64>(&args, 5, 0)? * 1024 * 1024;
    let file = File::open(dev).map_err(|e| format!("open {dev}: {e}"))?;
    let size = fs::read_to_string(format!(
        "/sys/class/block/{}/size",
        dev.trim_start_matches("/dev/")
    ))
    .ok()
    .and_then(|s| s.trim().parse::<u64>().ok())
    .map(|sectors| sectors * 512)
    .ok_or_else(|| format!("cannot read the size of {dev}"))?;
    let blocks = if span == 0 { size } else { span.min(size) } / block;
    if blocks == 0 {
        return Err(format!("{dev} is smaller than one block"));
    }
    let mut buf = vec![0u8; block as usize];
    let mut rng = Rng(seed | 1);
    let start = Instant::now();
    let mut mark = start;
    let (mut seq, mut bytes, mut count) = (0u64, 0u64, 0u64);
    let out = io::stdout();
    println!(
        "KB-READER-START dev={dev} size={size} block={block} blocks={blocks} span={}",
        blocks * block
    );
    loop {
        let b = rng.next() % blocks;
        file.read_exact_at(&mut buf, b * block)
            .map_err(|e| format!("read {dev} block {b}: {e}"))?;
        bytes += block;
        count += 1;
        let now = Instant::now();
        let dt = now - mark;
        if dt >= interval {
            let (total, free, buffers, cached) = meminfo();
            seq += 1;
            let mut o = out.lock();
            let _ = writeln!(
                o,
                "KB-TPUT seq={seq} t={:.2} mbps={:.2} blocks={count} memtotal={total} memfree={free} buffers={buffers} cached={cached}",
                (now - start).as_secs_f64(),
                bytes as f64 / dt.as_secs_f64() / 1e6,
            );
            let _ = o.flush();
            mark = now;
            bytes = 0;
            count = 0;
        }
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("KB-READER-FAILED {e}");
            println!("KB-READER-FAILED {e}");
            ExitCode::FAILURE
        }
    }
}
