//! Just enough SPIR-V reflection to build a compute pipeline: the GLCompute entry point, the
//! descriptor bindings, whether there are push constants, and the specialization constants.

use anyhow::{Result, bail};
use ash::vk;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::CString;

const MAGIC: u32 = 0x0723_0203;
const HEADER_WORDS: usize = 5;

const OP_TYPE_INT: u32 = 21;
const OP_TYPE_FLOAT: u32 = 22;
const OP_TYPE_IMAGE: u32 = 25;
const OP_TYPE_SAMPLER: u32 = 26;
const OP_TYPE_SAMPLED_IMAGE: u32 = 27;
const OP_TYPE_ARRAY: u32 = 28;
const OP_TYPE_RUNTIME_ARRAY: u32 = 29;
const OP_TYPE_POINTER: u32 = 32;
const OP_ENTRY_POINT: u32 = 15;
const OP_CONSTANT: u32 = 43;
const OP_SPEC_CONSTANT_TRUE: u32 = 48;
const OP_SPEC_CONSTANT_FALSE: u32 = 49;
const OP_SPEC_CONSTANT: u32 = 50;
const OP_VARIABLE: u32 = 59;
const OP_DECORATE: u32 = 71;
const OP_EXECUTION_MODE_ID: u32 = 331;

const DECORATION_SPEC_ID: u32 = 1;
const DECORATION_BUFFER_BLOCK: u32 = 3;
const DECORATION_BINDING: u32 = 33;
const DECORATION_DESCRIPTOR_SET: u32 = 34;

const STORAGE_CLASS_UNIFORM_CONSTANT: u32 = 0;
const STORAGE_CLASS_UNIFORM: u32 = 2;
const STORAGE_CLASS_PUSH_CONSTANT: u32 = 9;
const STORAGE_CLASS_STORAGE_BUFFER: u32 = 12;

const EXECUTION_MODEL_GL_COMPUTE: u32 = 5;
const EXECUTION_MODE_LOCAL_SIZE_ID: u32 = 38;

const DIM_BUFFER: u32 = 5;
/// OpTypeImage's `Sampled` operand: 2 = used without a sampler (a storage image).
const IMAGE_SAMPLED_STORAGE: u32 = 2;

/// What a compute pipeline needs to know about a module.
#[derive(Debug, PartialEq)]
pub struct Reflection {
    pub entry: CString,
    /// (set, binding) -> (type, count)
    pub bindings: BTreeMap<(u32, u32), (vk::DescriptorType, u32)>,
    pub push_constants: bool,
    pub local_size_id: bool,
    /// (SpecId, default value)
    pub spec_consts: Vec<(u32, String)>,
    pub notes: Vec<String>,
}

/// The module's words in native order; big-endian modules are byte-swapped.
pub fn read_words(bytes: &[u8]) -> Result<Vec<u32>> {
    if !bytes.len().is_multiple_of(4) || bytes.len() < 4 * HEADER_WORDS {
        bail!(
            "not SPIR-V: size {} is not a multiple of 4 or too small",
            bytes.len()
        );
    }
    let mut words: Vec<u32> = bytes
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    if words[0] == MAGIC.swap_bytes() {
        words.iter_mut().for_each(|w| *w = w.swap_bytes());
    } else if words[0] != MAGIC {
        bail!("not SPIR-V: bad magic 0x{:08x}", words[0]);
    }
    Ok(words)
}

pub fn reflect(words: &[u32]) -> Result<Reflection> {
    let module = Module::parse(words)?;
    let entry = module.compute_entry_point()?;
    let mut notes = Vec::new();
    let bindings = module.descriptor_bindings(&mut notes);
    let push_constants = module
        .variables
        .iter()
        .any(|v| v.storage_class == STORAGE_CLASS_PUSH_CONSTANT);
    Ok(Reflection {
        entry,
        bindings,
        push_constants,
        local_size_id: module.local_size_id,
        spec_consts: module.spec_constants(),
        notes,
    })
}

#[derive(Clone, Copy)]
enum Ty {
    Int(u32, bool),
    Float(u32),
    Image { dim: u32, sampled: u32 },
    Sampler,
    SampledImage,
    Other,
}

struct Variable {
    id: u32,
    pointer_type: u32,
    storage_class: u32,
}

