//! One pass of the recycling loop recorded once as a device graph and replayed (feature `wgpu`).
//!
//! A pass records ~9,000 tensor operations on the host (Burn's fusion stream, then cubecl's
//! launches); at small sizes the host, not the GPU, bounds a prediction. cubecl records the
//! launches of one pass into a graph (`Backend::graph_start_capture`), whose replay re-encodes
//! the recorded dispatches with their pipelines and bindings already resolved. A replay reads
//! the buffers the recording read, so each pass first writes its inputs (features, template
//! embeddings, the recycled state) into those buffers in place
//! ([`af2_layers::copy_into`]), and its outputs are the recording's output tensors, rewritten
//! by every replay.
//!
//! For a new input layout (batch, length, MSA depth, templates, dtypes) the first
//! [`WARM_PASSES`] passes run as usual (autotuning and fusion's first explorations happen
//! there; a single prediction of four passes records nothing). The next pass prepares the
//! device (`graph_prepare`), runs once more as usual with its outputs dropped, so that the
//! memory pool holds every buffer a pass allocates, is recorded on fresh input buffers and
//! replayed; every later pass of that layout replays. Each model keeps the recordings of its
//! last [`MAX_RECORDINGS`] layouts (a binder screen alternates the complex and the binder
//! alone). Where recording fails (a backend without graphs, an upload inside the pass) passes
//! of that layout run as usual, as do passes over more than [`MAX_RECORDED_PAIRS`] residue
//! pairs.

use std::any::Any;
use std::sync::{Arc, Mutex};

use burn::backend::{Backend, BackendGraph, Dispatch};
use burn::module::ParamId;
use burn::tensor::{DType, Device, FloatDType, Int, Tensor};

use super::pass_inputs::{PassInputs, TemplateTensors};
use super::{AlphaFold, BatchOutput, BatchRecycled, StageClock};
use crate::precision::module_dtype;

/// Passes run as usual on a new layout before the one recorded: one prediction of four passes
/// (three recycles) records nothing; Burn's own `capture` helper warms up three times, since
/// fusion takes its cached path only from the second run on.
const WARM_PASSES: usize = 4;

/// Layouts whose recordings a model keeps; each holds the memory of one pass.
const MAX_RECORDINGS: usize = 3;

/// Passes over more residue pairs than this (`B · N²`) run as usual: the host's share of a
/// pass shrinks as its work grows (on an H100 recording saved 59% of a prediction at L = 128,
/// B = 1, and 13% at L = 256, B = 1), while a recording holds the memory of a whole pass for
/// as long as it is kept.
const MAX_RECORDED_PAIRS: usize = 1 << 17;

/// Whether passes are recorded and replayed on `device`: a cubecl device, unless
/// `AF2_GRAPH=0`.
pub(crate) fn graphs_enabled(device: &Device) -> bool {
    static ENABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let enabled = *ENABLED
        .get_or_init(|| std::env::var("AF2_GRAPH").map_or(true, |value| value.trim() != "0"));
    enabled && af2_layers::copy_into::supported(device)
}

/// What a recording was made for: inputs of this layout on this device, by a model with these
/// parameters (their dtypes and a parameter's id, the count of in-place loads).
#[derive(Clone, Debug, PartialEq)]
struct Key {
    inputs: Vec<(Vec<usize>, DType)>,
    state: Vec<(Vec<usize>, DType)>,
    device: Device,
    dtypes: [FloatDType; 6],
    first_parameter: ParamId,
    templates: bool,
    loads: u64,
}

impl Key {
    fn of(model: &AlphaFold, x: &PassInputs, prev: &BatchRecycled, device: &Device) -> Self {
        Self {
            inputs: x.layout(),
            state: state_layout(prev),
            device: device.clone(),
            dtypes: [
                module_dtype(&model.input_embedder),
                module_dtype(&model.recycling_embedder),
                module_dtype(&model.extra_msa_stack),
                module_dtype(&model.evoformer),
                module_dtype(&model.structure_module),
                module_dtype(&model.heads),
            ],
            first_parameter: model.input_embedder.preprocess_1d.weight.id,
            templates: model.template_embedding.is_some(),
            loads: af2_layers::derived::load_count(),
        }
    }
}

