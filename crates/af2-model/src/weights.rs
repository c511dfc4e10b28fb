//! Applies AlphaFold weights (already renamed to our module paths by `af2-io`'s mapping table)
//! to a Burn module, through burn-store's safetensors importer.

use burn::module::Module;
use burn_store::{ModuleSnapshot, SafetensorsStore};

use af2_io::weights::{ParamStore, safetensors_bytes};

/// A weight set that does not fit the module built for it.
#[derive(Debug, thiserror::Error)]
pub enum WeightError {
    /// The parameter store could not be serialised.
    #[error("could not prepare weights: {0}")]
    Io(#[from] af2_io::IoError),
    /// burn-store refused the tensors.
    #[error("could not apply weights: {0}")]
    Store(String),
    /// Names or shapes did not match.
    #[error("weights do not fit the model:\n{0}")]
    Mismatch(String),
}

/// Loads every tensor of `store` into `module`. Every parameter of the module must receive a
/// tensor of its shape, and every tensor of the store must be used.
pub fn load_module<M: Module + ModuleSnapshot>(
    module: &mut M,
    store: &ParamStore,
) -> Result<(), WeightError> {
    let bytes = safetensors_bytes(store)?;
    let mut source = SafetensorsStore::from_bytes(Some(bytes))
        .allow_partial(true)
        .validate(false);
    let result = module.load_from(&mut source);
    // burn-store writes the values into the existing parameters, keeping their ids.
    af2_layers::derived::parameters_loaded();
    let result = result.map_err(|e| WeightError::Store(e.to_string()))?;
    let mut problems: Vec<String> = Vec::new();
    problems.extend(result.errors.iter().map(|e| format!("  {e:?}")));
    problems.extend(
        result
            .missing
            .iter()
            .map(|(path, _)| format!("  missing weight for parameter `{path}`")),
    );
    problems.extend(
        result
            .unused
            .iter()
            .map(|path| format!("  weight `{path}` matches no parameter")),
    );
    if problems.is_empty() {
        Ok(())
    } else {
        let total = problems.len();
        problems.truncate(20);
        if total > 20 {
            problems.push(format!("  ... and {} more", total - 20));
        }
        Err(WeightError::Mismatch(problems.join("\n")))
    }
}
