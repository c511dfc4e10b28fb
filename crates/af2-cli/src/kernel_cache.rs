//! A persistent cache of compiled GPU kernels and autotune results, so that only the first run
//! on a machine pays for shader compilation.

use std::path::PathBuf;
use std::sync::OnceLock;

/// The directory [`configure`] set up, and whether it already held files then.
static CONFIGURED: OnceLock<Option<(PathBuf, bool)>> = OnceLock::new();

/// The cache directory in use (after [`configure`]) and whether it was warm at start.
pub fn configured_dir() -> Option<(PathBuf, bool)> {
    CONFIGURED.get().cloned().flatten()
}

/// [`cold_start_notice`] for this process, once [`configure`] has run (else `None`).
pub fn cold_start_notice_now() -> Option<String> {
    cold_start_notice(CONFIGURED.get()?.clone())
}

/// What to tell a user whose GPU run starts with no compiled kernels (`cache`: what
/// [`configured_dir`] returns), so that a first pass of minutes does not look like a hang;
/// `None` when the cache already holds kernels.
pub fn cold_start_notice(cache: Option<(PathBuf, bool)>) -> Option<String> {
    match cache {
        Some((_, true)) => None,
        Some((dir, false)) => Some(format!(
            "note: first GPU run with kernel cache {}: compiling and tuning kernels makes the \
             first prediction take minutes (77-192 s measured on an H100/H200); later runs \
             reuse them",
            dir.display()
        )),
        None => Some(
            "note: no kernel cache (AF2_KERNEL_CACHE=off, or no cache directory): every run \
             compiles and tunes its GPU kernels, minutes before the first prediction"
                .to_string(),
        ),
    }
}

/// Where compiled kernels are kept: `$AF2_KERNEL_CACHE`, else `$XDG_CACHE_HOME/af2/kernels`,
/// else `~/.cache/af2/kernels`, in a subdirectory for each build and its kernel settings
/// ([`namespace`]). `AF2_KERNEL_CACHE=off` disables the cache.
#[cfg_attr(not(feature = "wgpu"), allow(dead_code))]
pub fn cache_dir() -> Option<PathBuf> {
    match std::env::var_os("AF2_KERNEL_CACHE") {
        Some(value) if value == "off" || value == "0" => None,
        Some(value) if !value.is_empty() => Some(PathBuf::from(value)),
        _ => crate::weights::af2_cache_dir().map(|dir| dir.join("kernels")),
    }
}

/// Points CubeCL's compilation and autotune caches at [`cache_dir`]. Must run before the first
/// GPU device is created; a no-op in builds without a GPU backend. CubeCL's own environment
/// variables (`CUBECL_AUTOTUNE_LEVEL`, ...) still apply.
pub fn configure() {
    let _ = CONFIGURED.set(set_up());
}

fn set_up() -> Option<(PathBuf, bool)> {
    #[cfg(feature = "wgpu")]
    {
        use cubecl_runtime::config::{CubeClRuntimeConfig, RuntimeConfig, cache::CacheConfig};
        let base = cache_dir()?;
        let dir = base.join(namespace(&build_identity(), std::env::vars()));
        if let Err(err) = std::fs::create_dir_all(&dir) {
            eprintln!(
                "warning: kernel cache {} unusable ({err}); kernels will be compiled every run",
                dir.display()
            );
            return None;
        }
        let warm = std::fs::read_dir(&dir).is_ok_and(|mut entries| entries.next().is_some());
        mark_used(&dir);
        prune_namespaces(&base, KEPT_NAMESPACES);
        let mut config = CubeClRuntimeConfig::default();
        config.compilation.cache = true;
        config.environment.path = CacheConfig::Directory(dir.clone());
        CubeClRuntimeConfig::try_set(config.override_from_env()).then_some((dir, warm))
    }
    #[cfg(not(feature = "wgpu"))]
    {
        None
    }
}

/// `AF2_*` settings that change no GPU kernel (every other `AF2_*` variable is a kernel
/// setting and gets its own cache).
#[cfg_attr(not(feature = "wgpu"), allow(dead_code))]
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
#[cfg_attr(not(feature = "wgpu"), allow(dead_code))]
const KEPT_NAMESPACES: usize = 3;

/// File whose modification time is a subdirectory's last use.
const LAST_USE: &str = "last-use";

