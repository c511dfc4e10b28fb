//! Decoding of one `.npy` member: a small, strict header parser and the element decoder.
//!
//! The header is parsed here rather than by `npyz`'s reader so that corrupt headers (absurd
//! shapes, overflowing sizes) always become errors and never panics or huge allocations; the
//! dtype string itself is parsed by [`npyz::TypeStr`].

use super::array::{Array, NdArray, element_count};
use npyz::{Endianness, TypeChar, TypeStr};

/// The magic string that starts every `.npy` file.
const MAGIC: &[u8] = b"\x93NUMPY";

/// The parsed header of a `.npy` file.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct NpyHeader {
    /// The numpy dtype string, e.g. `<f4`.
    pub descr: String,
    /// Whether the data is stored column-major.
    pub fortran_order: bool,
    /// The array's shape.
    pub shape: Vec<usize>,
}

/// Decodes a whole `.npy` file held in memory.
pub(crate) fn decode_npy(bytes: &[u8]) -> Result<Array, String> {
    let (header, data) = parse_header(bytes)?;
    let type_str: TypeStr = header
        .descr
        .parse()
        .map_err(|e| format!("invalid dtype '{}': {e}", header.descr))?;
    let item_size = type_str
        .num_bytes()
        .ok_or_else(|| format!("unsupported dtype '{}'", header.descr))?;
    let count = element_count(&header.shape)
        .ok_or_else(|| format!("shape {:?} overflows", header.shape))?;
    let expected = count
        .checked_mul(item_size)
        .ok_or_else(|| format!("shape {:?} overflows", header.shape))?;
    if data.len() != expected {
        return Err(format!(
            "shape {:?} of dtype '{}' needs {expected} data bytes, found {} (truncated or corrupt)",
            header.shape,
            header.descr,
            data.len()
        ));
    }
    let array = decode_elements(&type_str, &header.descr, header.shape.clone(), data)?;
    Ok(if header.fortran_order {
        fortran_to_c(array)
    } else {
        array
    })
}

/// Splits a `.npy` file into its parsed header and its data bytes.
pub(crate) fn parse_header(bytes: &[u8]) -> Result<(NpyHeader, &[u8]), String> {
    if bytes.len() < 10 || !bytes.starts_with(MAGIC) {
        return Err("not an npy file (bad magic)".into());
    }
    let major = bytes[6];
    let (len, start): (usize, usize) = match major {
        1 => (usize::from(u16::from_le_bytes([bytes[8], bytes[9]])), 10),
        2 | 3 => {
            let raw = bytes
                .get(8..12)
                .ok_or("truncated npy header")?
                .try_into()
                .map_err(|_| "truncated npy header")?;
            let len = usize::try_from(u32::from_le_bytes(raw)).map_err(|_| "header too long")?;
            (len, 12)
        }
        v => return Err(format!("unsupported npy format version {v}")),
    };
    let end = start.checked_add(len).ok_or("header length overflows")?;
    let text = bytes.get(start..end).ok_or("truncated npy header")?;
    let text = std::str::from_utf8(text).map_err(|_| "npy header is not UTF-8")?;
    let header = parse_dict(text)?;
    Ok((header, &bytes[end..]))
}

/// A value of the tiny Python-literal subset used by npy headers.
#[derive(Debug, Clone, PartialEq)]
enum Literal {
    Str(String),
    Bool(bool),
    Int(usize),
    Tuple(Vec<Literal>),
    /// A list (only used by structured dtypes, which are unsupported; kept for error messages).
    List,
}

/// Parses `{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }`.
fn parse_dict(text: &str) -> Result<NpyHeader, String> {
    let mut p = Parser {
        s: text.as_bytes(),
        i: 0,
    };
    p.expect(b'{')?;
    let (mut descr, mut fortran, mut shape) = (None, None, None);
    loop {
        p.skip_ws();
        if p.eat(b'}') {
            break;
        }
        let Literal::Str(key) = p.literal()? else {
            return Err("npy header: dict key is not a string".into());
        };
        p.expect(b':')?;
        let value = p.literal()?;
        match (key.as_str(), value) {
            ("descr", Literal::Str(s)) => descr = Some(s),
            ("descr", _) => return Err("structured dtypes are not supported".into()),
            ("fortran_order", Literal::Bool(b)) => fortran = Some(b),
            ("shape", Literal::Tuple(items)) => shape = Some(shape_from(items)?),
            (k, _) => return Err(format!("npy header: unexpected entry '{k}'")),
        }
        p.skip_ws();
        if !p.eat(b',') {
            p.expect(b'}')?;
            break;
        }
    }
    Ok(NpyHeader {
        descr: descr.ok_or("npy header has no 'descr'")?,
        fortran_order: fortran.ok_or("npy header has no 'fortran_order'")?,
        shape: shape.ok_or("npy header has no 'shape'")?,
    })
}

/// Converts a tuple literal to a shape.
fn shape_from(items: Vec<Literal>) -> Result<Vec<usize>, String> {
    items
        .into_iter()
        .map(|item| match item {
            Literal::Int(v) => Ok(v),
            other => Err(format!("npy header: bad shape entry {other:?}")),
        })
        .collect()
}

