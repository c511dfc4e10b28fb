//! The CubeCL source of the scalar attention kernel and its combine pass; see the parent
//! module's documentation.

use super::{F4, KEY_TILE, PREFETCH_BIAS, SUB};
use cubecl::prelude::*;

/// Offset of batch row `b`'s key mask (row 0 when the mask `[1, K]` is shared by all rows).
#[cube]
pub(crate) fn key_mask_base<M: Float>(key_mask: &Tensor<M>, b: usize) -> usize {
    let mut mask_row = b;
    if key_mask.shape(0) == 1 {
        mask_row = 0;
    }
    mask_row * key_mask.stride(0)
}

/// The logit a key takes in place of its score: 0 for a valid key (keep the score), -1e9 for
/// a masked one (AlphaFold's value: a fully masked row gets uniform weights), -3e38 past K
/// (weight 0).
#[cube]
pub(crate) fn masked_key_logit<M: Float>(
    key_mask: &Tensor<M>,
    mask_base: usize,
    key: usize,
    k_len: usize,
) -> f32 {
    let mut fill = f32::new(-3.0e38);
    if key < k_len {
        fill = 0.0f32;
        if key_mask[mask_base + key * key_mask.stride(1)] == M::new(0.0f32) {
            fill = -1.0e9f32;
        }
    }
    fill
}

/// Channels `4 i ..` of `key` (at `base + key * row_stride`) as f32, zero past K and past
/// `dim`.
#[allow(clippy::too_many_arguments)]
#[cube]
fn load_key_vector<F: Float>(
    x: &Tensor<F>,
    base: usize,
    row_stride: usize,
    channel_stride: usize,
    key: usize,
    k_len: usize,
    i: usize,
    #[comptime] dim: usize,
) -> F4 {
    let mut vec = F4::new(0.0f32);
    if key < k_len {
        let at = base + key * row_stride;
        #[unroll]
        for x4 in 0..4 {
            let ch = i * 4 + x4;
            if ch < dim {
                vec.insert(x4, f32::cast_from(x[at + ch * channel_stride]));
            }
        }
    }
    vec
}

/// The bias of query `row` and `key` as f32 (rows from `base`), 0 outside [Q, K].
#[allow(clippy::too_many_arguments)]
#[cube]
fn bias_value<Bt: Float>(
    bias: &Tensor<Bt>,
    base: usize,
    row_stride: usize,
    key_stride: usize,
    row: usize,
    key: usize,
    q_len: usize,
    k_len: usize,
) -> f32 {
    let mut value = f32::new(0.0);
    if row < q_len && key < k_len {
        value = f32::cast_from(bias[base + row * row_stride + key * key_stride]);
    }
    value
}