/// The cache subdirectory of a build (`build`: [`build_identity`]) under the kernel settings
/// among `vars`: kernels compiled and tuned by another build of af2, or under other `AF2_*`
/// kernel settings, are never read. A cache written by a run with other kernel settings was
/// followed by NaN predictions on an H100 (docs/PERFORMANCE.md, twenty-first session; the
/// cause inside CubeCL's cache was not found), and an upgrade must not meet the kernels of the
/// build before.
#[cfg_attr(not(feature = "wgpu"), allow(dead_code))]
fn namespace(build: &str, vars: impl IntoIterator<Item = (String, String)>) -> String {
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
#[cfg_attr(not(feature = "wgpu"), allow(dead_code))]
fn build_identity() -> String {
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
#[cfg_attr(not(feature = "wgpu"), allow(dead_code))]
fn mark_used(dir: &std::path::Path) {
    let _ = std::fs::write(dir.join(LAST_USE), b"");
}

/// Removes the cache subdirectories of `base` beyond the `keep` most recently used besides the
/// newest (the one in use); only names this module made are touched.
#[cfg_attr(not(feature = "wgpu"), allow(dead_code))]
fn prune_namespaces(base: &std::path::Path, keep: usize) {
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

/// An error ([`non_finite_message`]) where `prediction` has outputs holding NaN or infinities.
pub fn ensure_finite(
    prediction: &af2_model::predict::Prediction,
    what: &str,
    then: &str,
) -> anyhow::Result<()> {
    let non_finite = prediction.non_finite_outputs();
    if non_finite.is_empty() {
        Ok(())
    } else {
        anyhow::bail!(non_finite_message(what, &non_finite, then))
    }
}

/// The error for a prediction whose `outputs` came out non-finite (NaN or infinite), `then`
/// saying what the command did about it, with what to try where a kernel cache is in use: on an H100 such NaN came with a cache that an earlier
/// run with other kernel settings had written, and a fresh cache gave finite predictions
/// (docs/PERFORMANCE.md, twenty-first session).
fn non_finite_message(what: &str, outputs: &[&str], then: &str) -> String {
    non_finite_message_with(what, outputs, then, non_finite_hint())
}

/// [`non_finite_message`] with the hint given.
fn non_finite_message_with(
    what: &str,
    outputs: &[&str],
    then: &str,
    hint: Option<String>,
) -> String {
    let mut message = format!(
        "{what}: the prediction came out non-finite ({}); {then}",
        outputs.join(", ")
    );
    if let Some(hint) = hint {
        message.push_str("; ");
        message.push_str(&hint);
    }
    message
}

/// What to try after a non-finite GPU prediction, where a kernel cache is in use.
pub fn non_finite_hint() -> Option<String> {
    let (dir, _) = configured_dir()?;
    Some(format!(
        "if it recurs, rerun with AF2_KERNEL_CACHE=off or after removing the kernel cache {} \
         (NaN has been seen with a cache that a run of other kernel settings had written; such \
         runs now keep their own)",
        dir.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cold_start_notice_only_without_cached_kernels() {
        let dir = PathBuf::from("/tmp/af2-kernels");
        assert_eq!(cold_start_notice(Some((dir.clone(), true))), None);
        let cold = cold_start_notice(Some((dir, false))).expect("a cold cache is announced");
        assert!(cold.contains("/tmp/af2-kernels"), "{cold}");
        let off = cold_start_notice(None).expect("a missing cache is announced");
        assert!(off.contains("every run"), "{off}");
    }

    #[test]
    fn cache_dir_follows_environment() {
        // Environment variables are process-wide: this is the only test that sets them.
        unsafe { std::env::set_var("AF2_KERNEL_CACHE", "/tmp/af2-kernels-test") };
        assert_eq!(cache_dir(), Some(PathBuf::from("/tmp/af2-kernels-test")));
        unsafe { std::env::set_var("AF2_KERNEL_CACHE", "off") };
        assert_eq!(cache_dir(), None);
        unsafe { std::env::remove_var("AF2_KERNEL_CACHE") };
        let expected = crate::weights::af2_cache_dir().map(|dir| dir.join("kernels"));
        assert_eq!(cache_dir(), expected);
    }

    /// CubeCL keeps compiled kernels on disk only when `cubecl-server` is built with its
    /// `persistence` feature, which Burn's wgpu backend leaves off; without it every process
    /// recompiled all ~250 kernels (15 s before the first pass on an H200). Fails if the
    /// dependency that turns it on is dropped.
    #[cfg(feature = "wgpu")]
    #[test]
    fn compiled_kernels_have_a_persistent_store() {
        use cubecl_runtime::config::{CubeClRuntimeConfig, RuntimeConfig, cache::CacheConfig};
        let dir = tempfile::tempdir().unwrap();
        let mut config = CubeClRuntimeConfig::default();
        config.compilation.cache = true;
        config.environment.path = CacheConfig::Directory(dir.path().to_path_buf());
        // The configuration is process-wide: no other test of this binary sets it.
        assert!(
            CubeClRuntimeConfig::try_set(config),
            "CubeCL was configured before"
        );
        let store = cubecl_server::compiler::compilation_store::<u64, u64>("af2-test", "probe");
        assert!(
            store.is_some(),
            "no persistent store for compiled kernels: cubecl-server lacks `persistence`"
        );
    }

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

    #[test]
    fn non_finite_message_names_the_outputs_and_the_hint() {
        let message = non_finite_message_with("design_7", &["pLDDT", "PAE"], "not written", None);
        assert_eq!(
            message,
            "design_7: the prediction came out non-finite (pLDDT, PAE); not written"
        );
        let message = non_finite_message_with("x", &["pTM"], "skipped", Some("try Y".into()));
        assert!(message.ends_with("(pTM); skipped; try Y"), "{message}");
    }
}
