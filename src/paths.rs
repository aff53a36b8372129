//! Every host path ksm-balloon reads or writes is resolved under one
//! configurable root (`--root`, `/` on a real host; a fake tree in tests),
//! here.

use std::path::{Path, PathBuf};

/// Resolves an absolute host path under `root`.
pub fn under_root(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap_or(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_resolve_under_root() {
        assert_eq!(
            under_root(Path::new("/tmp/r"), Path::new("/var/lib/x/state.json")),
            PathBuf::from("/tmp/r/var/lib/x/state.json")
        );
        assert_eq!(
            under_root(Path::new("/"), Path::new("/sys/kernel/mm/ksm")),
            PathBuf::from("/sys/kernel/mm/ksm")
        );
    }
}
