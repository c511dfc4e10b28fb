//! The designs table of `af2 screen`: a CSV file with a header that names (at least) the columns
//! `id` and `sequence`, in any order; other columns are ignored.
//!
//! A bad row never aborts the read: it is returned as a [`DesignRowError`] (its line and why), and
//! the good rows are returned in file order. Only problems with the file as a whole (it cannot be
//! read, or its header lacks a column) are errors of [`read_designs`].
//!
//! A row is bad when it has too few fields, an empty or duplicate `id`, or a `sequence` that is
//! empty or holds anything but the 20 standard amino-acid letters (case is ignored; spaces around
//! fields are trimmed).

use std::io::Read;
use std::path::Path;

use crate::error::IoError;
use crate::sequence::{InputError, InputResult};

/// The 20 standard amino acids, the letters a design sequence may use.
pub const DESIGN_ALPHABET: &str = "ACDEFGHIKLMNPQRSTVWY";

/// One valid row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Design {
    /// The `id` field.
    pub id: String,
    /// The `sequence` field, upper-cased.
    pub sequence: String,
    /// 1-based line where the row starts.
    pub line: u64,
}

/// A row that was skipped, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesignRowError {
    /// 1-based line where the row starts.
    pub line: u64,
    /// The row's `id`, when it has a non-empty one.
    pub id: Option<String>,
    /// What is wrong.
    pub reason: String,
}

impl std::fmt::Display for DesignRowError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.id {
            Some(id) => write!(f, "line {} (id '{id}'): {}", self.line, self.reason),
            None => write!(f, "line {}: {}", self.line, self.reason),
        }
    }
}

/// The rows of a designs file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DesignTable {
    /// Valid rows, in file order.
    pub designs: Vec<Design>,
    /// Skipped rows, in file order.
    pub errors: Vec<DesignRowError>,
}

/// Reads a designs CSV file (see the module documentation).
pub fn read_designs(path: &Path) -> InputResult<DesignTable> {
    let file = std::fs::File::open(path).map_err(|e| IoError::io(path, "open", e))?;
    parse_designs(std::io::BufReader::new(file), &path.display().to_string())
}

/// Parses a designs CSV from any reader; `source_name` names it in errors.
pub fn parse_designs<R: Read>(mut reader: R, source_name: &str) -> InputResult<DesignTable> {
    // Read it whole (design tables are small) and turn CRLF into LF: with CRLF line ends the csv
    // crate reports each record's line as the previous line.
    let mut bytes = Vec::new();
    reader
        .read_to_end(&mut bytes)
        .map_err(|e| InputError::parse(source_name, 0, format!("cannot read: {e}")))?;
    let mut body = Vec::with_capacity(bytes.len());
    for (i, &b) in bytes.iter().enumerate() {
        if !(b == b'\r' && bytes.get(i + 1) == Some(&b'\n')) {
            body.push(b);
        }
    }
    let mut csv = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .from_reader(body.as_slice());
    let csv_error = |e: csv::Error| {
        let line = e.position().map_or(0, |p| p.line() as usize);
        InputError::parse(source_name, line, format!("cannot read CSV: {e}"))
    };
    let headers = csv.byte_headers().map_err(csv_error)?.clone();
    let names: Vec<String> = headers
        .iter()
        .map(|h| {
            String::from_utf8_lossy(h)
                .trim_start_matches('\u{feff}')
                .trim()
                .to_ascii_lowercase()
        })
        .collect();
    let column = |name: &str| {
        names.iter().position(|n| n == name).ok_or_else(|| {
            InputError::parse(
                source_name,
                1,
                format!(
                    "the header has no '{name}' column; expected a header line naming the columns 'id' and 'sequence' (found: {})",
                    names.join(", ")
                ),
            )
        })
    };
    let id_col = column("id")?;
    let seq_col = column("sequence")?;

    let mut table = DesignTable::default();
    let mut seen: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
    let mut record = csv::ByteRecord::new();
    loop {
        match csv.read_byte_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) => return Err(csv_error(e)),
        }
        let line = record.position().map_or(0, |p| p.line());
        let field = |col: usize| {
            record
                .get(col)
                .map(|b| String::from_utf8(b.to_vec()).map(|s| s.trim().to_string()))
        };
        let id = match field(id_col) {
            Some(Ok(id)) if !id.is_empty() => Some(id),
            _ => None,
        };
        let reject = |reason: String| DesignRowError {
            line,
            id: id.clone(),
            reason,
        };
        let result = match (field(id_col), field(seq_col)) {
            (None, _) | (_, None) => Err(reject(format!(
                "row has {} fields; expected at least {} (columns 'id' and 'sequence')",
                record.len(),
                id_col.max(seq_col) + 1
            ))),
            (Some(Err(_)), _) | (_, Some(Err(_))) => Err(reject("field is not UTF-8 text".into())),
            (Some(Ok(id_text)), Some(Ok(sequence))) => {
                check_row(&id_text, &sequence, &seen).map_err(reject)
            }
        };
        match result {
            Ok(design_sequence) => {
                let id = id.expect("checked non-empty");
                seen.insert(id.clone(), line);
                table.designs.push(Design {
                    id,
                    sequence: design_sequence,
                    line,
                });
            }
            Err(error) => table.errors.push(error),
        }
    }
    Ok(table)
}