/// The instructions reflection looks at, indexed by result id.
#[derive(Default)]
struct Module {
    /// (execution model, name)
    entry_points: Vec<(u32, CString)>,
    // id -> the operand of its DescriptorSet, Binding and SpecId decorations
    sets: HashMap<u32, u32>,
    bindings: HashMap<u32, u32>,
    spec_ids: HashMap<u32, u32>,
    /// types decorated BufferBlock
    buffer_blocks: HashSet<u32>,
    variables: Vec<Variable>,
    /// pointer type -> pointee type
    pointees: HashMap<u32, u32>,
    /// array type -> (element type, length constant; None for runtime arrays)
    arrays: HashMap<u32, (u32, Option<u32>)>,
    /// constant -> its first value word
    constants: HashMap<u32, u32>,
    types: HashMap<u32, Ty>,
    spec_defaults: HashMap<u32, String>,
    local_size_id: bool,
}

impl Module {
    fn parse(words: &[u32]) -> Result<Self> {
        let mut module = Self::default();
        let mut i = HEADER_WORDS;
        while i < words.len() {
            let (wc, op) = ((words[i] >> 16) as usize, words[i] & 0xffff);
            if wc == 0 || i + wc > words.len() {
                bail!(
                    "malformed SPIR-V: instruction at word {i} (opcode {op}) has word count {wc}"
                );
            }
            module.record(op, &words[i..i + wc]);
            i += wc;
        }
        Ok(module)
    }

    /// Notes one instruction (`ins[0]` is the opcode word).
    fn record(&mut self, op: u32, ins: &[u32]) {
        let wc = ins.len();
        match (op, wc) {
            (OP_ENTRY_POINT, 4..) => self.entry_points.push((ins[1], literal_string(&ins[3..]))),
            (OP_EXECUTION_MODE_ID, 3..) if ins[2] == EXECUTION_MODE_LOCAL_SIZE_ID => {
                self.local_size_id = true;
            }
            (OP_DECORATE, 3..) => self.decorate(ins),
            (OP_VARIABLE, 4..) => self.variables.push(Variable {
                id: ins[2],
                pointer_type: ins[1],
                storage_class: ins[3],
            }),
            (OP_TYPE_POINTER, 4..) => _ = self.pointees.insert(ins[1], ins[3]),
            (OP_TYPE_ARRAY, 4..) => _ = self.arrays.insert(ins[1], (ins[2], Some(ins[3]))),
            (OP_TYPE_RUNTIME_ARRAY, 3..) => _ = self.arrays.insert(ins[1], (ins[2], None)),
            (OP_CONSTANT, 4..) => _ = self.constants.insert(ins[2], ins[3]),
            (OP_TYPE_INT, 4..) => _ = self.types.insert(ins[1], Ty::Int(ins[2], ins[3] != 0)),
            (OP_TYPE_FLOAT, 3..) => _ = self.types.insert(ins[1], Ty::Float(ins[2])),
            (OP_TYPE_IMAGE, 9..) => {
                let image = Ty::Image {
                    dim: ins[3],
                    sampled: ins[7],
                };
                self.types.insert(ins[1], image);
            }
            (OP_TYPE_SAMPLER, 2..) => _ = self.types.insert(ins[1], Ty::Sampler),
            (OP_TYPE_SAMPLED_IMAGE, 2..) => _ = self.types.insert(ins[1], Ty::SampledImage),
            (OP_SPEC_CONSTANT_TRUE, 3..) => _ = self.spec_defaults.insert(ins[2], "true".into()),
            (OP_SPEC_CONSTANT_FALSE, 3..) => _ = self.spec_defaults.insert(ins[2], "false".into()),
            (OP_SPEC_CONSTANT, 4..) => {
                let value = self.spec_constant_value(ins);
                self.spec_defaults.insert(ins[2], value);
            }
            _ => {}
        }
    }

    fn decorate(&mut self, ins: &[u32]) {
        let (target, has_operand) = (ins[1], ins.len() >= 4);
        match ins[2] {
            DECORATION_DESCRIPTOR_SET if has_operand => _ = self.sets.insert(target, ins[3]),
            DECORATION_BINDING if has_operand => _ = self.bindings.insert(target, ins[3]),
            DECORATION_SPEC_ID if has_operand => _ = self.spec_ids.insert(target, ins[3]),
            DECORATION_BUFFER_BLOCK => _ = self.buffer_blocks.insert(target),
            _ => {}
        }
    }

