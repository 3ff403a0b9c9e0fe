//! Helpers shared by the integration tests of `cohort::local`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A private (0700) scratch directory, removed when dropped, also when a
/// test fails.
pub struct Scratch(PathBuf);

impl std::ops::Deref for Scratch {
    type Target = PathBuf;
    fn deref(&self) -> &PathBuf {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A fresh scratch directory named after `test` and this process.
pub fn scratch(test: &str) -> Scratch {
    static N: AtomicUsize = AtomicUsize::new(0);
    let p = std::env::temp_dir().join(format!(
        "cohort-{test}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&p);
    std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o700)
        .create(&p)
        .unwrap();
    Scratch(p)
}
