//! The settings file, `/etc/sysconfig/ksm-balloon` (`/etc/default/ksm-balloon`
//! in the Debian package; see [`DEFAULT_PATH`]), read exactly as
//! systemd's `EnvironmentFile=` reads it. The pass gets its settings from
//! systemd as environment variables; the hook, which libvirtd starts with
//! a bare environment, reads the file itself with [`parse_bytes`]. Both
//! must see the same values, or the hook spools into a directory no pass
//! reads: so this is systemd's reader (`load_env_file()` in
//! `src/basic/env-file.c`, then the unit's environment clean-up), not a
//! shell's and not a simpler one.
//!
//! The rules, as systemd 252 (Debian 12, RHEL 9) applies them:
//!
//! - a line whose first non-blank character is `#` or `;` is a comment;
//!   a `#` later on a line is part of the value (no trailing comments);
//! - `KEY=value`: blanks around the key and before the value are dropped,
//!   and trailing blanks of an unquoted value; a line with no `=` is
//!   ignored;
//! - `'...'` quotes everything up to the next `'`, newlines included, with
//!   no escapes; `"..."` likewise up to the next unescaped `"`, where a
//!   backslash before `"`, `\`, `` ` `` or `$` stands for that character,
//!   a backslash before a newline joins the lines, and any other backslash
//!   is kept with the character after it;
//! - quoted and unquoted pieces join: `"a b"c` is `a bc`; a quote inside an
//!   unquoted piece is an ordinary character;
//! - unquoted, a backslash stands for the character after it (a blank
//!   kept, a quote taken literally), and a backslash at the end of a line
//!   joins the next line to the value;
//! - a comment line that ends in a backslash swallows the next line too
//!   (systemd before 254; from 254 it does not: keep comment lines free of
//!   trailing backslashes);
//! - the text ends at the first NUL byte; a key or value that is not UTF-8
//!   makes systemd refuse the whole file (ignored with `EnvironmentFile=-`,
//!   as the unit has it);
//! - then, as for every unit's environment: an assignment whose key is
//!   not a variable name (letters, digits, `_`, not starting with a digit;
//!   `export KEY=...` is not one) or whose value holds a control character
//!   other than tab and newline is dropped, and the last assignment of a
//!   key wins.

/// Where the settings file is, unless `KSM_BALLOON_CONFIG` names another:
/// `/etc/sysconfig/ksm-balloon` (the RPM's), or the path in
/// `KSM_BALLOON_DEFAULT_CONFIG` when the program was built with that
/// variable set. The Debian package builds with
/// `/etc/default/ksm-balloon` there (`make build CONFIGFILE=...` sets it,
/// and `make install` refuses a hook built for another file than the
/// unit's `EnvironmentFile=`), so the hook and the pass read one file.
pub const DEFAULT_PATH: &str = match option_env!("KSM_BALLOON_DEFAULT_CONFIG") {
    Some(path) => path,
    None => "/etc/sysconfig/ksm-balloon",
};

/// The state file's default path (`--state`, `KSM_BALLOON_STATE`).
pub const DEFAULT_STATE: &str = "/var/lib/ksm-balloon/state.json";

fn blank(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r')
}

fn newline(c: u8) -> bool {
    matches!(c, b'\n' | b'\r')
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    PreKey,
    Key,
    PreValue,
    Value,
    ValueEscape,
    Single,
    Double,
    DoubleEscape,
    Comment,
    CommentEscape,
}

/// A key and value as the file spells them, before the clean-up.
struct Raw {
    key: Vec<u8>,
    /// Where the key's trailing blanks start, if it has any.
    key_blank: Option<usize>,
    value: Vec<u8>,
    /// Where the unquoted value's trailing blanks start, if it has any.
    value_blank: Option<usize>,
}

impl Raw {
    fn new() -> Raw {
        Raw {
            key: Vec::new(),
            key_blank: None,
            value: Vec::new(),
            value_blank: None,
        }
    }

    /// The assignment, its trailing blanks cut (the value's only when
    /// `cut_value`); `Err` when either is not UTF-8.
    fn finish(mut self, cut_value: bool) -> Result<(String, String), String> {
        if let Some(n) = self.key_blank {
            self.key.truncate(n);
        }
        if cut_value {
            if let Some(n) = self.value_blank {
                self.value.truncate(n);
            }
        }
        let key = String::from_utf8(self.key).map_err(|e| {
            format!(
                "a key is not UTF-8: {:?}",
                String::from_utf8_lossy(e.as_bytes())
            )
        })?;
        let value = String::from_utf8(self.value)
            .map_err(|_| format!("the value of {key} is not UTF-8"))?;
        Ok((key, value))
    }
}

