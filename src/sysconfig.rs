//! The settings file, `/etc/sysconfig/ksm-balloon`: plain `KEY=value`
//! lines that systemd (`EnvironmentFile=`) and `/bin/sh` both read. The
//! pass gets them from systemd as environment variables; the hook, which
//! libvirtd starts with a bare environment, reads the file itself with
//! [`parse`].

/// Where the settings file is, unless `KSM_BALLOON_CONFIG` names another.
pub const DEFAULT_PATH: &str = "/etc/sysconfig/ksm-balloon";

/// The state file's default path (`--state`, `KSM_BALLOON_STATE`).
pub const DEFAULT_STATE: &str = "/var/lib/ksm-balloon/state.json";

/// The `KEY=value` assignments of a settings file, in order. Blank lines,
/// comments and lines that are not assignments are skipped; an `export `
/// prefix is allowed; a value in matching single or double quotes loses
/// them. Pure.
pub fn parse(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line).trim_start();
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let valid_key = !key.is_empty()
            && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            && !key.as_bytes()[0].is_ascii_digit();
        if !valid_key {
            continue;
        }
        let value = value.trim();
        let unquoted = [b'"', b'\'']
            .iter()
            .find_map(|&q| {
                let b = value.as_bytes();
                (b.len() >= 2 && b[0] == q && b[b.len() - 1] == q)
                    .then(|| &value[1..value.len() - 1])
            })
            .unwrap_or(value);
        out.push((key.to_string(), unquoted.to_string()));
    }
    out
}

/// The last value `text` assigns to `key`.
pub fn get(text: &str, key: &str) -> Option<String> {
    parse(text)
        .into_iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assignments() {
        let text = "# comment\n\nKSM_BALLOON_STATE=/x/state.json\n  #KSM_BALLOON_SHARE=1.0\nexport KSM_BALLOON_ROOT='/r'\nKSM_BALLOON_LOG=\"debug\"\nnot an assignment\n1BAD=x\nKSM_BALLOON_STATE=/y/state.json\n";
        assert_eq!(
            parse(text),
            [
                ("KSM_BALLOON_STATE".to_string(), "/x/state.json".to_string()),
                ("KSM_BALLOON_ROOT".into(), "/r".into()),
                ("KSM_BALLOON_LOG".into(), "debug".into()),
                ("KSM_BALLOON_STATE".into(), "/y/state.json".into()),
            ]
        );
        assert_eq!(
            get(text, "KSM_BALLOON_STATE").as_deref(),
            Some("/y/state.json")
        );
        assert_eq!(get(text, "KSM_BALLOON_SHARE"), None);
        assert_eq!(get("A=\"\n", "A").as_deref(), Some("\""));
    }
}
