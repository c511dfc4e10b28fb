//! Plain row-major n-dimensional arrays and the dtype-tagged [`Array`] enum.

use crate::error::{IoError, Result};

/// A dense row-major (C order) n-dimensional array.
#[derive(Debug, Clone, PartialEq)]
pub struct NdArray<T> {
    /// Extent of each axis; empty for a scalar.
    pub shape: Vec<usize>,
    /// The elements, last axis fastest; `data.len()` is the product of `shape`.
    pub data: Vec<T>,
}

impl<T> NdArray<T> {
    /// Builds an array, checking that `data.len()` matches the shape.
    pub fn new(shape: Vec<usize>, data: Vec<T>) -> Result<Self> {
        let expected = element_count(&shape).ok_or_else(|| {
            IoError::invalid("<array>", format!("shape {shape:?} overflows usize"))
        })?;
        if expected != data.len() {
            return Err(IoError::invalid(
                "<array>",
                format!(
                    "shape {shape:?} needs {expected} elements, data has {}",
                    data.len()
                ),
            ));
        }
        Ok(NdArray { shape, data })
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// Whether the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Applies `f` to every element.
    pub fn map<U>(&self, f: impl FnMut(&T) -> U) -> NdArray<U> {
        NdArray {
            shape: self.shape.clone(),
            data: self.data.iter().map(f).collect(),
        }
    }
}

impl<T: Clone> NdArray<T> {
    /// Returns slice `index` of the leading axis (the result has one axis fewer), or `None` if
    /// the array is a scalar or `index` is out of range.
    pub fn index_axis0(&self, index: usize) -> Option<NdArray<T>> {
        let (&first, rest) = self.shape.split_first()?;
        if index >= first {
            return None;
        }
        let stride = element_count(rest)?;
        let start = index.checked_mul(stride)?;
        let data = self.data.get(start..start.checked_add(stride)?)?.to_vec();
        Some(NdArray {
            shape: rest.to_vec(),
            data,
        })
    }
}

/// Product of a shape's extents, `None` on overflow.
pub(crate) fn element_count(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
}

/// An array read from (or to be written to) an npz archive, tagged with its element type.
#[derive(Debug, Clone, PartialEq)]
pub enum Array {
    /// `float32`.
    F32(NdArray<f32>),
    /// `float64`.
    F64(NdArray<f64>),
    /// `int8`.
    I8(NdArray<i8>),
    /// `int16`.
    I16(NdArray<i16>),
    /// `int32`.
    I32(NdArray<i32>),
    /// `int64`.
    I64(NdArray<i64>),
    /// `uint8`.
    U8(NdArray<u8>),
    /// `uint16`.
    U16(NdArray<u16>),
    /// `uint32`.
    U32(NdArray<u32>),
    /// `uint64`.
    U64(NdArray<u64>),
    /// `bool`.
    Bool(NdArray<bool>),
}

/// Runs `$body` with `$a` bound to the inner `NdArray` of any variant.
macro_rules! with_inner {
    ($array:expr, $a:ident => $body:expr) => {
        match $array {
            Array::F32($a) => $body,
            Array::F64($a) => $body,
            Array::I8($a) => $body,
            Array::I16($a) => $body,
            Array::I32($a) => $body,
            Array::I64($a) => $body,
            Array::U8($a) => $body,
            Array::U16($a) => $body,
            Array::U32($a) => $body,
            Array::U64($a) => $body,
            Array::Bool($a) => $body,
        }
    };
}

/// Re-wraps `$a` (an `NdArray` of the same element type as the matched variant) in that variant.
macro_rules! map_inner {
    ($array:expr, $a:ident => $body:expr) => {
        match $array {
            Array::F32($a) => Array::F32($body),
            Array::F64($a) => Array::F64($body),
            Array::I8($a) => Array::I8($body),
            Array::I16($a) => Array::I16($body),
            Array::I32($a) => Array::I32($body),
            Array::I64($a) => Array::I64($body),
            Array::U8($a) => Array::U8($body),
            Array::U16($a) => Array::U16($body),
            Array::U32($a) => Array::U32($body),
            Array::U64($a) => Array::U64($body),
            Array::Bool($a) => Array::Bool($body),
        }
    };
}

impl Array {
    /// The array's shape.
    pub fn shape(&self) -> &[usize] {
        with_inner!(self, a => &a.shape)
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        with_inner!(self, a => a.data.len())
    }

    /// Whether the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The numpy dtype name of the elements (`"float32"`, `"int64"`, `"bool"`, ...).
    pub fn dtype_name(&self) -> &'static str {
        match self {
            Array::F32(_) => "float32",
            Array::F64(_) => "float64",
            Array::I8(_) => "int8",
            Array::I16(_) => "int16",
            Array::I32(_) => "int32",
            Array::I64(_) => "int64",
            Array::U8(_) => "uint8",
            Array::U16(_) => "uint16",
            Array::U32(_) => "uint32",
            Array::U64(_) => "uint64",
            Array::Bool(_) => "bool",
        }
    }

    /// Converts any element type to `f32` (`bool` → 0/1; wide integers and `f64` round).
    pub fn to_f32(&self) -> NdArray<f32> {
        match self {
            Array::F32(a) => a.clone(),
            Array::F64(a) => a.map(|&v| v as f32),
            Array::I8(a) => a.map(|&v| f32::from(v)),
            Array::I16(a) => a.map(|&v| f32::from(v)),
            Array::I32(a) => a.map(|&v| v as f32),
            Array::I64(a) => a.map(|&v| v as f32),
            Array::U8(a) => a.map(|&v| f32::from(v)),
            Array::U16(a) => a.map(|&v| f32::from(v)),
            Array::U32(a) => a.map(|&v| v as f32),
            Array::U64(a) => a.map(|&v| v as f32),
            Array::Bool(a) => a.map(|&v| if v { 1.0 } else { 0.0 }),
        }
    }

