//! `cargo xtask kernel-stats`: the Vulkan driver's statistics for SPIR-V compute shaders
//! (registers per thread, binary size, shared memory, ...) through
//! VK_KHR_pipeline_executable_properties. We run it on the GPU machine to see the register
//! counts of our CubeCL kernels.
//!
//! The SPIR-V comes from an af2 binary built with the `kernel-dump` feature and run with
//! `CUBECL_DEBUG_PLIRON=<dir> AF2_KERNEL_CACHE=off`: it writes `<dir>/<kernel>/module.spv` for
//! every kernel it compiles. Pass `<dir>` (searched recursively for `*.spv`) or single files.
//!
//! Each module gets a pipeline layout derived from its own descriptor bindings (reflected in
//! `spirv`); specialization constants keep their defaults.

mod spirv;
mod vulkan;

use anyhow::{Context, Result, bail, ensure};
use std::path::{Path, PathBuf};

/// The command's flags (see `Command::KernelStats`).
pub struct Options {
    pub verbose: bool,
    pub no_robust_buffer_access: bool,
    pub reflect_only: bool,
}

/// Prints, per file, its path and then the driver's statistics (or with `reflect_only`, the
/// layout reflection derives). A file that fails prints its error and the run goes on; the
/// command fails only if no file could be processed or Vulkan cannot be set up.
pub fn run(paths: &[PathBuf], opts: &Options) -> Result<()> {
    let files = collect_files(paths);
    if files.is_empty() {
        bail!("no SPIR-V files found");
    }
    let ok = if opts.reflect_only {
        process_all(&files, reflect_file)
    } else {
        let ctx = vulkan::Context::new(opts.verbose, opts.no_robust_buffer_access)
            .context("Vulkan initialization failed")?;
        let ok = process_all(&files, |f| stats_file(&ctx, f, opts.verbose));
        eprintln!("kernel-stats: {ok} of {} files processed", files.len());
        ok
    };
    ensure!(
        ok > 0,
        "none of the {} SPIR-V files could be processed",
        files.len()
    );
    Ok(())
}

/// The files named and the `*.spv` files under the directories named, each directory sorted.
/// Paths that cannot be read are reported and skipped.
fn collect_files(paths: &[PathBuf]) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for path in paths {
        if let Err(e) = collect(path, &mut files) {
            eprintln!("kernel-stats: {}: {e}", path.display());
        }
    }
    files
}

fn collect(path: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    if !path.is_dir() {
        std::fs::metadata(path)?;
        out.push(path.to_path_buf());
        return Ok(());
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(path)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    entries.sort();
    for e in entries {
        if e.is_dir() {
            collect(&e, out)?;
        } else if e.extension().is_some_and(|x| x == "spv") {
            out.push(e);
        }
    }
    Ok(())
}

/// Runs `process` on every file, printing the errors; returns how many succeeded.
fn process_all(files: &[PathBuf], mut process: impl FnMut(&Path) -> Result<()>) -> usize {
    let mut ok = 0;
    for f in files {
        match process(f) {
            Ok(()) => ok += 1,
            Err(e) => println!("  error: {}: {e:#}", f.display()),
        }
    }
    ok
}

fn read(path: &Path) -> Result<(Vec<u32>, spirv::Reflection)> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let words = spirv::read_words(&bytes)?;
    let refl = spirv::reflect(&words)?;
    Ok((words, refl))
}

fn reflect_file(path: &Path) -> Result<()> {
    println!("\n{}", path.display());
    let (_, r) = read(path)?;
    println!("  entry point: {}", r.entry.to_string_lossy());
    for ((set, binding), (ty, count)) in &r.bindings {
        println!("  set {set} binding {binding}: {ty:?} x{count}");
    }
    println!(
        "  push constants: {}, LocalSizeId: {}",
        r.push_constants, r.local_size_id
    );
    for (id, v) in &r.spec_consts {
        println!("  spec constant {id} = {v}");
    }
    for n in &r.notes {
        println!("  note: {n}");
    }
    Ok(())
}

fn stats_file(ctx: &vulkan::Context, path: &Path, verbose: bool) -> Result<()> {
    println!("\n{}", path.display());
    let (words, r) = read(path)?;
    println!("  entry point: {}", r.entry.to_string_lossy());
    for n in &r.notes {
        println!("  note: {n}");
    }
    if r.local_size_id {
        println!(
            "  note: workgroup size comes from LocalSizeId; default specialization values are used"
        );
    }
    if !r.spec_consts.is_empty() {
        let list: Vec<String> = r
            .spec_consts
            .iter()
            .map(|(id, v)| format!("{id}={v}"))
            .collect();
        let n = list.len();
        println!(
            "  note: {n} specialization constants, compiled with their defaults: {}",
            list.join(" ")
        );
    }
    ctx.print_pipeline_statistics(&words, &r, verbose)
}