/// The kernel; see the module documentation. Cube `CUBE_POS` computes query rows
/// `q_tile * threads * rows ..` of head `h`, batch row `b`, over key tiles
/// `split * tiles_per_split ..`, with `CUBE_POS = ((b * H + h) * q_tiles + q_tile) * splits +
/// split`. Unit `t` owns rows `r * threads + t` of the query tile.
///
/// Without `stats`, `out` is the `[B, H, Q, Cv]` result. With it (split keys), `out` is the
/// unnormalised `[splits * B * H * Q, Cv]` accumulator and `stats` the `[.., 2]` running max
/// and sum of each row and split, for [`combine_kernel`].
#[allow(clippy::too_many_arguments)]
#[cube(launch_unchecked, address_type = "dynamic")]
pub(super) fn attention_kernel<F: Float, M: Float, Bt: Float, O: Float>(
    q: &Tensor<F>,
    k: &Tensor<F>,
    v: &Tensor<F>,
    key_mask: &Tensor<M>,
    bias: ComptimeOption<&Tensor<Bt>>,
    out: &mut Tensor<O>,
    stats: ComptimeOption<&mut Tensor<O>>,
    q_tiles: usize,
    splits: usize,
    tiles_per_split: usize,
    #[comptime] c_dim: usize,
    #[comptime] cv_dim: usize,
    #[comptime] threads: usize,
    #[comptime] rows: usize,
    #[comptime] has_bias: bool,
    #[define(F, M, Bt, O)] _dtypes: [ElemType; 4],
) {
    let c4 = comptime!(c_dim.div_ceil(4));
    let cv4 = comptime!(cv_dim.div_ceil(4));
    let block_rows = comptime!(threads * rows);
    // Odd pitch: units of a warp read one column of the bias tile without bank conflicts.
    let bias_pitch = comptime!(KEY_TILE + 1);
    let bias_smem = comptime!(if has_bias { block_rows * bias_pitch } else { 1 });

    let batch = q.shape(0);
    let heads = q.shape(1);
    let q_len = q.shape(2);
    let k_len = k.shape(2);
    let cube = CUBE_POS;
    if cube >= q_tiles * heads * batch * splits {
        terminate!();
    }
    let split = cube % splits;
    let rest = cube / splits;
    let q_tile = rest % q_tiles;
    let bh = rest / q_tiles;
    let h = bh % heads;
    let b = bh / heads;
    let t = UNIT_POS_X as usize;
    let row0 = q_tile * block_rows;

    // This unit's query rows (zero-padded to whole vectors) and accumulators, in f32.
    let mut q_reg = Array::<F4>::new(comptime!(rows * c4));
    let mut acc = Array::<F4>::new(comptime!(rows * cv4));
    let mut m_run = Array::<f32>::new(rows);
    let mut l_run = Array::<f32>::new(rows);
    let q_base = b * q.stride(0) + h * q.stride(1);
    #[unroll]
    for r in 0..rows {
        let mut row = row0 + r * threads + t;
        if row >= q_len {
            row = q_len - 1;
        }
        let base = q_base + row * q.stride(2);
        #[unroll]
        for i in 0..c4 {
            let mut vec = F4::new(0.0f32);
            #[unroll]
            for x in 0..4 {
                if comptime!(i * 4 + x < c_dim) {
                    vec.insert(x, f32::cast_from(q[base + (i * 4 + x) * q.stride(3)]));
                }
            }
            q_reg[r * c4 + i] = vec;
        }
        #[unroll]
        for i in 0..cv4 {
            acc[r * cv4 + i] = F4::new(0.0f32);
        }
        // Below any logit (masked ones are -1e9): the first rescale factor is exp(-huge) = 0.
        m_run[r] = -3.0e38f32;
        l_run[r] = 0.0f32;
    }

    let mut k_tile = Shared::<[F4]>::new_slice(comptime!(KEY_TILE * c4));
    let mut v_tile = Shared::<[F4]>::new_slice(comptime!(KEY_TILE * cv4));
    // Per key of the tile: 0 for a valid key, else the logit it takes: -1e9 for a masked key
    // (AlphaFold's value, so a fully masked row gets uniform weights), -3e38 past K (weight 0).
    let mut key_fill = Shared::<[f32]>::new_slice(KEY_TILE);
    let mut bias_tile = Shared::<[f32]>::new_slice(bias_smem);
    let mut scores = Array::<f32>::new(comptime!(rows * SUB));
    let mut dots = Array::<F4>::new(rows);

    let k_base = b * k.stride(0) + h * k.stride(1);
    let v_base = b * v.stride(0) + h * v.stride(1);
    let mask_base = key_mask_base(key_mask, b);
    // Strides and offsets read once: a read per element inside the tile loop is a
    // metadata load per element (2.5x slower in the tensor-core kernel on an H200).
    let (k_row_stride, k_ch_stride) = (k.stride(2), k.stride(3));
    let (v_row_stride, v_ch_stride) = (v.stride(2), v.stride(3));
    let mut bias_base = 0;
    let mut bias_row_stride = 0;
    let mut bias_key_stride = 0;
    #[comptime]
    if let ComptimeOption::Some(bias) = &bias {
        let group = b / (batch / bias.shape(0));
        bias_base = group * bias.stride(0) + h * bias.stride(1);
        bias_row_stride = bias.stride(2);
        bias_key_stride = bias.stride(3);
    }

    let tile_begin = split * tiles_per_split;
    let mut tile_end = tile_begin + tiles_per_split;
    let num_tiles = k_len.div_ceil(KEY_TILE);
    if tile_end > num_tiles {
        tile_end = num_tiles;
    }
    // Step `s` issues the global loads of tile `s` into registers, computes tile `s - 1`
    // from shared memory while they are in flight, then stores tile `s` to shared memory.
    // The bias tile is prefetched too where it fits in 64 registers a unit (rows <= 2).
    let k_steps = comptime!((KEY_TILE * c4).div_ceil(threads));
    let v_steps = comptime!((KEY_TILE * cv4).div_ceil(threads));
    let fill_steps = comptime!(KEY_TILE.div_ceil(threads));
    let prefetch_bias = comptime!(has_bias && rows * KEY_TILE <= PREFETCH_BIAS);
    // 0: the bias is loaded when it is stored.
    let bias_steps = comptime!(if prefetch_bias { rows * KEY_TILE } else { 0 });
    let mut k_next = Array::<F4>::new(k_steps);
    let mut v_next = Array::<F4>::new(v_steps);
    let mut fill_next = Array::<f32>::new(fill_steps);
    let mut bias_next = Array::<f32>::new(comptime!(bias_steps.max(1)));
    for step in tile_begin..tile_end + 1 {
        if step < tile_end {
            let key0 = step * KEY_TILE;
            // K and V (zeros past K and past C / Cv), unrolled so the loads are in flight
            // together.
            #[unroll]
            for s in 0..k_steps {
                let e = t + s * threads;
                k_next[s] = load_key_vector(
                    k,
                    k_base,
                    k_row_stride,
                    k_ch_stride,
                    key0 + e / c4,
                    k_len,
                    e % c4,
                    c_dim,
                );
            }
            #[unroll]
            for s in 0..v_steps {
                let e = t + s * threads;
                v_next[s] = load_key_vector(
                    v,
                    v_base,
                    v_row_stride,
                    v_ch_stride,
                    key0 + e / cv4,
                    k_len,
                    e % cv4,
                    cv_dim,
                );
            }
            #[unroll]
            for s in 0..fill_steps {
                fill_next[s] = masked_key_logit(key_mask, mask_base, key0 + t + s * threads, k_len);
            }
            #[comptime]
            if let ComptimeOption::Some(bias) = bias {
                #[unroll]
                for u in 0..bias_steps {
                    let e = t + u * threads;
                    bias_next[u] = bias_value(
                        bias,
                        bias_base,
                        bias_row_stride,
                        bias_key_stride,
                        row0 + e / KEY_TILE,
                        key0 + e % KEY_TILE,
                        q_len,
                        k_len,
                    );
                }
            }
        }
        if step > tile_begin {
            let key0 = (step - 1) * KEY_TILE;
            let mut tile_keys = k_len - key0;
            if tile_keys > KEY_TILE {
                tile_keys = KEY_TILE;
            }
            let subs = tile_keys.div_ceil(SUB);
            for sub in 0..subs {
                let j0 = sub * SUB;
                // Logits of SUB keys for every row.
                #[unroll]
                for jj in 0..SUB {
                    let j = j0 + jj;
                    #[unroll]
                    for r in 0..rows {
                        dots[r] = F4::new(0.0f32);
                    }
                    #[unroll]
                    for i in 0..c4 {
                        let kv = k_tile[j * c4 + i];
                        #[unroll]
                        for r in 0..rows {
                            dots[r] += q_reg[r * c4 + i] * kv;
                        }
                    }
                    let fill = key_fill[j];
                    #[unroll]
                    for r in 0..rows {
                        let d = dots[r];
                        let mut logit = d.extract(0usize)
                            + d.extract(1usize)
                            + d.extract(2usize)
                            + d.extract(3usize);
                        if comptime!(has_bias) {
                            logit += bias_tile[(r * threads + t) * bias_pitch + j];
                        }
                        scores[r * SUB + jj] = select(fill == 0.0f32, logit, fill);
                    }
                }
                // Online softmax: new running max, rescale, weights.
                #[unroll]
                for r in 0..rows {
                    let m_old = m_run[r];
                    let mut m_new = m_old;
                    #[unroll]
                    for jj in 0..SUB {
                        m_new = m_new.max(scores[r * SUB + jj]);
                    }
                    let scale = (m_old - m_new).exp();
                    m_run[r] = m_new;
                    let mut l = l_run[r] * scale;
                    let scale4 = F4::new(scale);
                    #[unroll]
                    for i in 0..cv4 {
                        acc[r * cv4 + i] *= scale4;
                    }
                    #[unroll]
                    for jj in 0..SUB {
                        let p = (scores[r * SUB + jj] - m_new).exp();
                        scores[r * SUB + jj] = p;
                        l += p;
                    }
                    l_run[r] = l;
                }
                // acc += p v.
                #[unroll]
                for jj in 0..SUB {
                    let j = j0 + jj;
                    #[unroll]
                    for i in 0..cv4 {
                        let vv = v_tile[j * cv4 + i];
                        #[unroll]
                        for r in 0..rows {
                            acc[r * cv4 + i] += vv * F4::new(scores[r * SUB + jj]);
                        }
                    }
                }
            }
        }
        // Tile `step - 1` is consumed: its shared tiles may be overwritten.
        sync_cube();
        if step < tile_end {
            let key0 = step * KEY_TILE;
            #[unroll]
            for s in 0..k_steps {
                let e = t + s * threads;
                if e < comptime!(KEY_TILE * c4) {
                    k_tile[e] = k_next[s];
                }
            }
            #[unroll]
            for s in 0..v_steps {
                let e = t + s * threads;
                if e < comptime!(KEY_TILE * cv4) {
                    v_tile[e] = v_next[s];
                }
            }
            #[unroll]
            for s in 0..fill_steps {
                let e = t + s * threads;
                if e < KEY_TILE {
                    key_fill[e] = fill_next[s];
                }
            }
            #[comptime]
            if let ComptimeOption::Some(bias) = bias {
                // block_rows * KEY_TILE = threads * rows * KEY_TILE: rows * KEY_TILE a unit.
                #[unroll]
                for u in 0..comptime!(rows * KEY_TILE) {
                    let e = t + u * threads;
                    let row_local = e / KEY_TILE;
                    let j = e % KEY_TILE;
                    if comptime!(prefetch_bias) {
                        bias_tile[row_local * bias_pitch + j] = bias_next[u];
                    } else {
                        bias_tile[row_local * bias_pitch + j] = bias_value(
                            bias,
                            bias_base,
                            bias_row_stride,
                            bias_key_stride,
                            row0 + row_local,
                            key0 + j,
                            q_len,
                            k_len,
                        );
                    }
                }
            }
        }
        sync_cube();
    }

    #[comptime]
    match stats {
        ComptimeOption::None => {
            let out_base = b * out.stride(0) + h * out.stride(1);
            let out_stride = out.stride(3);
            #[unroll]
            for r in 0..rows {
                let row = row0 + r * threads + t;
                if row < q_len {
                    // l >= 1: the running max itself contributes exp(0).
                    let inv = 1.0f32 / l_run[r];
                    let base = out_base + row * out.stride(2);
                    #[unroll]
                    for i in 0..cv4 {
                        let a = acc[r * cv4 + i];
                        #[unroll]
                        for x in 0..4 {
                            if comptime!(i * 4 + x < cv_dim) {
                                out[base + (i * 4 + x) * out_stride] =
                                    O::cast_from(a.extract(x) * inv);
                            }
                        }
                    }
                }
            }
        }
        ComptimeOption::Some(stats) => {
            let out_stride = out.stride(1);
            let stats_stride = stats.stride(1);
            #[unroll]
            for r in 0..rows {
                let row = row0 + r * threads + t;
                if row < q_len {
                    let id = ((split * batch + b) * heads + h) * q_len + row;
                    let base = id * out.stride(0);
                    #[unroll]
                    for i in 0..cv4 {
                        let a = acc[r * cv4 + i];
                        #[unroll]
                        for x in 0..4 {
                            if comptime!(i * 4 + x < cv_dim) {
                                out[base + (i * 4 + x) * out_stride] = O::cast_from(a.extract(x));
                            }
                        }
                    }
                    let stats_base = id * stats.stride(0);
                    stats[stats_base] = O::cast_from(m_run[r]);
                    stats[stats_base + stats_stride] = O::cast_from(l_run[r]);
                }
            }
        }
    }
}