fn state_layout(s: &BatchRecycled) -> Vec<(Vec<usize>, DType)> {
    vec![
        (s.msa_first_row.dims().to_vec(), s.msa_first_row.dtype()),
        (s.pair.dims().to_vec(), s.pair.dtype()),
        (s.positions.dims().to_vec(), s.positions.dtype()),
    ]
}

/// A recorded pass: the graph, the buffers it reads its inputs from, its outputs.
struct Recorded {
    graph: BackendGraph<Dispatch>,
    inputs: PassInputs,
    state: BatchRecycled,
    output: BatchOutput,
}

enum Stage {
    /// Passes of the layout run as usual so far.
    Warming(usize),
    Recorded(Box<Recorded>),
    /// Recording failed for this layout (the reason): passes run as usual.
    Off(String),
}

struct PassGraph {
    key: Key,
    stage: Stage,
}

/// The model's recorded passes, kept from one prediction to the next, the most recently used
/// last. A clone starts empty.
#[derive(Default)]
pub struct PassGraphSlot {
    slot: Arc<Mutex<Vec<PassGraph>>>,
}

impl Clone for PassGraphSlot {
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl std::fmt::Debug for PassGraphSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PassGraphSlot")
    }
}

impl PassInputs {
    /// Every tensor, in a fixed order, for [`PassInputs::write_into`] and shape keys.
    fn tensors(&self) -> Vec<Field<'_>> {
        let mut fields = vec![
            Field::Float2(&self.seq_mask),
            Field::Float3(&self.target_feat),
            Field::Float4(&self.msa_feat),
            Field::Int3(&self.relpos),
            Field::Float3(&self.msa_mask),
            Field::Float4(&self.extra_feat),
            Field::Float3(&self.extra_msa_mask),
            Field::Float3(&self.is_glycine),
            Field::Int2(&self.aatype),
        ];
        if let Some(t) = &self.templates {
            if let Some(memory) = &t.pair_memory {
                fields.push(Field::Float3(memory));
            }
            fields.push(Field::Float2(&t.mask));
            if let Some((rows, mask)) = &t.torsion_rows {
                fields.push(Field::Float4(rows));
                fields.push(Field::Float3(mask));
            }
        }
        fields
    }

    /// The shape and dtype of every tensor: inputs with the same layout can be written into
    /// each other.
    pub fn layout(&self) -> Vec<(Vec<usize>, burn::tensor::DType)> {
        self.tensors().iter().map(Field::layout).collect()
    }

    /// Zero tensors of the same shapes and dtypes, contiguous.
    pub fn zeros_like(&self) -> Self {
        fn zeros<const D: usize>(t: &Tensor<D>) -> Tensor<D> {
            t.zeros_like()
        }
        fn zeros_int<const D: usize>(t: &Tensor<D, Int>) -> Tensor<D, Int> {
            t.zeros_like()
        }
        Self {
            seq_mask: zeros(&self.seq_mask),
            target_feat: zeros(&self.target_feat),
            msa_feat: zeros(&self.msa_feat),
            relpos: zeros_int(&self.relpos),
            msa_mask: zeros(&self.msa_mask),
            extra_feat: zeros(&self.extra_feat),
            extra_msa_mask: zeros(&self.extra_msa_mask),
            is_glycine: zeros(&self.is_glycine),
            aatype: zeros_int(&self.aatype),
            templates: self.templates.as_ref().map(|t| TemplateTensors {
                pair_memory: t.pair_memory.as_ref().map(zeros),
                mask: zeros(&t.mask),
                torsion_rows: t
                    .torsion_rows
                    .as_ref()
                    .map(|(rows, mask)| (zeros(rows), zeros(mask))),
            }),
        }
    }

    /// Writes every tensor into the buffers of `slots` (of the same [`PassInputs::layout`]),
    /// in place; the returned tensors must live until the device has run the copies.
    ///
    /// # Panics
    /// If the layouts differ, or the device is not a cubecl one.
    pub fn write_into(&self, slots: &PassInputs) -> Vec<Box<dyn Any>> {
        assert_eq!(
            self.layout(),
            slots.layout(),
            "pass inputs of another layout"
        );
        self.tensors()
            .into_iter()
            .zip(slots.tensors())
            .map(|(src, dst)| src.copy_into(&dst))
            .collect()
    }
}