/// Every assignment systemd reads from the text, in order, before the
/// clean-up of [`parse_bytes`]. `Err`: systemd refuses the file.
// Longer than 100 lines on purpose: one state machine, one arm per state
// of systemd 252's `parse_env_file_internal()` in the same order, so the
// two can be read side by side; split, the byte-for-byte comparison that
// keeps them in step would be lost.
fn assignments(bytes: &[u8]) -> Result<Vec<(String, String)>, String> {
    let bytes = bytes.split(|&b| b == 0).next().unwrap_or_default();
    let mut out = Vec::new();
    let mut state = State::PreKey;
    let mut cur = Raw::new();
    for &c in bytes {
        match state {
            State::PreKey => {
                if c == b'#' || c == b';' {
                    state = State::Comment;
                } else if !blank(c) {
                    state = State::Key;
                    cur = Raw::new();
                    cur.key.push(c);
                }
            }
            State::Key => {
                if newline(c) {
                    // no `=` on the line: ignored
                    state = State::PreKey;
                } else if c == b'=' {
                    state = State::PreValue;
                    cur.value_blank = None;
                } else {
                    if !blank(c) {
                        cur.key_blank = None;
                    } else if cur.key_blank.is_none() {
                        cur.key_blank = Some(cur.key.len());
                    }
                    cur.key.push(c);
                }
            }
            State::PreValue => {
                if newline(c) {
                    state = State::PreKey;
                    out.push(std::mem::replace(&mut cur, Raw::new()).finish(false)?);
                } else if c == b'\'' {
                    state = State::Single;
                } else if c == b'"' {
                    state = State::Double;
                } else if c == b'\\' {
                    state = State::ValueEscape;
                } else if !blank(c) {
                    state = State::Value;
                    cur.value.push(c);
                }
            }
            State::Value => {
                if newline(c) {
                    state = State::PreKey;
                    out.push(std::mem::replace(&mut cur, Raw::new()).finish(true)?);
                } else if c == b'\\' {
                    state = State::ValueEscape;
                    cur.value_blank = None;
                } else {
                    if !blank(c) {
                        cur.value_blank = None;
                    } else if cur.value_blank.is_none() {
                        cur.value_blank = Some(cur.value.len());
                    }
                    cur.value.push(c);
                }
            }
            State::ValueEscape => {
                state = State::Value;
                // an escaped newline joins the lines
                if !newline(c) {
                    cur.value.push(c);
                }
            }
            State::Single => {
                if c == b'\'' {
                    state = State::PreValue;
                } else {
                    cur.value.push(c);
                }
            }
            State::Double => {
                if c == b'"' {
                    state = State::PreValue;
                } else if c == b'\\' {
                    state = State::DoubleEscape;
                } else {
                    cur.value.push(c);
                }
            }
            State::DoubleEscape => {
                state = State::Double;
                if matches!(c, b'"' | b'\\' | b'`' | b'$') {
                    cur.value.push(c);
                } else if c != b'\n' {
                    cur.value.extend([b'\\', c]);
                }
            }
            State::Comment => {
                if c == b'\\' {
                    state = State::CommentEscape;
                } else if newline(c) {
                    state = State::PreKey;
                }
            }
            // systemd 252: the character after a comment's backslash,
            // a newline included, is still the comment's.
            State::CommentEscape => state = State::Comment,
        }
    }
    match state {
        State::PreValue
        | State::ValueEscape
        | State::Single
        | State::Double
        | State::DoubleEscape => out.push(cur.finish(false)?),
        State::Value => out.push(cur.finish(true)?),
        State::PreKey | State::Key | State::Comment | State::CommentEscape => {}
    }
    Ok(out)
}

