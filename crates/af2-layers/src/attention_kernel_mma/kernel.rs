//! The CubeCL source of the tensor-core attention kernel; see the parent module's documentation.

use super::{MMA, MMA_HEAD_DIM as HEAD, PLANE, RESCALE_MARGIN};
use crate::attention_kernel::kernel::{key_mask_base, masked_key_logit};
use cubecl::cmma::{self, Matrix, MatrixIdent, MatrixLayout};
use cubecl::prelude::*;

/// An uninitialised 16×16×16 fragment.
#[cube]
pub(crate) fn fragment<T: Numeric>(
    #[comptime] ident: MatrixIdent,
    #[comptime] layout: MatrixLayout,
) -> Matrix<T> {
    // SAFETY: every fragment is filled or loaded before it is read.
    unsafe { Matrix::<T>::uninitialized(ident, MMA, MMA, MMA, layout) }
}

/// The plane's output fragments (16 rows × 32 channels, f32) written row-major over its
/// stripe of the score tile.
#[cube]
fn store_output(
    pv_lo: &Matrix<f32>,
    pv_hi: &Matrix<f32>,
    s_s: &mut Shared<[f32]>,
    stripe: usize,
    stripe_end: usize,
    #[comptime] key_row: usize,
) {
    cmma::store(
        &mut s_s[stripe..stripe_end],
        pv_lo,
        key_row as u32,
        MatrixLayout::RowMajor,
    );
    cmma::store(
        &mut s_s[stripe + MMA..stripe_end],
        pv_hi,
        key_row as u32,
        MatrixLayout::RowMajor,
    );
}