/// Validates one row; returns the upper-cased sequence or the reason for rejection.
fn check_row(
    id: &str,
    sequence: &str,
    seen: &std::collections::HashMap<String, u64>,
) -> Result<String, String> {
    if id.is_empty() {
        return Err("empty 'id'; expected a non-empty identifier".into());
    }
    if let Some(first) = seen.get(id) {
        return Err(format!("duplicate id '{id}' (first used on line {first})"));
    }
    if sequence.is_empty() {
        return Err("empty 'sequence'; expected amino-acid letters".into());
    }
    let upper = sequence.to_ascii_uppercase();
    if let Some((pos, c)) = upper
        .char_indices()
        .find(|&(_, c)| !DESIGN_ALPHABET.contains(c))
    {
        return Err(format!(
            "invalid residue {c:?} at position {} of 'sequence'; expected one of {DESIGN_ALPHABET}",
            upper[..pos].chars().count() + 1
        ));
    }
    Ok(upper)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_and_bad_rows() {
        let text = "name,sequence,id,score\n\
                    x,acdef,d1,1\n\
                    x,MKB,d2,2\n\
                    x,,d3,3\n\
                    x,MKV,,4\n\
                    x,MKV,d1,5\n\
                    x\n\
                    x,\" GGS \",d4,6\n\
                    x,\"MK\nV\",d5,7\n\
                    x,WW,d6\n";
        let table = parse_designs(text.as_bytes(), "d.csv").unwrap();
        let ok: Vec<(&str, &str, u64)> = table
            .designs
            .iter()
            .map(|d| (d.id.as_str(), d.sequence.as_str(), d.line))
            .collect();
        assert_eq!(
            ok,
            vec![("d1", "ACDEF", 2), ("d4", "GGS", 8), ("d6", "WW", 11)]
        );
        let bad: Vec<(u64, Option<&str>)> = table
            .errors
            .iter()
            .map(|e| (e.line, e.id.as_deref()))
            .collect();
        assert_eq!(
            bad,
            vec![
                (3, Some("d2")),
                (4, Some("d3")),
                (5, None),
                (6, Some("d1")),
                (7, None),
                (9, Some("d5")),
            ]
        );
        assert!(
            table.errors[0].reason.contains("'B' at position 3"),
            "{}",
            table.errors[0]
        );
        assert!(table.errors[1].reason.contains("empty 'sequence'"));
        assert!(table.errors[2].reason.contains("empty 'id'"));
        assert!(table.errors[3].reason.contains("first used on line 2"));
        assert!(table.errors[4].reason.contains("row has 1 fields"));
        assert!(
            table.errors[5].reason.contains("'\\n'"),
            "{}",
            table.errors[5]
        );
        assert_eq!(
            table.errors[0].to_string(),
            format!("line 3 (id 'd2'): {}", table.errors[0].reason)
        );
    }

    #[test]
    fn missing_column_is_a_file_error() {
        let err = parse_designs("id,seq\na,MK\n".as_bytes(), "d.csv").unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("d.csv:1: ") && text.contains("'sequence'"),
            "{text}"
        );
    }

    #[test]
    fn reads_a_file_with_bom_and_crlf() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("designs.csv");
        std::fs::write(&path, "\u{feff}ID , Sequence\r\nb1,MKV\r\nb2,mk v\r\n").unwrap();
        let table = read_designs(&path).unwrap();
        assert_eq!(table.designs.len(), 1, "{table:?}");
        assert_eq!(table.designs[0].sequence, "MKV");
        assert_eq!(table.errors.len(), 1);
        assert_eq!(table.errors[0].line, 3, "{table:?}");
        let err = read_designs(&dir.path().join("nope.csv"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("nope.csv"), "{err}");
    }
}