/// A variable name as systemd takes one: ASCII letters, digits and `_`,
/// not starting with a digit.
pub fn valid_name(key: &str) -> bool {
    !key.is_empty()
        && !key.as_bytes()[0].is_ascii_digit()
        && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// A value systemd puts into a unit's environment: no control character
/// but tab and newline.
fn valid_value(value: &str) -> bool {
    !value
        .chars()
        .any(|c| (c.is_ascii_control()) && c != '\t' && c != '\n')
}

/// The settings file's assignments as systemd passes them to the unit:
/// parsed by its rules (see the module), invalid assignments dropped, the
/// last of each key kept (in the place of its first). `Err` when systemd
/// would refuse the whole file (a key or value that is not UTF-8). Pure.
pub fn parse_bytes(bytes: &[u8]) -> Result<Vec<(String, String)>, String> {
    let mut out: Vec<(String, String)> = Vec::new();
    for (k, v) in assignments(bytes)? {
        if !valid_name(&k) || !valid_value(&v) {
            continue;
        }
        match out.iter_mut().find(|(key, _)| *key == k) {
            Some(slot) => slot.1 = v,
            None => out.push((k, v)),
        }
    }
    Ok(out)
}

/// [`parse_bytes`] of a text (which is UTF-8 throughout, so never
/// refused).
pub fn parse(text: &str) -> Vec<(String, String)> {
    parse_bytes(text.as_bytes()).unwrap_or_default()
}

/// The value `text` gives `key`, as systemd would set it.
pub fn get(text: &str, key: &str) -> Option<String> {
    lookup(&parse(text), key)
}

/// The value `assignments` give `key`.
pub fn lookup(assignments: &[(String, String)], key: &str) -> Option<String> {
    assignments
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.clone())
}

