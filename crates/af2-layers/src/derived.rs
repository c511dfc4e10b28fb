//! Tensors derived from a module's parameters (concatenated or reshaped weights), computed on
//! first use and kept while the parameters stay the same: a forward pass then records no
//! operations (and launches no copies) to rebuild them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use burn::module::ParamId;
use burn::tensor::{DType, Device};

/// Counts in-place parameter loads; a derived tensor computed before the last load is stale.
static LOADS: AtomicU64 = AtomicU64::new(0);

/// Marks every derived tensor of the process stale. Call it after writing new values into
/// existing parameters in place: burn-store's loader keeps parameter ids, so the ids alone do
/// not show the change (`af2_model::weights::load_module` calls it).
pub fn parameters_loaded() {
    LOADS.fetch_add(1, Ordering::SeqCst);
}

/// How many times [`parameters_loaded`] was called: a value computed from parameters (a
/// recorded graph that reads them) before the last load is stale.
pub fn load_count() -> u64 {
    LOADS.load(Ordering::SeqCst)
}

/// What a derived value was computed from: the parameters (replacing a parameter gives it a
/// new id), their dtype and device (a cast or a move keeps the ids), and the load count.
#[derive(Clone, Debug, PartialEq)]
struct Source {
    params: Vec<ParamId>,
    dtype: DType,
    device: Device,
    loads: u64,
}

/// A value computed from parameters, kept for as long as they stay the same; every read checks
/// it against its source. A clone starts empty: a module's clone may be given other values
/// under the same parameter ids (a load in place, a cast there and back), so it computes its own.
pub struct Derived<T> {
    slot: Arc<Mutex<Option<(Source, T)>>>,
}

impl<T> Default for Derived<T> {
    fn default() -> Self {
        Self {
            slot: Arc::new(Mutex::new(None)),
        }
    }
}

impl<T> Clone for Derived<T> {
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl<T> std::fmt::Debug for Derived<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Derived")
    }
}

impl<T: Clone> Derived<T> {
    /// The value for parameters `params` of `dtype` on `device`: the kept one if it was computed
    /// from them, else `compute()`'s, which is kept.
    pub fn get_or_compute(
        &self,
        params: Vec<ParamId>,
        dtype: DType,
        device: Device,
        compute: impl FnOnce() -> T,
    ) -> T {
        let source = Source {
            params,
            dtype,
            device,
            loads: LOADS.load(Ordering::SeqCst),
        };
        let mut slot = self
            .slot
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((kept, value)) = slot.as_ref()
            && *kept == source
        {
            return value.clone();
        }
        let value = compute();
        *slot = Some((source, value.clone()));
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[allow(deprecated)] // ndarray is the CPU reference backend.
    fn device() -> Device {
        Device::ndarray()
    }

    #[test]
    fn recomputes_only_when_the_source_changes() {
        let derived = Derived::<usize>::default();
        let calls = Cell::new(0);
        let get = |params: Vec<ParamId>, dtype: DType| {
            derived.get_or_compute(params, dtype, device(), || {
                calls.set(calls.get() + 1);
                calls.get()
            })
        };
        let (a, b) = (ParamId::new(), ParamId::new());
        assert_eq!(get(vec![a, b], DType::F32), 1);
        assert_eq!(get(vec![a, b], DType::F32), 1, "same parameters: kept");
        assert_eq!(
            get(vec![a, ParamId::new()], DType::F32),
            2,
            "a replaced parameter"
        );
        assert_eq!(get(vec![a, ParamId::new()], DType::F32), 3);
        let c = ParamId::new();
        assert_eq!(get(vec![c], DType::F32), 4);
        assert_eq!(get(vec![c], DType::F16), 5, "a cast");
        assert_eq!(get(vec![c], DType::F16), 5);
        parameters_loaded();
        assert_eq!(get(vec![c], DType::F16), 6, "values loaded in place");
        let clone = derived.clone();
        assert_eq!(
            clone.get_or_compute(vec![c], DType::F16, device(), || 0),
            0,
            "a clone computes its own"
        );
        assert_eq!(get(vec![c], DType::F16), 6, "the original keeps its value");
    }
}
