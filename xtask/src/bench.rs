//! `cargo xtask bench-cpu`: seconds per prediction on the CPU reference backend.
//!
//! The case matches the GPU issue's benchmark: single sequence plus one template, R recycles.
//! Weights come from any params file (their widths set the model); features are synthetic but
//! fully valid (every mask on), so every path is exercised. Timing is wall clock around the
//! forward pass after one warm-up pass at the smallest length.

use std::path::Path;
use std::time::Instant;

use anyhow::Result;

use af2_io::npz::NdArray;
use af2_model::features::{Features, TemplateFeatures};
use af2_model::outputs::to_host;
use af2_tests::{build_model, reference_device};

fn arr(shape: Vec<usize>, data: Vec<f32>) -> NdArray<f32> {
    NdArray { shape, data }
}

/// A single-sequence, one-template feature set of length `n` (ideal-ish extended backbone).
pub fn synthetic_features(n: usize) -> Features {
    let aatype: Vec<i64> = (0..n).map(|i| (i * 7 % 20) as i64).collect();
    let mut target_feat = vec![0.0f32; n * 22];
    let mut msa_feat = vec![0.0f32; n * 49];
    for (i, &a) in aatype.iter().enumerate() {
        target_feat[i * 22 + a as usize + 1] = 1.0;
        msa_feat[i * 49 + a as usize] = 1.0;
        msa_feat[i * 49 + 25 + a as usize] = 1.0;
    }
    let mut positions = vec![0.0f32; n * 37 * 3];
    let mut masks = vec![0.0f32; n * 37];
    for i in 0..n {
        for atom in 0..5 {
            let p = &mut positions[(i * 37 + atom) * 3..(i * 37 + atom) * 3 + 3];
            p[0] = 3.8 * i as f32 + 0.5 * atom as f32;
            p[1] = (atom as f32 * 1.3).sin() * 1.4;
            p[2] = (atom as f32 * 0.7).cos() * 1.4 + 4.0;
            masks[i * 37 + atom] = 1.0;
        }
    }
    let pseudo_beta: Vec<f32> = (0..n)
        .flat_map(|i| positions[(i * 37 + 3) * 3..(i * 37 + 3) * 3 + 3].to_vec())
        .collect();
    Features {
        aatype: aatype.clone(),
        residue_index: (0..n as i64).collect(),
        seq_mask: arr(vec![n], vec![1.0; n]),
        target_feat: arr(vec![n, 22], target_feat),
        msa_feat: arr(vec![1, n, 49], msa_feat),
        msa_mask: arr(vec![1, n], vec![1.0; n]),
        extra_feat: arr(vec![1, n, 25], vec![0.0; n * 25]),
        extra_msa_mask: arr(vec![1, n], vec![0.0; n]),
        templates: Some(TemplateFeatures {
            aatype: NdArray {
                shape: vec![1, n],
                data: aatype,
            },
            all_atom_positions: arr(vec![1, n, 37, 3], positions),
            all_atom_masks: arr(vec![1, n, 37], masks),
            mask: arr(vec![1], vec![1.0]),
            pseudo_beta: arr(vec![1, n, 3], pseudo_beta),
            pseudo_beta_mask: arr(vec![1, n], vec![1.0; n]),
        }),
    }
}

/// Prints seconds per prediction for each length.
pub fn run(params: &Path, lengths: &[usize], recycles: usize) -> Result<()> {
    let device = reference_device();
    let weights = af2_io::weights::load_weights(params)?;
    let model = build_model(&weights, &device)?;
    let d = &weights.dims;
    println!(
        "CPU reference (ndarray), weights {} (c_m {}, c_z {}, {} Evoformer blocks), {} recycles, {} threads",
        params.display(),
        d.msa_channel,
        d.pair_channel,
        d.evoformer_blocks,
        recycles,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    let warm = synthetic_features(lengths.iter().copied().min().unwrap_or(16).min(16));
    let _ = to_host(model.forward_recycled(&[warm], None, &device).pair);
    println!("{:>6} {:>12} {:>14}", "L", "passes", "s/prediction");
    for &n in lengths {
        let features = vec![synthetic_features(n); recycles + 1];
        let start = Instant::now();
        let out = model.forward_recycled(&features, None, &device);
        let _ = to_host(out.structure.final_atom37);
        println!(
            "{n:>6} {:>12} {:>14.2}",
            recycles + 1,
            start.elapsed().as_secs_f64()
        );
    }
    Ok(())
}
