//! Files and permissions: the state and its lock are created 0600 by the
//! user running the tool, in a 0700 directory it owns; a directory others
//! can write to is refused; symbolic links planted at the state, lock or
//! temp path are never followed; and nothing is written outside the state
//! directory (the whole fake host is compared before and after).
#![allow(clippy::unwrap_used)]

mod common;

use std::fs;
use std::os::unix::fs::symlink;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use common::{assert_invariants, snapshot, Dom, Expect, Fixture};

fn mode(p: &Path) -> u32 {
    fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
}

#[test]
fn state_and_lock_are_0600_in_a_0700_directory_of_ours() {
    for first in ["run", "hook"] {
        let d = Dom::numbered("p", 1);
        let fx = Fixture::new(std::slice::from_ref(&d));
        let out = if first == "run" {
            fx.run(&["run", "--json"])
        } else {
            fx.hook(&d, "prepare")
        };
        assert_eq!(out.code, Some(0), "{}", out.stderr);
        assert_eq!(mode(&fx.state_dir()), 0o700, "{first}: directory");
        let files = if first == "run" {
            vec![fx.state_path(), fx.state_dir().join("state.json.lock")]
        } else {
            // the hook only drops a record into the spool
            let spool = fx.state_dir().join("spool");
            assert_eq!(mode(&spool), 0o700, "{first}: spool");
            fs::read_dir(&spool)
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect()
        };
        assert!(!files.is_empty());
        for p in files {
            assert_eq!(mode(&p), 0o600, "{first}: {}", p.display());
            assert_eq!(fs::metadata(&p).unwrap().uid(), euid());
        }
        assert_eq!(fs::metadata(fx.state_dir()).unwrap().uid(), euid());
    }
}

#[test]
fn state_dir_writable_by_others_is_refused() {
    // Anyone who can write to the state directory can plant a state file
    // whose floors are the VMs' maximums, and every pass would grow them.
    let d = Dom::numbered("p", 1);
    for loose in [0o777, 0o1777, 0o770, 0o722] {
        let fx = Fixture::new(std::slice::from_ref(&d));
        fs::create_dir_all(fx.state_dir()).unwrap();
        fs::set_permissions(fx.state_dir(), fs::Permissions::from_mode(loose)).unwrap();
        let out = fx.run(&["run", "--json"]);
        assert_eq!(out.code, Some(1), "{loose:o}: {}", out.stderr);
        let want = format!(
            "refusing to use the state directory {}: it is writable by others (mode {:o})",
            fx.state_dir().display(),
            loose & 0o777
        );
        assert!(
            out.stderr.contains(&want),
            "{loose:o}: wanted {want:?}\n{}",
            out.stderr
        );
        let out = fx.hook(&d, "prepare");
        assert_eq!(out.code, Some(0), "hook must not fail a VM start");
        let hook_want = format!(
            "cannot spool the record in {}/spool: {} is owned by uid {} with mode {:o}; it must be owned by uid {} and writable by no one else",
            fx.state_dir().display(),
            fx.state_dir().display(),
            euid(),
            loose & 0o777,
            euid()
        );
        assert!(
            out.stderr.contains(&hook_want),
            "{hook_want}\n{}",
            out.stderr
        );
        assert!(!fx.state_path().exists() && !fx.state_dir().join("state.json.lock").exists());
        assert!(!fx.state_dir().join("spool").exists());
    }
    // a 0755 directory (what mkdir -p makes) is fine
    let fx = Fixture::new(std::slice::from_ref(&d));
    fs::create_dir_all(fx.state_dir()).unwrap();
    fs::set_permissions(fx.state_dir(), fs::Permissions::from_mode(0o755)).unwrap();
    assert_eq!(fx.run(&["run", "--json"]).code, Some(0));
}

#[test]
fn state_dir_owned_by_someone_else_is_refused() {
    if euid() != 0 {
        panic!("this test must run as root (it chowns a directory)");
    }
    let d = Dom::numbered("p", 1);
    let fx = Fixture::new(std::slice::from_ref(&d));
    fs::create_dir_all(fx.state_dir()).unwrap();
    std::os::unix::fs::chown(fx.state_dir(), Some(65534), Some(65534)).unwrap();
    fs::set_permissions(fx.state_dir(), fs::Permissions::from_mode(0o700)).unwrap();
    let out = fx.run(&["run", "--json"]);
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(
        out.stderr.contains("is owned by uid 65534, not by uid 0"),
        "{}",
        out.stderr
    );
}

