//! Fuzz target: the per-process KSM parsers (`/proc/<pid>/ksm_stat`,
//! libvirt's pid file, `/proc/<pid>/stat`, `/proc/<pid>/cmdline` and the
//! QEMU `-name`/`-uuid` reader), all on the same bytes. No panic whatever
//! the files hold.
#![no_main]

use ksm_balloon::procksm::{
    parse_cmdline, parse_ksm_stat, parse_pid_file, parse_proc_stat, qemu_domain,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = parse_ksm_stat(&text);
    let _ = parse_pid_file(&text);
    let _ = parse_proc_stat(&text);
    let _ = qemu_domain(&parse_cmdline(data));
});
