//! Error chains for log lines: `outer: inner: ...`, so the OS or libvirt
//! error that says why is never lost behind a context.

/// An error with its causes, `outer: inner: ...`, for one log line.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}