    /// An OpSpecConstant's default, formatted by its result type (words low first).
    fn spec_constant_value(&self, ins: &[u32]) -> String {
        let high = ins.get(4).map_or(0, |&w| u64::from(w) << 32);
        let v = u64::from(ins[3]) | high;
        match self.types.get(&ins[1]).copied().unwrap_or(Ty::Other) {
            Ty::Float(32) => f32::from_bits(v as u32).to_string(),
            Ty::Float(64) => f64::from_bits(v).to_string(),
            Ty::Int(32, true) => (v as u32 as i32).to_string(),
            Ty::Int(64, true) => (v as i64).to_string(),
            _ => v.to_string(),
        }
    }

    fn compute_entry_point(&self) -> Result<CString> {
        let is_compute = |(model, _): &&(u32, CString)| *model == EXECUTION_MODEL_GL_COMPUTE;
        match self.entry_points.iter().find(is_compute) {
            Some((_, name)) => Ok(name.clone()),
            None => {
                let names: Vec<_> = self.entry_points.iter().map(|e| &e.1).collect();
                bail!("no GLCompute entry point (entry points: {names:?})")
            }
        }
    }

    /// (set, binding) -> (type, count) for every decorated variable; aliases keep the first type
    /// and the largest count.
    fn descriptor_bindings(
        &self,
        notes: &mut Vec<String>,
    ) -> BTreeMap<(u32, u32), (vk::DescriptorType, u32)> {
        let mut out = BTreeMap::new();
        for var in &self.variables {
            if var.storage_class == STORAGE_CLASS_PUSH_CONSTANT {
                continue;
            }
            let Some(&binding) = self.bindings.get(&var.id) else {
                continue;
            };
            let set = self.sets.get(&var.id).copied().unwrap_or(0);
            let (base, count) = self.strip_arrays(var.pointer_type);
            let Some(dt) = self.descriptor_type(var.storage_class, base) else {
                let (id, sc) = (var.id, var.storage_class);
                notes.push(format!(
                    "ignoring variable %{id} (set {set}, binding {binding}, storage class {sc}): \
                     unsupported descriptor kind"
                ));
                continue;
            };
            match out.get_mut(&(set, binding)) {
                None => _ = out.insert((set, binding), (dt, count)),
                Some((old, n)) => {
                    if *old != dt {
                        notes.push(format!(
                            "set {set} binding {binding}: aliased as {old:?} and {dt:?}, using {old:?}"
                        ));
                    }
                    *n = (*n).max(count);
                }
            }
        }
        out
    }

    /// The pointee of `pointer_type` without its array layers, and the number of descriptors
    /// (product of the array lengths; runtime arrays count as 1).
    fn strip_arrays(&self, pointer_type: u32) -> (u32, u32) {
        let (mut base, mut count) = (self.pointees.get(&pointer_type).copied().unwrap_or(0), 1u32);
        while let Some(&(elem, len)) = self.arrays.get(&base) {
            let len = len
                .and_then(|l| self.constants.get(&l).copied())
                .unwrap_or(1);
            count = count.saturating_mul(len.max(1));
            base = elem;
        }
        (base, count)
    }

    fn descriptor_type(&self, storage_class: u32, base: u32) -> Option<vk::DescriptorType> {
        use vk::DescriptorType as D;
        Some(match (storage_class, self.types.get(&base)) {
            (STORAGE_CLASS_STORAGE_BUFFER, _) => D::STORAGE_BUFFER,
            (STORAGE_CLASS_UNIFORM, _) if self.buffer_blocks.contains(&base) => D::STORAGE_BUFFER,
            (STORAGE_CLASS_UNIFORM, _) => D::UNIFORM_BUFFER,
            (STORAGE_CLASS_UNIFORM_CONSTANT, Some(ty)) => match *ty {
                Ty::SampledImage => D::COMBINED_IMAGE_SAMPLER,
                Ty::Sampler => D::SAMPLER,
                Ty::Image { dim, sampled } => {
                    match (dim == DIM_BUFFER, sampled == IMAGE_SAMPLED_STORAGE) {
                        (true, true) => D::STORAGE_TEXEL_BUFFER,
                        (true, false) => D::UNIFORM_TEXEL_BUFFER,
                        (false, true) => D::STORAGE_IMAGE,
                        (false, false) => D::SAMPLED_IMAGE,
                    }
                }
                _ => return None,
            },
            _ => return None,
        })
    }