/// Combines the split-key partials of [`attention_kernel`]: one unit per output row,
/// `out = Σ_s e^(m_s - m) acc_s / Σ_s e^(m_s - m) l_s` with `m = max_s m_s`.
#[cube(launch_unchecked, address_type = "dynamic")]
pub(super) fn combine_kernel<F: Float>(
    acc: &Tensor<f32>,
    stats: &Tensor<f32>,
    out: &mut Tensor<F>,
    splits: usize,
    #[define(F)] _dtype: ElemType,
) {
    let heads = out.shape(1);
    let q_len = out.shape(2);
    let cv = out.shape(3);
    let rows_total = out.shape(0) * heads * q_len;
    let id = CUBE_POS * (CUBE_DIM_X as usize) + UNIT_POS_X as usize;
    if id >= rows_total {
        terminate!();
    }
    let row = id % q_len;
    let bh = id / q_len;
    let h = bh % heads;
    let b = bh / heads;

    let mut m = f32::new(-3.0e38);
    for s in 0..splits {
        m = m.max(stats[(s * rows_total + id) * stats.stride(0)]);
    }
    let mut l = f32::new(0.0);
    for s in 0..splits {
        let base = (s * rows_total + id) * stats.stride(0);
        l += (stats[base] - m).exp() * stats[base + stats.stride(1)];
    }
    let inv = 1.0f32 / l;
    let out_base = b * out.stride(0) + h * out.stride(1) + row * out.stride(2);
    let out_stride = out.stride(3);
    for c in 0..cv {
        let mut sum = f32::new(0.0);
        for s in 0..splits {
            let part = s * rows_total + id;
            let weight = (stats[part * stats.stride(0)] - m).exp();
            sum += weight * acc[part * acc.stride(0) + c * acc.stride(1)];
        }
        out[out_base + c * out_stride] = F::cast_from(sum * inv);
    }
}