/// What a command run by hand takes from the settings file (`file`, as
/// [`parse_bytes`] read it): each `KSM_BALLOON_*` assignment whose
/// variable `env` does not set, or sets empty, in the file's order, so the
/// command sees what the service gets from systemd's `EnvironmentFile=`,
/// and what the environment sets wins (the service's own environment,
/// which already holds the file's, or an operator's `KSM_BALLOON_X=...
/// ksm-balloon status`), as it does for the hook. `KSM_BALLOON_CONFIG` is
/// never taken from the file: it names the file.
pub fn unset_in(
    file: &[(String, String)],
    env: impl Fn(&str) -> Option<String>,
) -> Vec<(String, String)> {
    file.iter()
        .filter(|(k, _)| k.starts_with("KSM_BALLOON_") && k != "KSM_BALLOON_CONFIG")
        .filter(|(k, _)| env(k).map_or(true, |v| v.is_empty()))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_takes_from_the_file_only_what_its_environment_leaves_unset() {
        let file = parse(
            "KSM_BALLOON_STATE=/srv/kb/state.json\nKSM_BALLOON_SPLIT=demand\nKSM_BALLOON_LOG=debug\nKSM_BALLOON_CONFIG=/elsewhere\nPATH=/nowhere\nKSM_BALLOON_DEADBAND=8M\n",
        );
        let env = |k: &str| match k {
            "KSM_BALLOON_SPLIT" => Some("equal".to_string()),
            "KSM_BALLOON_LOG" => Some(String::new()),
            _ => None,
        };
        let pair = |k: &str, v: &str| (k.to_string(), v.to_string());
        assert_eq!(
            unset_in(&file, env),
            [
                pair("KSM_BALLOON_STATE", "/srv/kb/state.json"),
                pair("KSM_BALLOON_LOG", "debug"),
                pair("KSM_BALLOON_DEADBAND", "8M"),
            ]
        );
        assert!(unset_in(&[], |_: &str| None).is_empty());
    }

    const K: &str = "KSM_BALLOON_STATE";

    /// What systemd sets `KSM_BALLOON_STATE` to from `text`.
    fn state(text: &str) -> Option<String> {
        get(text, K)
    }

    #[test]
    fn plain_assignments_comments_and_the_last_one_wins() {
        let text = "# comment\n\nKSM_BALLOON_STATE=/x/state.json\n  #KSM_BALLOON_SHARE=1.0\n;KSM_BALLOON_SPLIT=demand\nKSM_BALLOON_LOG=\"debug\"\nnot an assignment\n1BAD=x\nKSM_BALLOON_STATE=/y/state.json\n";
        assert_eq!(
            parse(text),
            [
                ("KSM_BALLOON_STATE".to_string(), "/y/state.json".to_string()),
                ("KSM_BALLOON_LOG".into(), "debug".into()),
            ]
        );
        assert_eq!(get(text, "KSM_BALLOON_SHARE"), None);
    }

    /// Where systemd and the hook's old reader (trimmed `KEY=value` lines,
    /// `export ` allowed, one pair of matching quotes around the whole
    /// value taken off) disagreed: the hook then spooled into a directory
    /// no pass reads. Each row: the file's line(s), what systemd sets,
    /// and what the old reader made of it.
    #[test]
    fn the_cases_where_the_old_reader_and_systemd_disagreed_regression() {
        let rows: &[(&str, Option<&str>, Option<&str>)] = &[
            // `export` is not part of systemd's syntax: the key is
            // "export KSM_BALLOON_STATE", not a variable name
            ("export KSM_BALLOON_STATE=/x", None, Some("/x")),
            // blanks around the `=`
            ("KSM_BALLOON_STATE = /x", Some("/x"), None),
            // a quoted piece joined to an unquoted one
            (
                "KSM_BALLOON_STATE=\"/a b\"/c",
                Some("/a b/c"),
                Some("\"/a b\"/c"),
            ),
            ("KSM_BALLOON_STATE='/a'/b", Some("/a/b"), Some("'/a'/b")),
            // escapes inside double quotes
            (
                "KSM_BALLOON_STATE=\"/x\\\"y\"",
                Some("/x\"y"),
                Some("/x\\\"y"),
            ),
            ("KSM_BALLOON_STATE=\"/x\\$y\"", Some("/x$y"), Some("/x\\$y")),
            (
                "KSM_BALLOON_STATE=\"/x\\ny\"",
                Some("/x\\ny"),
                Some("/x\\ny"),
            ),
            // no escapes inside single quotes
            ("KSM_BALLOON_STATE='/x\\y'", Some("/x\\y"), Some("/x\\y")),
            // unquoted escapes: a blank kept, a quote taken literally
            ("KSM_BALLOON_STATE=/a\\ b", Some("/a b"), Some("/a\\ b")),
            (
                "KSM_BALLOON_STATE=\\\"/x\\\"",
                Some("\"/x\""),
                Some("\\\"/x\\\""),
            ),
            ("KSM_BALLOON_STATE=/x\\ ", Some("/x "), Some("/x\\")),
            // a line continued
            (
                "KSM_BALLOON_STATE=/var/lib/\\\nk/state.json",
                Some("/var/lib/k/state.json"),
                Some("/var/lib/\\"),
            ),
            (
                "KSM_BALLOON_STATE=\"/var/lib/\\\nk/state.json\"",
                Some("/var/lib/k/state.json"),
                Some("\"/var/lib/\\"),
            ),
            // a quoted value over two lines keeps its newline
            ("KSM_BALLOON_STATE='/a\nb'", Some("/a\nb"), Some("'/a")),
            // a quote that is never closed runs to the end of the file
            (
                "KSM_BALLOON_STATE=\"/x\nKSM_BALLOON_LOG=debug",
                Some("/x\nKSM_BALLOON_LOG=debug"),
                Some("\"/x"),
            ),
            // a comment ending in a backslash swallows the next line
            ("# moved:\\\nKSM_BALLOON_STATE=/x", None, Some("/x")),
            // a carriage return in a quoted value is a control character:
            // systemd drops the assignment
            ("KSM_BALLOON_STATE=\"/x\r\"", None, Some("/x\r")),
            // nothing after a NUL byte is read
            ("KSM_BALLOON_STATE=/x\0y", Some("/x"), Some("/x\0y")),
        ];
        // (The third column was checked against the old reader.)
        for &(text, systemd, _old) in rows {
            assert_eq!(state(text).as_deref(), systemd, "{text:?}");
        }
    }

    #[test]
    fn cases_where_they_always_agreed() {
        for (text, want) in [
            ("KSM_BALLOON_STATE=/x", Some("/x")),
            ("  KSM_BALLOON_STATE=/x  \t", Some("/x")),
            ("KSM_BALLOON_STATE='/x y'", Some("/x y")),
            ("KSM_BALLOON_STATE=\"/x y\"", Some("/x y")),
            (
                "KSM_BALLOON_STATE=/x # not a comment",
                Some("/x # not a comment"),
            ),
            ("KSM_BALLOON_STATE=/x\r\n", Some("/x")),
            ("KSM_BALLOON_STATE=", Some("")),
            ("KSM_BALLOON_STATE", None),
            ("#KSM_BALLOON_STATE=/x", None),
            (";KSM_BALLOON_STATE=/x", None),
        ] {
            assert_eq!(state(text).as_deref(), want, "{text:?}");
        }
    }

    #[test]
    fn a_key_or_value_that_is_not_utf8_makes_systemd_refuse_the_file() {
        assert!(parse_bytes(b"KSM_BALLOON_STATE=/x\xff\n").is_err());
        assert!(parse_bytes(b"K\xff=1\nKSM_BALLOON_STATE=/x\n").is_err());
        // in a comment it does no harm
        assert_eq!(
            parse_bytes(b"# caf\xe9\nKSM_BALLOON_STATE=/x\n").unwrap(),
            [(K.to_string(), "/x".to_string())]
        );
    }

    #[test]
    fn the_shipped_file_sets_nothing() {
        let text = include_str!("../packaging/sysconfig");
        assert_eq!(parse_bytes(text.as_bytes()).unwrap(), []);
    }
}