#[test]
fn symlinks_at_state_lock_and_temp_paths_are_not_followed() {
    let d = Dom::numbered("p", 1);
    // at the state path: the link is moved aside by the first pass (the
    // hook never opens the state), its target untouched
    for first in ["run", "hook"] {
        let fx = Fixture::new(std::slice::from_ref(&d));
        let precious = fx.dir.path().join("precious");
        fs::write(&precious, "do not touch").unwrap();
        fs::create_dir_all(fx.state_dir()).unwrap();
        symlink(&precious, fx.state_path()).unwrap();
        let out = if first == "run" {
            fx.run(&["run", "--json"])
        } else {
            let out = fx.hook(&d, "prepare");
            assert_eq!(out.code, Some(0), "{}", out.stderr);
            assert!(fs::symlink_metadata(fx.state_path())
                .unwrap()
                .file_type()
                .is_symlink());
            fx.run(&["run", "--json"])
        };
        assert_eq!(out.code, Some(0), "{}", out.stderr);
        assert!(
            out.stderr.contains("it is a symbolic link"),
            "{}",
            out.stderr
        );
        assert_eq!(fs::read_to_string(&precious).unwrap(), "do not touch");
        assert!(!fs::symlink_metadata(fx.state_path())
            .unwrap()
            .file_type()
            .is_symlink());
        assert_invariants(
            &fx.state_path(),
            &Expect {
                present: vec![d.clone()],
                allowed_extra_files: vec!["state.json.bad-".into()],
                ..Expect::default()
            },
            &[out.stdout],
        );
    }
    // at the lock path: refused; the target is never created
    let fx = Fixture::new(std::slice::from_ref(&d));
    let target = fx.dir.path().join("created-through-the-link");
    fs::create_dir_all(fx.state_dir()).unwrap();
    symlink(&target, fx.state_dir().join("state.json.lock")).unwrap();
    let out = fx.run(&["run", "--json"]);
    assert_eq!(out.code, Some(1));
    assert!(
        out.stderr
            .contains("state.json.lock: it is a symbolic link"),
        "{}",
        out.stderr
    );
    // the hook never takes the lock: it spools and leaves the link alone
    let out = fx.hook(&d, "prepare");
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(out.stderr.contains("spooled"), "{}", out.stderr);
    assert!(!out.stderr.contains("cannot"), "{}", out.stderr);
    assert!(!target.exists());
    // at a temp path: removed as a stale temp file, its target untouched
    let fx = Fixture::new(std::slice::from_ref(&d));
    let precious = fx.dir.path().join("precious");
    fs::write(&precious, "do not touch").unwrap();
    fs::create_dir_all(fx.state_dir()).unwrap();
    for pid in [1, 99999, 4194304] {
        symlink(
            &precious,
            fx.state_dir().join(format!("state.json.tmp.{pid}")),
        )
        .unwrap();
    }
    let out = fx.run(&["run", "--json"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(fs::read_to_string(&precious).unwrap(), "do not touch");
    assert_invariants(
        &fx.state_path(),
        &Expect {
            present: vec![d],
            ..Expect::default()
        },
        &[out.stdout],
    );
}

#[test]
fn nothing_is_written_outside_the_state_directory() {
    let listed = Dom::numbered("l", 1);
    let hooked = Dom::numbered("h", 2);
    let fx = Fixture::new(std::slice::from_ref(&listed));
    let state_dir = fx.state_dir();
    let rel = state_dir.strip_prefix(fx.dir.path()).unwrap().to_path_buf();
    let outside = |s: &std::collections::BTreeMap<std::path::PathBuf, (Vec<u8>, u32)>| {
        s.iter()
            .filter(|(p, _)| !p.starts_with(&rel))
            .map(|(p, v)| (p.clone(), v.clone()))
            .collect::<Vec<_>>()
    };
    let before = snapshot(fx.dir.path());
    let mut logs = Vec::new();
    for step in [
        "run",
        "hook prepare",
        "status",
        "plan",
        "status --json",
        "run --dry-run",
        "hook stopped",
        "run",
    ] {
        let out = match step {
            "hook prepare" => fx.hook(&hooked, "prepare"),
            "hook stopped" => fx.hook(&hooked, "stopped"),
            "run" => fx.run(&["run", "--json"]),
            s => fx.run(&s.split(' ').collect::<Vec<_>>()),
        };
        assert_eq!(out.code, Some(0), "{step}: {}", out.stderr);
        if step == "run" {
            logs.push(out.stdout);
        }
    }
    // and with a bad state file moved aside
    fs::write(fx.state_path(), "garbage").unwrap();
    assert_eq!(fx.run(&["run", "--json"]).code, Some(0));
    let after = snapshot(fx.dir.path());
    // the state directory itself is new (under var/lib, which existed? no: made)
    let new_parents: Vec<_> = after
        .keys()
        .filter(|p| !before.contains_key(*p) && !p.starts_with(&rel))
        .collect();
    // only the state directory's missing parents may appear, as directories
    for p in &new_parents {
        assert!(
            rel.starts_with(p),
            "created outside the state directory: {}",
            p.display()
        );
        assert!(after[*p].0.is_empty(), "{}", p.display());
    }
    let b: Vec<_> = outside(&before);
    let a: Vec<_> = outside(&after)
        .into_iter()
        .filter(|(p, _)| !new_parents.contains(&p))
        .collect();
    assert_eq!(a, b, "something outside the state directory changed");
    assert_invariants(
        &fx.state_path(),
        &Expect {
            present: vec![listed],
            absent: vec![hooked],
            live_uri: Some(fx.uri()),
            allowed_extra_files: vec!["state.json.bad-".into()],
            ..Expect::default()
        },
        &logs,
    );
}

/// Runs `script` in a private mount namespace with a full 64 KiB tmpfs over
/// the state directory (after `setup` ran the binary once to fill it with a
/// state). Needs root.
fn with_full_state_dir(fx: &Fixture, setup: &str, script: &str) -> String {
    assert_eq!(euid(), 0, "this test must run as root (it mounts a tmpfs)");
    let sh = format!(
        "set -e; mount -t tmpfs -o size=64k,mode=0700 kb-test \"$D\"; {setup}; \
         dd if=/dev/zero of=\"$D/filler\" bs=4k >/dev/null 2>&1 || true; {script}"
    );
    fs::create_dir_all(fx.state_dir()).unwrap();
    let out = std::process::Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &sh])
        .env("D", fx.state_dir())
        .env("B", common::BIN)
        .env("KSM_BALLOON_ROOT", &fx.root)
        .env("KSM_BALLOON_CONNECT", fx.uri())
        .env("KSM_BALLOON_LOG", "info")
        .env("KSM_BALLOON_HOOK_LOG", "stderr")
        .env("KSM_BALLOON_LOG_STYLE", "never")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn hook_store_errors_name_their_cause() {
    // Found by tests/reliability/state-dir-faults.sh: with the state
    // directory full the hook logged "cannot write <tmp>; state not changed"
    // without the OS error, so nobody could tell why.
    let d = Dom::numbered("p", 1);
    let fx = Fixture::new(&[]);
    let xml = fx.dir.path().join("vm.xml");
    fs::write(&xml, d.xml()).unwrap();
    let log = with_full_state_dir(
        &fx,
        "true",
        &format!("\"$B\" hook {} prepare begin - < {}", d.name, xml.display()),
    );
    assert!(
        log.contains("cannot spool the record") && log.contains("No space left on device"),
        "{log}"
    );
}

#[test]
fn hook_does_not_claim_a_record_it_could_not_save() {
    // Found by tests/reliability/state-dir-faults.sh: with the state
    // directory full the hook logged "recorded VM ..." and then failed to
    // save it; the same for "forgot VM".
    let a = Dom::numbered("a", 1);
    let b = Dom::numbered("b", 2);
    let fx = Fixture::new(&[]);
    for d in [&a, &b] {
        fs::write(fx.dir.path().join(&d.name), d.xml()).unwrap();
    }
    let dir = fx.dir.path().display().to_string();
    let log = with_full_state_dir(
        &fx,
        &format!("\"$B\" hook a001 prepare begin - < {dir}/a001 2>/dev/null"),
        &format!(
            "\"$B\" hook b002 prepare begin - < {dir}/b002; \"$B\" hook a001 stopped end - < {dir}/a001"
        ),
    );
    // The hook claims nothing: the pass says what it recorded, once the
    // record is folded into a saved state. A record it could not drop is
    // named with the reason.
    assert!(!log.contains("recorded VM"), "{log}");
    assert!(!log.contains("forgot VM"), "{log}");
    assert!(
        log.contains("hook \"b002\" prepare begin: cannot spool the record"),
        "{log}"
    );
    assert!(
        log.contains("hook \"a001\" stopped end: cannot spool the record"),
        "{log}"
    );
}

#[test]
fn a_command_run_by_hand_reads_the_settings_file_as_the_service_does_regression() {
    // Commands run by hand (run, status, release, reload, ksm-restore) read
    // only their flags and environment: on a host whose settings file moves
    // the state, `ksm-balloon status` read the default path, which the
    // service and the hook never use. They now read the file as systemd's
    // EnvironmentFile= gives it to the service, the environment winning.
    let d = Dom::numbered("p", 1);
    let fx = Fixture::new(std::slice::from_ref(&d));
    let settings = fx.root.join("etc/sysconfig/ksm-balloon");
    fs::create_dir_all(settings.parent().unwrap()).unwrap();
    fs::write(
        &settings,
        "# moved, as an operator would\nKSM_BALLOON_STATE=/srv/kb/state.json\n",
    )
    .unwrap();
    let out = fx.run(&["run", "--json"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(fx.root.join("srv/kb/state.json").exists(), "{}", out.stderr);
    assert!(!fx.state_path().exists());
    let out = fx.run(&["status", "--json"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let status: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(status["vms"][0]["managed"], true, "{}", out.stdout);
    // what the environment sets wins over the file
    let out: common::Ran = fx
        .cmd()
        .env("KSM_BALLOON_STATE", "/srv/other/state.json")
        .args(["run", "--json"])
        .output()
        .unwrap()
        .into();
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(fx.root.join("srv/other/state.json").exists());
    // a file systemd refuses (not UTF-8) is ignored, and the command says so
    fs::write(&settings, b"KSM_BALLOON_STATE=/srv/\xff/state.json\n").unwrap();
    let out = fx.run(&["run", "--json"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(
        out.stderr.contains(&settings.display().to_string()),
        "{}",
        out.stderr
    );
    assert!(fx.state_path().exists());
}