/// One tensor of [`PassInputs`] by rank and kind.
enum Field<'a> {
    Float2(&'a Tensor<2>),
    Float3(&'a Tensor<3>),
    Float4(&'a Tensor<4>),
    Int2(&'a Tensor<2, Int>),
    Int3(&'a Tensor<3, Int>),
}

impl Field<'_> {
    fn layout(&self) -> (Vec<usize>, burn::tensor::DType) {
        match self {
            Field::Float2(t) => (t.dims().to_vec(), t.dtype()),
            Field::Float3(t) => (t.dims().to_vec(), t.dtype()),
            Field::Float4(t) => (t.dims().to_vec(), t.dtype()),
            Field::Int2(t) => (t.dims().to_vec(), t.dtype()),
            Field::Int3(t) => (t.dims().to_vec(), t.dtype()),
        }
    }

    /// Writes this tensor into `dst` (the same variant) in place.
    fn copy_into(&self, dst: &Field<'_>) -> Box<dyn Any> {
        use af2_layers::copy_into::{copy_into, copy_into_int};
        match (self, dst) {
            (Field::Float2(s), Field::Float2(d)) => Box::new(copy_into(d, (*s).clone())),
            (Field::Float3(s), Field::Float3(d)) => Box::new(copy_into(d, (*s).clone())),
            (Field::Float4(s), Field::Float4(d)) => Box::new(copy_into(d, (*s).clone())),
            (Field::Int2(s), Field::Int2(d)) => Box::new(copy_into_int(d, (*s).clone())),
            (Field::Int3(s), Field::Int3(d)) => Box::new(copy_into_int(d, (*s).clone())),
            _ => unreachable!("write_into checked the layouts"),
        }
    }
}

/// Writes the recycled state into the buffers of `slots` in place.
fn write_state(state: &BatchRecycled, slots: &BatchRecycled) -> Vec<Box<dyn Any>> {
    use af2_layers::copy_into::copy_into;
    vec![
        Box::new(copy_into(&slots.msa_first_row, state.msa_first_row.clone())),
        Box::new(copy_into(&slots.pair, state.pair.clone())),
        Box::new(copy_into(&slots.positions, state.positions.clone())),
    ]
}

impl AlphaFold {
    /// [`AlphaFold::pass`] through the recorded graph of its layout (see the module
    /// documentation). The outputs of a replayed pass are the recording's tensors: the next
    /// replay of this model rewrites them, so read what is needed before the next pass.
    pub(super) fn pass_recorded(
        &self,
        x: &PassInputs,
        prev: BatchRecycled,
        device: &Device,
    ) -> BatchOutput {
        let [b, n] = x.seq_mask.dims();
        if b * n * n > MAX_RECORDED_PAIRS {
            return self.pass(x, prev, &mut StageClock::off());
        }
        let key = Key::of(self, x, &prev, device);
        let mut graphs = self
            .pass_graph
            .slot
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let graph = match graphs.iter().position(|g| g.key == key) {
            Some(i) => graphs.remove(i),
            None => PassGraph {
                key,
                stage: Stage::Warming(0),
            },
        };
        // The least recently used recording (and the memory it holds) goes first.
        if graphs.len() >= MAX_RECORDINGS {
            graphs.remove(0);
        }
        graphs.push(graph);
        let graph = graphs.last_mut().expect("pushed above");
        let unrecorded = |model: &Self| model.pass(x, prev.clone(), &mut StageClock::off());
        match &mut graph.stage {
            Stage::Off(_) => unrecorded(self),
            Stage::Warming(passes) if *passes < WARM_PASSES => {
                *passes += 1;
                unrecorded(self)
            }
            Stage::Warming(_) => match self.record(x, &prev, device) {
                Ok(recorded) => {
                    let output = recorded.output.clone();
                    graph.stage = Stage::Recorded(Box::new(recorded));
                    output
                }
                Err(reason) => {
                    graph.stage = Stage::Off(reason);
                    unrecorded(self)
                }
            },
            Stage::Recorded(recorded) => {
                let copies = (
                    x.write_into(&recorded.inputs),
                    write_state(&prev, &recorded.state),
                );
                // Safety: the graph reads the buffers of `recorded`'s inputs and state and of
                // the model's parameters (all alive while the slot holds the recording: a
                // parameter load changes the key) and its own memory, which cubecl keeps for
                // the graph's life; the copies above are queued before the replay on the same
                // stream.
                let replayed =
                    unsafe { Dispatch::graph_replay(device.as_dispatch(), &recorded.graph) };
                drop(copies);
                match replayed {
                    Ok(()) => recorded.output.clone(),
                    Err(e) => {
                        graph.stage = Stage::Off(format!("replay failed: {e:?}"));
                        unrecorded(self)
                    }
                }
            }
        }
    }

    /// Records one pass on fresh input buffers holding `x` and `prev`, then replays it once
    /// (recording runs nothing); the reason where recording fails.
    fn record(
        &self,
        x: &PassInputs,
        prev: &BatchRecycled,
        device: &Device,
    ) -> Result<Recorded, String> {
        let dispatch = device.as_dispatch();
        Dispatch::graph_prepare(dispatch).map_err(|e| format!("graph_prepare: {e:?}"))?;
        // The buffers the recording reads its inputs from, made first: carved from the memory
        // a warm-up pass frees, they would leave the recording short of it.
        let inputs = x.zeros_like();
        let state = BatchRecycled {
            msa_first_row: prev.msa_first_row.zeros_like(),
            pair: prev.pair.zeros_like(),
            positions: prev.positions.zeros_like(),
        };
        let copies = (x.write_into(&inputs), write_state(prev, &state));
        // One pass as usual on them, run to the end and dropped: the memory pool then holds
        // every buffer the recording allocates (nothing may be allocated anew while
        // recording).
        let warm = self.pass(&inputs, state.clone(), &mut StageClock::off());
        let started = Dispatch::sync(dispatch)
            .map_err(|e| format!("sync: {e:?}"))
            .and_then(|()| {
                drop(warm);
                Dispatch::graph_start_capture(dispatch)
                    .map_err(|e| format!("graph_start_capture: {e:?}"))
            });
        if let Err(reason) = started {
            // Closing the prepared capture unwinds it.
            let _ = Dispatch::graph_stop_capture(dispatch);
            return Err(reason);
        }
        drop(copies);
        let output = self.pass(&inputs, state.clone(), &mut StageClock::off());
        let graph = Dispatch::graph_stop_capture(dispatch)
            .map_err(|e| format!("graph_stop_capture: {e:?}"))?;
        // Safety: as in `pass_recorded`; the recorded buffers are `inputs`, `state` and the
        // parameters, all alive here.
        unsafe { Dispatch::graph_replay(dispatch, &graph) }
            .map_err(|e| format!("graph_replay: {e:?}"))?;
        Ok(Recorded {
            graph,
            inputs,
            state,
            output,
        })
    }

    /// How the passes of each layout this model keeps run, for reports: "recorded",
    /// "warming up (n passes run)" or "not recorded: <reason>".
    pub fn pass_recordings(&self) -> Vec<String> {
        let graphs = self
            .pass_graph
            .slot
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        graphs
            .iter()
            .map(|g| {
                let [b, n] = match g.key.inputs.first() {
                    Some((dims, _)) if dims.len() == 2 => [dims[0], dims[1]],
                    _ => [0, 0],
                };
                let stage = match &g.stage {
                    Stage::Warming(passes) => format!("warming up ({passes} passes run)"),
                    Stage::Recorded(_) => "recorded".to_string(),
                    Stage::Off(reason) => format!("not recorded: {reason}"),
                };
                format!("B={b} N={n}: {stage}")
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    //! Replayed passes against passes run as usual, on the GPU (`AF2_GPU_TESTS=1`; without it
    //! the test says it was skipped). The designs differ in every input, so a replay that read
    //! a stale input (an input not written into the recording's buffers) would give another
    //! structure. Tolerance: a replay runs the recorded kernels on the same inputs, but the
    //! reference passes are synchronised after every stage, which cuts Burn's fusion into other
    //! kernels; their sums may round differently, so every output is held to 1e-4 of its
    //! largest magnitude and the measured differences are printed.

    use super::*;
    use crate::features::{BatchFeatures, Features};
    use crate::model::tests::{model, random_features};
    use crate::model::{RecycleOptions, StageTimes};

    /// Passes per prediction: the first prediction warms up, the second records its first
    /// pass.
    const PASSES: usize = WARM_PASSES;

    fn host<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
    }

    /// Largest difference relative to the largest magnitude of `reference`.
    fn relative(ours: &[f32], reference: &[f32]) -> f32 {
        let scale = reference
            .iter()
            .fold(0f32, |m, v| m.max(v.abs()))
            .max(1e-30);
        let diff = ours
            .iter()
            .zip(reference)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        diff / scale
    }

    fn recorded_stage(model: &AlphaFold) -> &'static str {
        let graphs = model.pass_graph.slot.lock().unwrap();
        match graphs.last().map(|g| &g.stage) {
            None => "none",
            Some(Stage::Warming(_)) => "warming",
            Some(Stage::Recorded(_)) => "recorded",
            Some(Stage::Off(_)) => "off",
        }
    }

    #[test]
    fn replayed_passes_match_passes_run_as_usual() {
        let Some(device) = af2_layers::gpu_for_tests() else {
            return;
        };
        let model = model(&device);
        let designs: Vec<Features> = (0..2)
            .map(|seed| random_features(40 + seed, 12, 3, 4, 2))
            .collect();
        // A, B, A, B: the first prediction warms up, the second records its first pass and
        // replays the others, the later ones replay with the other design's inputs written in.
        for (round, f) in designs.iter().cycle().take(4).enumerate() {
            let run = model.forward_recycled_batch_observed(
                std::iter::repeat_n(BatchFeatures::single(f), PASSES),
                None,
                None,
                &RecycleOptions::default(),
                &device,
                |_, _, _| {},
            );
            let ours = run.output(0);
            let reference =
                model.forward_recycled_timed(f, PASSES, &device, &mut StageTimes::default());
            let stage = recorded_stage(&model);
            let errors = [
                relative(
                    &host(ours.structure.final_atom37.clone()),
                    &host(reference.structure.final_atom37.clone()),
                ),
                relative(&host(ours.pair.clone()), &host(reference.pair.clone())),
                relative(
                    &host(ours.logits.plddt.clone()),
                    &host(reference.logits.plddt.clone()),
                ),
            ];
            eprintln!("round {round} ({stage}): atom37, pair, pLDDT logits {errors:?}");
            let expected = if round == 0 { "warming" } else { "recorded" };
            assert_eq!(stage, expected, "round {round}");
            assert!(
                errors.iter().all(|&e| e <= 1e-4),
                "round {round}: {errors:?}"
            );
        }
    }
}
