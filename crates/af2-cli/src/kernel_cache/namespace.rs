//! The kernel cache's subdirectories: one for each build of af2 and each set of `AF2_*` kernel
//! settings, the least recently used beyond a few removed.

use std::path::{Path, PathBuf};

/// `AF2_*` settings that change no GPU kernel (every other `AF2_*` variable is a kernel
/// setting and gets its own cache).
const SETTINGS_OUTSIDE_KERNELS: [&str; 8] = [
    "AF2_KERNEL_CACHE",
    "AF2_WEIGHTS",
    "AF2_NO_PROGRESS",
    "AF2_PLOT_DIR",
    "AF2_GPU_TESTS",
    "AF2_EXPECT_MMA",
    "AF2_PAD_RESIDUES",
    "AF2_GRAPH",
];

/// Prefix of the cache's subdirectories, one for each build and kernel settings.
const NAMESPACE_PREFIX: &str = "build-";

/// Subdirectories kept besides the one in use; older ones (by last use) are removed.
pub(super) const KEPT_NAMESPACES: usize = 3;

/// File whose modification time is a subdirectory's last use.
const LAST_USE: &str = "last-use";

/// The cache subdirectory of a build (`build`: [`build_identity`]) under the kernel settings
/// among `vars`: kernels compiled and tuned by another build of af2, or under other `AF2_*`
/// kernel settings, are never read. A cache written by a run with other kernel settings was
/// followed by NaN predictions on an H100 (docs/PERFORMANCE.md, twenty-first session; the
/// cause inside CubeCL's cache was not found), and an upgrade must not meet the kernels of the
/// build before.
pub(super) fn namespace(build: &str, vars: impl IntoIterator<Item = (String, String)>) -> String {
    use std::hash::{Hash, Hasher};
    let mut settings: Vec<(String, String)> = vars
        .into_iter()
        .filter(|(name, _)| {
            name.starts_with("AF2_") && !SETTINGS_OUTSIDE_KERNELS.contains(&name.as_str())
        })
        .collect();
    settings.sort();
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (build, &settings).hash(&mut hasher);
    format!(
        "{NAMESPACE_PREFIX}{}-{:016x}",
        env!("CARGO_PKG_VERSION"),
        hasher.finish()
    )
}

/// What tells this build of af2 from another: its version and its executable's size and
/// modification time (a rebuild or reinstall gives a new cache).
pub(super) fn build_identity() -> String {
    let executable = std::env::current_exe()
        .and_then(std::fs::metadata)
        .map(|m| {
            let modified = m
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos());
            format!("{}:{modified}", m.len())
        })
        .unwrap_or_default();
    format!("{}:{executable}", env!("CARGO_PKG_VERSION"))
}

/// Records now as the last use of the cache subdirectory `dir`.
pub(super) fn mark_used(dir: &Path) {
    let _ = std::fs::write(dir.join(LAST_USE), b"");
}

/// Removes the cache subdirectories of `base` beyond the `keep` most recently used besides the
/// newest (the one in use); only names this module made are touched.
pub(super) fn prune_namespaces(base: &Path, keep: usize) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    let mut namespaces: Vec<(std::time::SystemTime, PathBuf)> = entries
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(NAMESPACE_PREFIX)
        })
        .map(|e| {
            let used = std::fs::metadata(e.path().join(LAST_USE))
                .and_then(|m| m.modified())
                .unwrap_or(std::time::UNIX_EPOCH);
            (used, e.path())
        })
        .collect();
    namespaces.sort_by_key(|(used, _)| std::cmp::Reverse(*used));
    for (_, stale) in namespaces.into_iter().skip(keep + 1) {
        let _ = std::fs::remove_dir_all(stale);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn kernel_settings_and_builds_get_their_own_cache() {
        let plain = namespace("0.1.0:1:2", vars(&[("HOME", "/root")]));
        assert!(plain.starts_with("build-"), "{plain}");
        // Settings that change no kernel, and other variables, share the cache.
        let outside = vars(&[
            ("AF2_KERNEL_CACHE", "/tmp/k"),
            ("AF2_PAD_RESIDUES", "16"),
            ("PATH", "/bin"),
        ]);
        assert_eq!(namespace("0.1.0:1:2", outside), plain);
        // A kernel setting, or another build, does not.
        let block = namespace("0.1.0:1:2", vars(&[("AF2_LINEAR_CUBES", "1056")]));
        assert_ne!(block, plain);
        assert_ne!(namespace("0.1.0:1:3", vars(&[])), plain);
        // The order of the environment does not matter.
        let ab = vars(&[("AF2_MMA_KEYS", "64"), ("AF2_MMA_PLANES", "4")]);
        let ba = vars(&[("AF2_MMA_PLANES", "4"), ("AF2_MMA_KEYS", "64")]);
        assert_eq!(namespace("b", ab), namespace("b", ba));
    }

    #[test]
    fn pruning_keeps_the_most_recently_used_caches() {
        let base = tempfile::tempdir().unwrap();
        let now = std::time::SystemTime::now();
        for (k, name) in ["build-a", "build-b", "build-c", "build-d"]
            .iter()
            .enumerate()
        {
            let dir = base.path().join(name);
            std::fs::create_dir(&dir).unwrap();
            let used = std::fs::File::create(dir.join(LAST_USE)).unwrap();
            used.set_modified(now - std::time::Duration::from_secs(60 * k as u64))
                .unwrap();
        }
        std::fs::create_dir(base.path().join("mine")).unwrap();
        prune_namespaces(base.path(), 2);
        let mut left: Vec<String> = std::fs::read_dir(base.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["build-a", "build-b", "build-c", "mine"]);
    }
}
