//! A persistent cache of compiled GPU kernels and autotune results, so that only the first run
//! on a machine pays for shader compilation.

use std::path::PathBuf;
use std::sync::OnceLock;

// Used by GPU builds only (the CPU backends compile no kernels); tested in every build.
#[cfg_attr(not(feature = "wgpu"), allow(dead_code))]
mod namespace;

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
/// else `~/.cache/af2/kernels`; a GPU run uses a subdirectory of it for its build and kernel
/// settings (`kernel_cache/namespace.rs`). `AF2_KERNEL_CACHE=off` disables the cache.
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
        use namespace::{KEPT_NAMESPACES, build_identity, mark_used, namespace, prune_namespaces};
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
/// saying what the command did about it, with what to try where a kernel cache is in use: on
/// an H100 such NaN came with a cache that an earlier run with other kernel settings had
/// written, and a fresh cache gave finite predictions (docs/PERFORMANCE.md, twenty-first
/// session).
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