    fn spec_constants(&self) -> Vec<(u32, String)> {
        let default = |id| self.spec_defaults.get(id).cloned();
        let mut out: Vec<(u32, String)> = self
            .spec_ids
            .iter()
            .map(|(id, sid)| (*sid, default(id).unwrap_or_else(|| "?".into())))
            .collect();
        out.sort();
        out
    }
}

/// A nul-terminated literal string packed little-end first into words.
fn literal_string(ws: &[u32]) -> CString {
    let bytes: Vec<u8> = ws
        .iter()
        .flat_map(|w| w.to_le_bytes())
        .take_while(|&b| b != 0)
        .collect();
    CString::new(bytes).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const OP_TYPE_STRUCT: u32 = 30;
    const EXECUTION_MODEL_VERTEX: u32 = 0;

    /// A module: the header words, then each (opcode, operands) with its word count.
    fn assemble(instructions: &[(u32, Vec<u32>)]) -> Vec<u32> {
        let mut words = vec![MAGIC, 0x0001_0300, 0, 100, 0];
        for (op, operands) in instructions {
            words.push(((operands.len() as u32 + 1) << 16) | op);
            words.extend(operands);
        }
        words
    }

    /// A literal string operand: nul-terminated, padded to whole words.
    fn string(s: &str) -> Vec<u32> {
        let mut bytes = s.as_bytes().to_vec();
        bytes.resize(s.len() / 4 * 4 + 4, 0);
        bytes
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    }

    fn entry_point(model: u32, function: u32, name: &str) -> (u32, Vec<u32>) {
        (
            OP_ENTRY_POINT,
            [vec![model, function], string(name)].concat(),
        )
    }

    fn decorate(target: u32, decoration: u32, operands: &[u32]) -> (u32, Vec<u32>) {
        (
            OP_DECORATE,
            [vec![target, decoration], operands.to_vec()].concat(),
        )
    }

    /// Entry points "vs" (Vertex) and "main_cs" (GLCompute), %1 = uint, %2 = struct { uint },
    /// %3 = 4, %4 = array of 4 %2, then `more`.
    fn compute_module(more: &[(u32, Vec<u32>)]) -> Vec<u32> {
        let mut ins = vec![
            entry_point(EXECUTION_MODEL_VERTEX, 50, "vs"),
            entry_point(EXECUTION_MODEL_GL_COMPUTE, 51, "main_cs"),
            (OP_TYPE_INT, vec![1, 32, 0]),
            (OP_TYPE_STRUCT, vec![2, 1]),
            (OP_CONSTANT, vec![1, 3, 4]),
            (OP_TYPE_ARRAY, vec![4, 2, 3]),
        ];
        ins.extend_from_slice(more);
        assemble(&ins)
    }

    fn to_bytes(words: &[u32], to: fn(u32) -> [u8; 4]) -> Vec<u8> {
        words.iter().flat_map(|&w| to(w)).collect()
    }

    fn storage_buffers() -> Vec<u32> {
        compute_module(&[
            (OP_TYPE_POINTER, vec![10, STORAGE_CLASS_STORAGE_BUFFER, 2]),
            (OP_TYPE_POINTER, vec![11, STORAGE_CLASS_STORAGE_BUFFER, 4]),
            (OP_VARIABLE, vec![10, 20, STORAGE_CLASS_STORAGE_BUFFER]),
            (OP_VARIABLE, vec![11, 21, STORAGE_CLASS_STORAGE_BUFFER]),
            decorate(20, DECORATION_DESCRIPTOR_SET, &[0]),
            decorate(20, DECORATION_BINDING, &[1]),
            decorate(21, DECORATION_DESCRIPTOR_SET, &[2]),
            decorate(21, DECORATION_BINDING, &[3]),
        ])
    }

    #[test]
    fn finds_the_glcompute_entry_point_name() {
        let r = reflect(&compute_module(&[])).unwrap();
        assert_eq!(r.entry.to_str().unwrap(), "main_cs");
        let no_compute = assemble(&[entry_point(EXECUTION_MODEL_VERTEX, 50, "vs")]);
        let err = reflect(&no_compute).unwrap_err().to_string();
        assert!(
            err.contains("no GLCompute entry point") && err.contains("\"vs\""),
            "{err}"
        );
    }

    #[test]
    fn storage_buffer_variables_become_storage_buffer_bindings() {
        let r = reflect(&storage_buffers()).unwrap();
        let expected = BTreeMap::from([
            ((0, 1), (vk::DescriptorType::STORAGE_BUFFER, 1)),
            ((2, 3), (vk::DescriptorType::STORAGE_BUFFER, 4)),
        ]);
        assert_eq!(r.bindings, expected);
        assert!(!r.push_constants);
        assert!(r.notes.is_empty(), "{:?}", r.notes);
    }

    #[test]
    fn uniform_variable_with_buffer_block_type_is_a_storage_buffer() {
        let r = reflect(&compute_module(&[
            (OP_TYPE_STRUCT, vec![6, 1]),
            decorate(2, DECORATION_BUFFER_BLOCK, &[]),
            (OP_TYPE_POINTER, vec![10, STORAGE_CLASS_UNIFORM, 2]),
            (OP_TYPE_POINTER, vec![11, STORAGE_CLASS_UNIFORM, 6]),
            (OP_VARIABLE, vec![10, 20, STORAGE_CLASS_UNIFORM]),
            (OP_VARIABLE, vec![11, 21, STORAGE_CLASS_UNIFORM]),
            decorate(20, DECORATION_BINDING, &[0]),
            decorate(21, DECORATION_BINDING, &[1]),
        ]))
        .unwrap();
        assert_eq!(r.bindings[&(0, 0)], (vk::DescriptorType::STORAGE_BUFFER, 1));
        assert_eq!(r.bindings[&(0, 1)], (vk::DescriptorType::UNIFORM_BUFFER, 1));
    }

    #[test]
    fn push_constant_variable_is_detected() {
        let without = reflect(&compute_module(&[])).unwrap();
        let with = reflect(&compute_module(&[
            (OP_TYPE_POINTER, vec![10, STORAGE_CLASS_PUSH_CONSTANT, 2]),
            (OP_VARIABLE, vec![10, 20, STORAGE_CLASS_PUSH_CONSTANT]),
        ]))
        .unwrap();
        assert!(!without.push_constants);
        assert!(with.push_constants);
        assert!(with.bindings.is_empty());
    }

    #[test]
    fn spec_constants_and_local_size_id_are_reported() {
        let r = reflect(&compute_module(&[
            (OP_TYPE_FLOAT, vec![7, 32]),
            (OP_SPEC_CONSTANT, vec![7, 30, 0.5f32.to_bits()]),
            (OP_SPEC_CONSTANT, vec![1, 31, 128]),
            decorate(30, DECORATION_SPEC_ID, &[7]),
            decorate(31, DECORATION_SPEC_ID, &[0]),
            (
                OP_EXECUTION_MODE_ID,
                vec![51, EXECUTION_MODE_LOCAL_SIZE_ID, 31, 31, 31],
            ),
        ]))
        .unwrap();
        assert_eq!(
            r.spec_consts,
            vec![(0, "128".to_string()), (7, "0.5".to_string())]
        );
        assert!(r.local_size_id);
    }

    #[test]
    fn big_endian_module_reflects_the_same() {
        let module = storage_buffers();
        let little = read_words(&to_bytes(&module, u32::to_le_bytes)).unwrap();
        let big = read_words(&to_bytes(&module, u32::to_be_bytes)).unwrap();
        assert_eq!(little, module);
        assert_eq!(big, module);
        let r = reflect(&big).unwrap();
        assert_eq!(r, reflect(&little).unwrap());
        assert_eq!(r.entry.to_str().unwrap(), "main_cs");
        assert_eq!(r.bindings.len(), 2);
    }

    #[test]
    fn bad_magic_is_an_error() {
        let mut module = compute_module(&[]);
        module[0] = 0x1234_5678;
        let err = read_words(&to_bytes(&module, u32::to_le_bytes))
            .unwrap_err()
            .to_string();
        assert_eq!(err, "not SPIR-V: bad magic 0x12345678");
        let err = read_words(&[0; 8]).unwrap_err().to_string();
        assert!(err.contains("size 8"), "{err}");
    }

    #[test]
    fn truncated_instruction_is_an_error() {
        let mut module = compute_module(&[]);
        let last = module.len() - 4; // OpTypeArray: 4 words
        module.pop();
        let err = reflect(&module).unwrap_err().to_string();
        assert_eq!(
            err,
            format!("malformed SPIR-V: instruction at word {last} (opcode 28) has word count 4")
        );
        module[last] = OP_TYPE_ARRAY; // word count 0
        let err = reflect(&module).unwrap_err().to_string();
        assert!(err.ends_with("(opcode 28) has word count 0"), "{err}");
    }
}