    /// Converts to `i64`: integers and `bool` always; `f32`/`f64` only if every value is a
    /// finite integer within range; `uint64` only if every value fits.
    pub fn to_i64(&self) -> Result<NdArray<i64>> {
        match self {
            Array::F32(a) => floats_to_i64(a.map(|&v| f64::from(v)), "float32"),
            Array::F64(a) => floats_to_i64(a.clone(), "float64"),
            Array::I8(a) => Ok(a.map(|&v| i64::from(v))),
            Array::I16(a) => Ok(a.map(|&v| i64::from(v))),
            Array::I32(a) => Ok(a.map(|&v| i64::from(v))),
            Array::I64(a) => Ok(a.clone()),
            Array::U8(a) => Ok(a.map(|&v| i64::from(v))),
            Array::U16(a) => Ok(a.map(|&v| i64::from(v))),
            Array::U32(a) => Ok(a.map(|&v| i64::from(v))),
            Array::U64(a) => u64_to_i64(a),
            Array::Bool(a) => Ok(a.map(|&v| i64::from(v))),
        }
    }

    /// Returns slice `index` of the leading axis, or `None` for a scalar or an index out of range.
    pub fn index_axis0(&self, index: usize) -> Option<Array> {
        Some(map_inner!(self, a => a.index_axis0(index)?))
    }
}

/// Converts floats to `i64`, failing on the first non-integral or out-of-range value.
fn floats_to_i64(a: NdArray<f64>, from: &'static str) -> Result<NdArray<i64>> {
    // i64::MAX as f64 rounds up to 2^63, which is itself out of range: use a strict bound.
    const LIMIT: f64 = 9_223_372_036_854_775_808.0;
    let mut data = Vec::with_capacity(a.data.len());
    for (i, &v) in a.data.iter().enumerate() {
        if !v.is_finite() || v.fract() != 0.0 || !(-LIMIT..LIMIT).contains(&v) {
            return Err(IoError::Conversion {
                from,
                to: "int64",
                message: format!("element {i} is {v}, not an integer in range"),
            });
        }
        data.push(v as i64);
    }
    Ok(NdArray {
        shape: a.shape,
        data,
    })
}

/// Converts `u64` to `i64`, failing on the first value above `i64::MAX`.
fn u64_to_i64(a: &NdArray<u64>) -> Result<NdArray<i64>> {
    let mut data = Vec::with_capacity(a.data.len());
    for (i, &v) in a.data.iter().enumerate() {
        let converted = i64::try_from(v).map_err(|_| IoError::Conversion {
            from: "uint64",
            to: "int64",
            message: format!("element {i} is {v}, above i64::MAX"),
        })?;
        data.push(converted);
    }
    Ok(NdArray {
        shape: a.shape.clone(),
        data,
    })
}

/// Element types that can be wrapped in an [`Array`].
pub trait Element: Sized {
    /// Wraps an `NdArray` of this element type.
    fn wrap(array: NdArray<Self>) -> Array;
}

macro_rules! impl_element {
    ($($t:ty => $variant:ident),* $(,)?) => {
        $(impl Element for $t {
            fn wrap(array: NdArray<Self>) -> Array {
                Array::$variant(array)
            }
        })*
    };
}

impl_element!(
    f32 => F32, f64 => F64, i8 => I8, i16 => I16, i32 => I32, i64 => I64,
    u8 => U8, u16 => U16, u32 => U32, u64 => U64, bool => Bool,
);

impl<T: Element> From<NdArray<T>> for Array {
    fn from(array: NdArray<T>) -> Array {
        T::wrap(array)
    }
}

pub(crate) use {map_inner, with_inner};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn to_i64_accepts_integral_floats_and_rejects_fractions() {
        let ok = Array::F32(NdArray::new(vec![2], vec![1.0, -3.0]).unwrap());
        assert_eq!(ok.to_i64().unwrap().data, vec![1, -3]);
        let bad = Array::F64(NdArray::new(vec![2], vec![1.0, 2.5]).unwrap());
        let err = bad.to_i64().unwrap_err().to_string();
        assert!(err.contains("element 1 is 2.5"), "{err}");
        let nan = Array::F32(NdArray::new(vec![1], vec![f32::NAN]).unwrap());
        assert!(nan.to_i64().is_err());
    }

    #[test]
    fn to_f32_converts_bools_and_ints() {
        let b = Array::Bool(NdArray::new(vec![2], vec![true, false]).unwrap());
        assert_eq!(b.to_f32().data, vec![1.0, 0.0]);
        let i = Array::I64(NdArray::new(vec![1], vec![7]).unwrap());
        assert_eq!(i.to_f32().data, vec![7.0]);
        assert_eq!(i.to_i64().unwrap().data, vec![7]);
    }

    #[test]
    fn index_axis0_slices_leading_axis() {
        let a = NdArray::new(vec![3, 2], vec![0, 1, 2, 3, 4, 5]).unwrap();
        let s = a.index_axis0(1).unwrap();
        assert_eq!(s.shape, vec![2]);
        assert_eq!(s.data, vec![2, 3]);
        assert!(a.index_axis0(3).is_none());
        let scalar = NdArray::new(vec![], vec![1]).unwrap();
        assert!(scalar.index_axis0(0).is_none());
    }

    #[test]
    fn new_rejects_mismatched_length() {
        assert!(NdArray::new(vec![2, 2], vec![1.0f32; 3]).is_err());
    }
}
