//! `ksm-balloon-hook`: the program libvirt runs as its qemu hook
//! (`/etc/libvirt/hooks/qemu.d/ksm-balloon` links to it).
//!
//! A VM start waits for it three times (prepare, start, started), so it is
//! its own small program: it does not link libvirt (`ksm-balloon` loads
//! about 57 shared libraries before doing anything), reads only the
//! settings it needs, drops one spool record and exits 0 whatever happened.
//! The work is in [`ksm_balloon::hook::entry`].

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args_os()
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    ksm_balloon::hook::entry(&args, std::io::stdin().lock());
    ExitCode::SUCCESS
}