/// A byte-level cursor over the header text.
struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn skip_ws(&mut self) {
        while self.s.get(self.i).is_some_and(|c| c.is_ascii_whitespace()) {
            self.i += 1;
        }
    }

    fn eat(&mut self, c: u8) -> bool {
        self.skip_ws();
        if self.s.get(self.i) == Some(&c) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, c: u8) -> Result<(), String> {
        if self.eat(c) {
            Ok(())
        } else {
            Err(format!(
                "npy header: expected '{}' at byte {}",
                char::from(c),
                self.i
            ))
        }
    }

    fn literal(&mut self) -> Result<Literal, String> {
        self.skip_ws();
        match self.s.get(self.i) {
            Some(b'\'' | b'"') => self.string(),
            Some(b'(') => self.sequence(b')').map(Literal::Tuple),
            Some(b'[') => self.sequence(b']').map(|_| Literal::List),
            Some(c) if c.is_ascii_digit() => self.integer(),
            Some(_) => self.word(),
            None => Err("npy header: unexpected end".into()),
        }
    }

    fn string(&mut self) -> Result<Literal, String> {
        let quote = self.s[self.i];
        let rest = &self.s[self.i + 1..];
        let len = rest
            .iter()
            .position(|&c| c == quote)
            .ok_or("npy header: unterminated string")?;
        let text = std::str::from_utf8(&rest[..len]).map_err(|_| "npy header: bad string")?;
        self.i += len + 2;
        Ok(Literal::Str(text.to_string()))
    }

    fn sequence(&mut self, close: u8) -> Result<Vec<Literal>, String> {
        self.i += 1;
        let mut items = Vec::new();
        loop {
            if self.eat(close) {
                return Ok(items);
            }
            items.push(self.literal()?);
            if !self.eat(b',') {
                self.expect(close)?;
                return Ok(items);
            }
        }
    }

    fn integer(&mut self) -> Result<Literal, String> {
        let start = self.i;
        while self.s.get(self.i).is_some_and(u8::is_ascii_digit) {
            self.i += 1;
        }
        let digits = std::str::from_utf8(&self.s[start..self.i]).map_err(|_| "bad integer")?;
        // Python 2 wrote long integers with an `L` suffix.
        if self.s.get(self.i) == Some(&b'L') {
            self.i += 1;
        }
        digits
            .parse()
            .map(Literal::Int)
            .map_err(|_| format!("npy header: integer {digits} out of range"))
    }

    fn word(&mut self) -> Result<Literal, String> {
        let start = self.i;
        while self.s.get(self.i).is_some_and(u8::is_ascii_alphabetic) {
            self.i += 1;
        }
        match &self.s[start..self.i] {
            b"True" => Ok(Literal::Bool(true)),
            b"False" => Ok(Literal::Bool(false)),
            other => Err(format!(
                "npy header: unexpected token '{}'",
                String::from_utf8_lossy(other)
            )),
        }
    }
}

/// Decodes `N`-byte elements with the given byte order.
fn decode<T, const N: usize>(
    data: &[u8],
    big_endian: bool,
    from_le: fn([u8; N]) -> T,
    from_be: fn([u8; N]) -> T,
) -> Vec<T> {
    data.chunks_exact(N)
        .map(|chunk| {
            let mut bytes = [0u8; N];
            bytes.copy_from_slice(chunk);
            if big_endian {
                from_be(bytes)
            } else {
                from_le(bytes)
            }
        })
        .collect()
}

/// Decodes the data bytes into the [`Array`] variant matching the dtype.
fn decode_elements(
    ts: &TypeStr,
    descr: &str,
    shape: Vec<usize>,
    data: &[u8],
) -> Result<Array, String> {
    let be = ts.endianness() == Endianness::Big;
    let array = match (ts.type_char(), ts.num_bytes()) {
        (TypeChar::Float, Some(4)) => nd(
            shape,
            decode(data, be, f32::from_le_bytes, f32::from_be_bytes),
        ),
        (TypeChar::Float, Some(8)) => nd(
            shape,
            decode(data, be, f64::from_le_bytes, f64::from_be_bytes),
        ),
        (TypeChar::Int, Some(1)) => nd(
            shape,
            decode(data, be, i8::from_le_bytes, i8::from_be_bytes),
        ),
        (TypeChar::Int, Some(2)) => nd(
            shape,
            decode(data, be, i16::from_le_bytes, i16::from_be_bytes),
        ),
        (TypeChar::Int, Some(4)) => nd(
            shape,
            decode(data, be, i32::from_le_bytes, i32::from_be_bytes),
        ),
        (TypeChar::Int, Some(8)) => nd(
            shape,
            decode(data, be, i64::from_le_bytes, i64::from_be_bytes),
        ),
        (TypeChar::Uint, Some(1)) => nd(
            shape,
            decode(data, be, u8::from_le_bytes, u8::from_be_bytes),
        ),
        (TypeChar::Uint, Some(2)) => nd(
            shape,
            decode(data, be, u16::from_le_bytes, u16::from_be_bytes),
        ),
        (TypeChar::Uint, Some(4)) => nd(
            shape,
            decode(data, be, u32::from_le_bytes, u32::from_be_bytes),
        ),
        (TypeChar::Uint, Some(8)) => nd(
            shape,
            decode(data, be, u64::from_le_bytes, u64::from_be_bytes),
        ),
        (TypeChar::Bool, Some(1)) => Array::Bool(decode_bools(shape, data)?),
        _ => return Err(format!("unsupported dtype '{descr}'")),
    };
    Ok(array)
}