/// See the module documentation. Cube `CUBE_POS = (b * H + h) * q_tiles + q_tile` computes
/// query rows `q_tile * rows ..` of head `h`, batch row `b`; plane `UNIT_POS_Y` takes 16 of
/// them. In the softmax lane `l` takes row `l % 16` of its plane and half `l / 16` of the
/// tile's keys; in the output it takes channel `l` of the plane's rows.
#[allow(clippy::too_many_arguments)]
#[cube(launch_unchecked, address_type = "dynamic")]
pub(super) fn attention_mma_kernel<F: Float, M: Float, Bt: Float, NB: Size>(
    q: &Tensor<F>,
    k: &Tensor<Vector<F, NB>>,
    v: &Tensor<Vector<F, NB>>,
    key_mask: &Tensor<M>,
    bias: ComptimeOption<&Tensor<Vector<Bt, NB>>>,
    out: &mut Tensor<F>,
    q_tiles: usize,
    #[comptime] planes: usize,
    #[comptime] keys: usize,
    #[comptime] pad: usize,
    #[comptime] load_vs: usize,
    #[define(F, M, Bt)] _dtypes: [ElemType; 3],
) {
    let threads = comptime!(PLANE * planes);
    let rows = comptime!(planes * MMA);
    let half_keys = comptime!(keys / 2);
    let parts = comptime!(keys / MMA);
    // Row lengths of the shared tiles: `HEAD` channels (Q, K, V) or `keys` keys (scores,
    // weights), each padded by `pad` elements.
    let head_row = comptime!(HEAD + pad);
    let key_row = comptime!(keys + pad);
    let qp_row = comptime!(if HEAD > keys { head_row } else { key_row });
    let kv_tile = comptime!(keys * head_row);
    let batch = q.shape(0);
    let heads = q.shape(1);
    let q_len = q.shape(2);
    let k_len = k.shape(2);
    let cube = CUBE_POS;
    if cube >= q_tiles * heads * batch {
        terminate!();
    }
    let q_tile = cube % q_tiles;
    let bh = cube / q_tiles;
    let h = bh % heads;
    let b = bh / heads;
    let lane = UNIT_POS_X as usize;
    let plane = UNIT_POS_Y as usize;
    let t = plane * PLANE + lane;
    let row0 = q_tile * rows;
    // This plane's rows in the `[rows, keys]` tiles, and the softmax lane's row and half.
    let stripe = plane * MMA * key_row;
    let stripe_end = stripe + MMA * key_row;
    let my_row = lane % MMA;
    let my_half = lane / MMA;
    // The softmax lanes read their row's keys from a rotated start, so that the 32 lanes
    // hit 32 different banks (found by enumerating the bank of every lane and key).
    let mut rotation = my_row;
    if comptime!(pad > 0) {
        rotation = 2 * (my_row / 4) + my_half;
    }

    // The query block (row `r` of plane `p` at `p * MMA * qp_row + r * head_row`); once a
    // plane has its query fragments, its stripe takes the softmax weights (rows of
    // `key_row`). K and V come in two buffers: tile `s` is read from buffer `s % 2` while
    // tile `s + 1` is stored into the other, so one cube barrier a tile suffices.
    let mut qp_s = Shared::<[F]>::new_slice(comptime!(rows * qp_row));
    // K and V are staged as whole vectors of `load_vs` channels (the matrix loads address them
    // in elements).
    let mut k_s = Shared::<[Vector<F, NB>]>::new_slice(comptime!(2 * kv_tile / load_vs));
    let mut v_s = Shared::<[Vector<F, NB>]>::new_slice(comptime!(2 * kv_tile / load_vs));
    // Each plane's stripe: its bias rows, then (in place) the scores, then the P·V product
    // (keys >= HEAD columns).
    let mut s_s = Shared::<[f32]>::new_slice(comptime!(rows * key_row));
    let mut fill_s = Shared::<[f32]>::new_slice(comptime!(2 * keys));
    let mut row_s = Shared::<[f32]>::new_slice(rows);

    // The query block, zero past Q.
    let q_base = b * q.stride(0) + h * q.stride(1);
    // Unrolled, so that all the loads are in flight together (a `while` loop waits for
    // each in turn).
    #[unroll]
    for i in 0..comptime!(rows * HEAD / threads) {
        let e = t + i * threads;
        let r = e / HEAD;
        let row = row0 + r;
        let mut value = F::new(0.0);
        if row < q_len {
            value = q[q_base + row * q.stride(2) + (e % HEAD) * q.stride(3)];
        }
        qp_s[(r / MMA) * comptime!(MMA * qp_row) + (r % MMA) * head_row + e % HEAD] = value;
    }
    sync_cube();
    let qp_at = plane * MMA * qp_row;
    let qp_end = qp_at + MMA * qp_row;
    let mut q_lo = fragment::<F>(MatrixIdent::A, MatrixLayout::RowMajor);
    let mut q_hi = fragment::<F>(MatrixIdent::A, MatrixLayout::RowMajor);
    cmma::load(&mut q_lo, &qp_s[qp_at..qp_end], head_row as u32);
    cmma::load(&mut q_hi, &qp_s[qp_at + MMA..qp_end], head_row as u32);

    let mut scores = fragment::<f32>(MatrixIdent::Accumulator, MatrixLayout::Undefined);
    let mut k_frag = fragment::<F>(MatrixIdent::B, MatrixLayout::ColMajor);
    let mut p_frag = fragment::<F>(MatrixIdent::A, MatrixLayout::RowMajor);
    let mut v_frag = fragment::<F>(MatrixIdent::B, MatrixLayout::RowMajor);
    // The output of the plane's 16 rows (channels 0-15 and 16-31), summed over the key tiles
    // relative to each row's reference max.
    let mut pv_lo = fragment::<f32>(MatrixIdent::Accumulator, MatrixLayout::Undefined);
    let mut pv_hi = fragment::<f32>(MatrixIdent::Accumulator, MatrixLayout::Undefined);
    cmma::fill(&mut pv_lo, 0.0f32);
    cmma::fill(&mut pv_hi, 0.0f32);

    // The softmax row's reference max (set by the first tile, raised only where a tile's
    // max passes it by more than RESCALE_MARGIN) and its sum of weights.
    let mut m_run = f32::new(-3.0e38);
    let mut l_run = f32::new(0.0);
    let mut logits = Array::<f32>::new(half_keys);

    let mask_base = key_mask_base(key_mask, b);
    // Staging roles: unit `t` loads vectors `t + i * threads` of the tile's K followed by
    // its V (vectors of `load_vs` channels: the host vectorises K and V with the bias): a
    // tile's K is a multiple of the cube's units, so the first half of the `i` read K and
    // the second V (7% faster at L=512 on an H100 than a K and a V element at every `i`,
    // docs/PERFORMANCE.md). Lane `l` loads vector `l + i * PLANE` of its plane's bias stripe
    // (elements `(l + i * PLANE) * load_vs ..`). Offsets and strides are read once, not per
    // element.
    let head_vectors = comptime!(HEAD / load_vs);
    let tile_vectors = comptime!(keys * head_vectors);
    let kv_count = comptime!(2 * tile_vectors / threads);
    // Bias vectors a lane loads per tile.
    let bias_count = comptime!(MMA * keys / (PLANE * load_vs));
    let (k_row_stride, k_ch_stride) = (k.stride(2), k.stride(3));
    let (v_row_stride, v_ch_stride) = (v.stride(2), v.stride(3));
    let k_base = b * k.stride(0) + h * k.stride(1);
    let v_base = b * v.stride(0) + h * v.stride(1);
    let stripe_row0 = row0 + plane * MMA;
    // The bias is contiguous `[G, H, Q, K]` (the caller lays it out so).
    let mut bias_at = 0;
    let mut bias_row_stride = 0;
    #[comptime]
    if let ComptimeOption::Some(bias) = &bias {
        let group = b / (batch / bias.shape(0));
        bias_at = group * bias.stride(0) + h * bias.stride(1);
        bias_row_stride = bias.stride(2);
    }
    // The next tile, loaded into registers while the current one is computed.
    let mut kv_next = Array::<Vector<F, NB>>::new(kv_count);
    let mut bias_next = Array::<f32>::new(comptime!(bias_count * load_vs));
    let mut fill_next = f32::new(0.0);

    // Step `s` issues the loads of tile `s`, computes tile `s - 1` from shared memory while
    // they are in flight, then stores tile `s` to shared memory.
    let num_tiles = k_len.div_ceil(keys);
    for step in 0..num_tiles + 1 {
        if step < num_tiles {
            let key0 = step * keys;
            // K then V, zero past K.
            #[unroll]
            for i in 0..kv_count {
                let e = t + i * threads;
                let r = e % tile_vectors;
                let key = key0 + r / head_vectors;
                // Channels `channel ..` of the vector: their stride is 1 where vectors are
                // wider than one channel.
                let channel = (r % head_vectors) * load_vs;
                let mut value = Vector::<F, NB>::new(F::new(0.0));
                if key < k_len {
                    if e < tile_vectors {
                        value = k[(k_base + key * k_row_stride + channel * k_ch_stride) / load_vs];
                    } else {
                        value = v[(v_base + key * v_row_stride + channel * v_ch_stride) / load_vs];
                    }
                }
                kv_next[i] = value;
            }
            // The bias (zero outside [Q, K] and without a bias): the scores start from it.
            // Lane `l` loads elements `(l + i * PLANE) * load_vs ..` of the `[16, keys]`
            // stripe; K is a multiple of `load_vs`, so a vector is inside K or past it.
            #[unroll]
            for i in 0..bias_count {
                let mut values = Vector::<Bt, NB>::new(Bt::new(0.0));
                #[comptime]
                if let ComptimeOption::Some(bias) = &bias {
                    let e = (lane + i * PLANE) * load_vs;
                    let row = stripe_row0 + e / keys;
                    let key = key0 + e % keys;
                    if row < q_len && key < k_len {
                        values = bias[(bias_at + row * bias_row_stride + key) / load_vs];
                    }
                }
                #[unroll]
                for j in 0..load_vs {
                    bias_next[i * load_vs + j] = f32::cast_from(values.extract(j));
                }
            }
            if t < keys {
                fill_next = masked_key_logit(key_mask, mask_base, key0 + t, k_len);
            }
        }
        if step > 0 {
            let kv_buffer = ((step - 1) % 2) * kv_tile;
            let fill_buffer = ((step - 1) % 2) * keys;
            // Scores = bias + Q·Kᵀ for the plane's 16 rows, in two 16-key halves, in place.
            // Kᵀ as the B operand: element (c, key) at element offset
            // `kv_buffer + key * head_row + c` of k_s (vector `.. / load_vs`), column-major.
            #[unroll]
            for half in 0..parts {
                let s_at = stripe + half * MMA;
                let k_at = kv_buffer + half * MMA * head_row;
                let k_end = k_at + MMA * head_row;
                cmma::load_with_layout(
                    &mut scores,
                    &s_s[s_at..stripe_end],
                    key_row as u32,
                    MatrixLayout::RowMajor,
                );
                cmma::load(
                    &mut k_frag,
                    &k_s[k_at / load_vs..k_end / load_vs],
                    head_row as u32,
                );
                cmma::execute(&q_lo, &k_frag, &scores, &scores);
                cmma::load(
                    &mut k_frag,
                    &k_s[(k_at + MMA) / load_vs..k_end / load_vs],
                    head_row as u32,
                );
                cmma::execute(&q_hi, &k_frag, &scores, &scores);
                cmma::store(
                    &mut s_s[s_at..stripe_end],
                    &scores,
                    key_row as u32,
                    MatrixLayout::RowMajor,
                );
            }
            sync_plane();

            // Softmax step: the lane's row over its 16 keys, read in a rotated order so that
            // the 32 lanes hit 32 different banks; the partner lane (l ^ 16) has the other half.
            let row_at = stripe + my_row * key_row;
            let p_row_at = qp_at + my_row * key_row;
            let mut m_tile = f32::new(-3.0e38);
            #[unroll]
            for j in 0..half_keys {
                let col = my_half * half_keys + (j + rotation) % half_keys;
                let fill = fill_s[fill_buffer + col];
                let logit = select(fill == 0.0f32, s_s[row_at + col], fill);
                logits[j] = logit;
                m_tile = m_tile.max(logit);
            }
            m_tile = m_tile.max(plane_shuffle_xor(m_tile, MMA as u32));
            if step == 1 {
                // The accumulators are still zero: the first tile only sets the maxima.
                m_run = m_tile;
            } else if plane_any(m_tile > m_run + RESCALE_MARGIN) {
                let m_new = m_run.max(m_tile);
                let factor = (m_run - m_new).exp();
                l_run *= factor;
                m_run = m_new;
                // Through the stripe, whose scores the lanes hold in registers by now.
                if my_half == 0 {
                    row_s[plane * MMA + my_row] = factor;
                }
                sync_plane();
                store_output(&pv_lo, &pv_hi, &mut s_s, stripe, stripe_end, key_row);
                sync_plane();
                #[unroll]
                for r in 0..MMA {
                    s_s[stripe + r * key_row + lane] *= row_s[plane * MMA + r];
                }
                sync_plane();
                cmma::load_with_layout(
                    &mut pv_lo,
                    &s_s[stripe..stripe_end],
                    key_row as u32,
                    MatrixLayout::RowMajor,
                );
                cmma::load_with_layout(
                    &mut pv_hi,
                    &s_s[stripe + MMA..stripe_end],
                    key_row as u32,
                    MatrixLayout::RowMajor,
                );
            }
            let mut sum = f32::new(0.0);
            #[unroll]
            for j in 0..half_keys {
                let col = my_half * half_keys + (j + rotation) % half_keys;
                let p = (logits[j] - m_run).exp();
                sum += p;
                qp_s[p_row_at + col] = F::cast_from(p);
            }
            l_run += sum + plane_shuffle_xor(sum, MMA as u32);
            sync_plane();

            // P·V of the tile: 16 rows × 32 channels over the tile's two 16-key halves,
            // added to the output.
            #[unroll]
            for half in 0..parts {
                let p_at = qp_at + half * MMA;
                cmma::load(&mut p_frag, &qp_s[p_at..qp_end], key_row as u32);
                let v_at = kv_buffer + half * MMA * head_row;
                let v_end = v_at + MMA * head_row;
                cmma::load(
                    &mut v_frag,
                    &v_s[v_at / load_vs..v_end / load_vs],
                    head_row as u32,
                );
                cmma::execute(&p_frag, &v_frag, &pv_lo, &pv_lo);
                cmma::load(
                    &mut v_frag,
                    &v_s[(v_at + MMA) / load_vs..v_end / load_vs],
                    head_row as u32,
                );
                cmma::execute(&p_frag, &v_frag, &pv_hi, &pv_hi);
            }
        }
        if step < num_tiles {
            // Buffer `step % 2` was last read for tile `step - 2`, before the previous
            // step's barrier; the stripe is the plane's own, free once its lanes have read
            // the scores (and a rescale has reloaded the output).
            let kv_buffer = (step % 2) * kv_tile;
            #[unroll]
            for i in 0..kv_count {
                let e = t + i * threads;
                let r = e % tile_vectors;
                let at = (kv_buffer + (r / head_vectors) * head_row) / load_vs + r % head_vectors;
                if e < tile_vectors {
                    k_s[at] = kv_next[i];
                } else {
                    v_s[at] = kv_next[i];
                }
            }
            if t < keys {
                fill_s[(step % 2) * keys + t] = fill_next;
            }
            // The plane's lanes last read the stripe before the barrier after the weights.
            #[unroll]
            for i in 0..bias_count {
                let e = (lane + i * PLANE) * load_vs;
                #[unroll]
                for j in 0..load_vs {
                    s_s[stripe + (e / keys) * key_row + e % keys + j] = bias_next[i * load_vs + j];
                }
            }
        }
        sync_cube();
    }

    store_output(&pv_lo, &pv_hi, &mut s_s, stripe, stripe_end, key_row);
    if my_half == 0 {
        row_s[plane * MMA + my_row] = l_run;
    }
    sync_plane();
    let out_base = b * out.stride(0) + h * out.stride(1) + lane * out.stride(3);
    let out_row_stride = out.stride(2);
    #[unroll]
    for r in 0..MMA {
        let row = row0 + plane * MMA + r;
        if row < q_len {
            // l >= 1: the row's largest logit contributes exp(max - reference), and the
            // reference is at most the max.
            out[out_base + row * out_row_stride] =
                F::cast_from(s_s[stripe + r * key_row + lane] / row_s[plane * MMA + r]);
        }
    }
}