/// Wraps decoded data (whose length was checked against the shape) in an [`Array`].
fn nd<T>(shape: Vec<usize>, data: Vec<T>) -> Array
where
    NdArray<T>: Into<Array>,
{
    NdArray { shape, data }.into()
}

/// Decodes numpy bools, rejecting bytes other than 0 and 1.
fn decode_bools(shape: Vec<usize>, data: &[u8]) -> Result<NdArray<bool>, String> {
    let values = data
        .iter()
        .enumerate()
        .map(|(i, &b)| match b {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(format!("element {i}: invalid bool byte {v}")),
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(NdArray {
        shape,
        data: values,
    })
}

/// Reorders a column-major array into row-major order.
fn fortran_to_c(array: Array) -> Array {
    super::array::map_inner!(array, a => transpose_fortran(a))
}

/// Reorders the data of one column-major array into row-major order.
fn transpose_fortran<T: Copy>(a: NdArray<T>) -> NdArray<T> {
    let shape = a.shape;
    if shape.len() < 2 || a.data.is_empty() {
        return NdArray {
            shape,
            data: a.data,
        };
    }
    // Column-major strides: axis 0 is contiguous.
    let mut strides = vec![1usize; shape.len()];
    for k in 1..shape.len() {
        strides[k] = strides[k - 1] * shape[k - 1];
    }
    let mut index = vec![0usize; shape.len()];
    let mut data = Vec::with_capacity(a.data.len());
    for _ in 0..a.data.len() {
        let offset: usize = index.iter().zip(&strides).map(|(i, s)| i * s).sum();
        data.push(a.data[offset]);
        // Advance the row-major multi-index (last axis fastest).
        for k in (0..shape.len()).rev() {
            index[k] += 1;
            if index[k] < shape[k] {
                break;
            }
            index[k] = 0;
        }
    }
    NdArray { shape, data }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn npy(header: &str, data: &[u8]) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.extend([1, 0]);
        out.extend((header.len() as u16).to_le_bytes());
        out.extend(header.as_bytes());
        out.extend(data);
        out
    }

    #[test]
    fn parses_numpy_header() {
        let bytes = npy(
            "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }          \n",
            &[0; 24],
        );
        let (h, data) = parse_header(&bytes).unwrap();
        assert_eq!(h.descr, "<f4");
        assert!(!h.fortran_order);
        assert_eq!(h.shape, vec![2, 3]);
        assert_eq!(data.len(), 24);
    }

    #[test]
    fn parses_scalar_and_1d_shapes() {
        let s = npy(
            "{'descr': '<f8', 'fortran_order': False, 'shape': (), }",
            &[0; 8],
        );
        assert_eq!(decode_npy(&s).unwrap().shape(), &[] as &[usize]);
        let v = npy(
            "{'descr': '|b1', 'fortran_order': False, 'shape': (3,), }",
            &[1, 0, 1],
        );
        assert_eq!(
            decode_npy(&v).unwrap(),
            Array::Bool(NdArray {
                shape: vec![3],
                data: vec![true, false, true]
            })
        );
    }

    #[test]
    fn rejects_overflowing_and_truncated_data() {
        let huge = npy(
            "{'descr': '<f4', 'fortran_order': False, 'shape': (18446744073709551615, 4), }",
            &[],
        );
        assert!(decode_npy(&huge).unwrap_err().contains("overflows"));
        let short = npy(
            "{'descr': '<f4', 'fortran_order': False, 'shape': (4,), }",
            &[0; 15],
        );
        assert!(
            decode_npy(&short)
                .unwrap_err()
                .contains("needs 16 data bytes")
        );
        assert!(decode_npy(b"garbage").is_err());
        let unterminated = npy("{'descr': '<f4', 'fortran_order': False, 'shape': (4,", &[]);
        assert!(decode_npy(&unterminated).is_err());
    }

    #[test]
    fn big_endian_and_fortran_order() {
        let data: Vec<u8> = [1i32, 2, 3, 4, 5, 6]
            .iter()
            .flat_map(|v| v.to_be_bytes())
            .collect();
        let bytes = npy(
            "{'descr': '>i4', 'fortran_order': True, 'shape': (2, 3), }",
            &data,
        );
        // Column-major [[1,3,5],[2,4,6]].
        assert_eq!(
            decode_npy(&bytes).unwrap(),
            Array::I32(NdArray {
                shape: vec![2, 3],
                data: vec![1, 3, 5, 2, 4, 6]
            })
        );
    }
}
