//! The screening table of `af2 screen`: one row per design (id, sequence, every metric, pass/fail
//! and the failed criteria per filter, and an error message for a design that could not be
//! scored), as CSV or JSON Lines.
//!
//! [`ScreenTable`] appends rows durably: each row is one `write` to a file opened for appending,
//! followed by `fsync`, so a row that [`ScreenTable::append`] returned from survives a crash.
//! Opening an existing table resumes it: the ids already written are read back, and a last row
//! cut off by a crash (no final newline) is dropped, so that design is simply scored again. Every
//! row is one line: line breaks inside text fields are replaced by spaces.

use crate::error::{IoError, Result};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};

/// The table's file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableFormat {
    /// Comma-separated values with a header row.
    Csv,
    /// One JSON object per line.
    Jsonl,
}

impl TableFormat {
    /// From the file extension: `.csv`, or `.jsonl` / `.ndjson`.
    pub fn from_path(path: &Path) -> Option<Self> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "csv" => Some(TableFormat::Csv),
            "jsonl" | "ndjson" => Some(TableFormat::Jsonl),
            _ => None,
        }
    }
}

/// The columns: `id`, `sequence`, one per metric, `<filter>_pass` and `<filter>_failed` per
/// filter, then `error`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableSchema {
    /// Metric names, in column order.
    pub metrics: Vec<String>,
    /// Filter names, in column order.
    pub filters: Vec<String>,
}

impl TableSchema {
    /// A schema from metric and filter names.
    pub fn new<M: Into<String>, F: Into<String>>(
        metrics: impl IntoIterator<Item = M>,
        filters: impl IntoIterator<Item = F>,
    ) -> Self {
        Self {
            metrics: metrics.into_iter().map(Into::into).collect(),
            filters: filters.into_iter().map(Into::into).collect(),
        }
    }

    /// Every column name, in order.
    pub fn columns(&self) -> Vec<String> {
        let mut cols = vec!["id".to_string(), "sequence".to_string()];
        cols.extend(self.metrics.iter().cloned());
        for f in &self.filters {
            cols.push(format!("{f}_pass"));
            cols.push(format!("{f}_failed"));
        }
        cols.push("error".to_string());
        cols
    }
}

/// The verdict of one filter on one design.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterCell {
    /// Whether the design passed.
    pub passed: bool,
    /// The failed criteria, as text (empty when passed).
    pub failed: String,
}

/// One design's row. `metrics` and `filters` follow the schema's order; either may be empty
/// (every cell blank), as for a design that failed with an `error`.
#[derive(Debug, Clone, PartialEq)]
pub struct ScreenRow {
    /// The design's id.
    pub id: String,
    /// Its sequence.
    pub sequence: String,
    /// Metric values (`None`: not computed).
    pub metrics: Vec<Option<f64>>,
    /// Filter verdicts.
    pub filters: Vec<FilterCell>,
    /// Why the design could not be scored.
    pub error: Option<String>,
}

impl ScreenRow {
    /// A row for a design that could not be scored.
    pub fn failed(
        id: impl Into<String>,
        sequence: impl Into<String>,
        error: impl Into<String>,
    ) -> Self {
        Self {
            id: id.into(),
            sequence: sequence.into(),
            metrics: Vec::new(),
            filters: Vec::new(),
            error: Some(error.into()),
        }
    }
}

/// One line of text: line breaks become spaces.
fn one_line(s: &str) -> String {
    s.replace(['\r', '\n'], " ")
}

/// Takes an exclusive advisory lock on the open table for as long as `file` lives, so that two
/// screens writing one table (which would score designs twice and interleave rows) fail fast
/// instead. Where the file system cannot lock, the table is used unlocked.
fn lock_exclusively(file: &File, path: &Path) -> Result<()> {
    match file.try_lock() {
        Ok(()) => Ok(()),
        Err(std::fs::TryLockError::WouldBlock) => Err(IoError::invalid(
            "screening table",
            "another process is writing this table (a second `af2 screen` with the same \
             output?); wait for it to finish or choose another output",
        )
        .in_file(path)),
        Err(std::fs::TryLockError::Error(e)) if e.kind() == std::io::ErrorKind::Unsupported => {
            Ok(())
        }
        Err(std::fs::TryLockError::Error(e)) => Err(IoError::io(path, "lock", e)),
    }
}

/// An append-only, resumable screening table.
#[derive(Debug)]
pub struct ScreenTable {
    path: PathBuf,
    format: TableFormat,
    schema: TableSchema,
    file: File,
    /// Every id in the table: `true` if its last row has no error.
    done: HashMap<String, bool>,
    rows: usize,
    dropped_partial_row: bool,
}

impl ScreenTable {
    /// Opens `path` for appending, creating it (with the CSV header) if it does not exist or is
    /// empty, else reading back the ids already there. An existing CSV must have exactly the
    /// schema's columns, an existing JSONL table a JSON object with a string `id` on every line.
    pub fn open(path: &Path, format: TableFormat, schema: TableSchema) -> Result<Self> {
        let columns = schema.columns();
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .map_err(|e| IoError::io(path, "open", e))?;
        lock_exclusively(&file, path)?;
        let mut text = String::new();
        file.read_to_string(&mut text)
            .map_err(|e| IoError::io(path, "read", e))?;
        // A crash can leave a last line without its newline: drop it.
        let complete = text.rfind('\n').map_or(0, |i| i + 1);
        let dropped_partial_row = complete < text.len();
        if dropped_partial_row {
            file.set_len(complete as u64)
                .map_err(|e| IoError::io(path, "truncate a partial last row of", e))?;
            file.sync_all().map_err(|e| IoError::io(path, "sync", e))?;
            text.truncate(complete);
        }
        let mut table = Self {
            path: path.to_path_buf(),
            format,
            schema,
            file,
            done: HashMap::new(),
            rows: 0,
            dropped_partial_row,
        };
        if text.is_empty() {
            if format == TableFormat::Csv {
                let header = table.csv_record(&columns)?;
                table.write_durably(&header)?;
            }
            sync_parent_dir(path);
            return Ok(table);
        }
        match format {
            TableFormat::Csv => table.read_back_csv(&text, &columns)?,
            TableFormat::Jsonl => table.read_back_jsonl(&text)?,
        }
        Ok(table)
    }

    fn read_back_csv(&mut self, text: &str, columns: &[String]) -> Result<()> {
        let path = self.path.clone();
        let bad = |msg: String| IoError::invalid("screening table", msg).in_file(&path);
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(true)
            .from_reader(text.as_bytes());
        let header: Vec<String> = reader
            .headers()
            .map_err(|e| bad(format!("unreadable header: {e}")))?
            .iter()
            .map(str::to_string)
            .collect();
        if header != columns {
            return Err(bad(format!(
                "its columns are [{}] but this run writes [{}]; use another output file",
                header.join(","),
                columns.join(",")
            )));
        }
        let error_col = columns.len() - 1;
        for record in reader.records() {
            let record = record.map_err(|e| bad(format!("unreadable row: {e}")))?;
            let line = record.position().map_or(0, |p| p.line());
            let id = record
                .get(0)
                .filter(|id| !id.is_empty())
                .ok_or_else(|| bad(format!("line {line}: row without an id")))?;
            let ok = record.get(error_col).is_none_or(str::is_empty);
            self.done.insert(id.to_string(), ok);
            self.rows += 1;
        }
        Ok(())
    }

    fn read_back_jsonl(&mut self, text: &str) -> Result<()> {
        for (k, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let bad = |msg: String| {
                IoError::invalid("screening table", format!("line {}: {msg}", k + 1))
                    .in_file(&self.path)
            };
            let value: serde_json::Value =
                serde_json::from_str(line).map_err(|e| bad(format!("not JSON: {e}")))?;
            let id = value
                .get("id")
                .and_then(|v| v.as_str())
                .filter(|id| !id.is_empty())
                .ok_or_else(|| bad("no string \"id\"".to_string()))?;
            let ok = value.get("error").is_none_or(|e| e.is_null());
            self.done.insert(id.to_string(), ok);
            self.rows += 1;
        }
        Ok(())
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The format.
    pub fn format(&self) -> TableFormat {
        self.format
    }

    /// The schema.
    pub fn schema(&self) -> &TableSchema {
        &self.schema
    }

    /// Whether `id` has a row (scored or failed).
    pub fn contains(&self, id: &str) -> bool {
        self.done.contains_key(id)
    }

    /// Whether `id` has a row without an error.
    pub fn is_scored(&self, id: &str) -> bool {
        self.done.get(id).copied().unwrap_or(false)
    }

    /// Every id in the table, each with `true` if its last row has no error.
    pub fn ids(&self) -> &HashMap<String, bool> {
        &self.done
    }

    /// Rows in the file (read back plus appended).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Whether opening dropped a last row cut off by a crash.
    pub fn dropped_partial_row(&self) -> bool {
        self.dropped_partial_row
    }

    fn check_row(&self, row: &ScreenRow) -> Result<()> {
        let (m, f) = (self.schema.metrics.len(), self.schema.filters.len());
        if !(row.metrics.is_empty() || row.metrics.len() == m) {
            return Err(IoError::invalid(
                "screening row",
                format!(
                    "id '{}': {} metric values for {m} metric columns",
                    row.id,
                    row.metrics.len()
                ),
            ));
        }
        if !(row.filters.is_empty() || row.filters.len() == f) {
            return Err(IoError::invalid(
                "screening row",
                format!(
                    "id '{}': {} filter verdicts for {f} filters",
                    row.id,
                    row.filters.len()
                ),
            ));
        }
        if row.id.trim().is_empty() {
            return Err(IoError::invalid("screening row", "empty id"));
        }
        Ok(())
    }

    fn csv_record<S: AsRef<str>>(&self, fields: &[S]) -> Result<Vec<u8>> {
        let mut writer = csv::WriterBuilder::new()
            .has_headers(false)
            .terminator(csv::Terminator::Any(b'\n'))
            .from_writer(Vec::new());
        writer
            .write_record(fields.iter().map(|f| one_line(f.as_ref())))
            .map_err(|e| IoError::invalid("screening row", e.to_string()))?;
        writer
            .into_inner()
            .map_err(|e| IoError::invalid("screening row", e.to_string()))
    }

    fn csv_line(&self, row: &ScreenRow) -> Result<Vec<u8>> {
        let mut fields: Vec<String> = vec![row.id.clone(), row.sequence.clone()];
        for k in 0..self.schema.metrics.len() {
            fields.push(match row.metrics.get(k).copied().flatten() {
                Some(v) => v.to_string(),
                None => String::new(),
            });
        }
        for k in 0..self.schema.filters.len() {
            match row.filters.get(k) {
                Some(cell) => {
                    fields.push(cell.passed.to_string());
                    fields.push(cell.failed.clone());
                }
                None => fields.extend([String::new(), String::new()]),
            }
        }
        fields.push(row.error.clone().unwrap_or_default());
        self.csv_record(&fields)
    }

    fn json_line(&self, row: &ScreenRow) -> Result<Vec<u8>> {
        // Keys in column order (serde_json's map would sort them).
        let mut out = String::from("{");
        let mut push = |key: &str, value: String| {
            if out.len() > 1 {
                out.push(',');
            }
            out.push_str(&serde_json::Value::from(key).to_string());
            out.push(':');
            out.push_str(&value);
        };
        push("id", json(&one_line(&row.id)));
        push("sequence", json(&one_line(&row.sequence)));
        for (k, name) in self.schema.metrics.iter().enumerate() {
            let v = row.metrics.get(k).copied().flatten();
            push(name, json(&v));
        }
        for (k, name) in self.schema.filters.iter().enumerate() {
            let cell = row.filters.get(k);
            push(&format!("{name}_pass"), json(&cell.map(|c| c.passed)));
            push(
                &format!("{name}_failed"),
                json(&cell.map(|c| one_line(&c.failed))),
            );
        }
        push("error", json(&row.error.as_deref().map(one_line)));
        out.push_str("}\n");
        Ok(out.into_bytes())
    }

    /// Appends one row and syncs it to disk before returning.
    pub fn append(&mut self, row: &ScreenRow) -> Result<()> {
        self.check_row(row)?;
        let bytes = match self.format {
            TableFormat::Csv => self.csv_line(row)?,
            TableFormat::Jsonl => self.json_line(row)?,
        };
        self.write_durably(&bytes)?;
        self.done.insert(row.id.clone(), row.error.is_none());
        self.rows += 1;
        Ok(())
    }

    /// One `write` of a whole line to the append-mode file, then flush and `fsync`.
    fn write_durably(&mut self, bytes: &[u8]) -> Result<()> {
        self.file
            .write_all(bytes)
            .map_err(|e| IoError::io(&self.path, "append to", e))?;
        self.file
            .flush()
            .map_err(|e| IoError::io(&self.path, "flush", e))?;
        self.file
            .sync_data()
            .map_err(|e| IoError::io(&self.path, "sync", e))
    }
}

/// Makes a newly created file's directory entry durable (best effort; unix only).
fn sync_parent_dir(path: &Path) {
    #[cfg(unix)]
    {
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
    #[cfg(not(unix))]
    let _ = path;
}

/// JSON text of one cell: strings, numbers, booleans and options (NaN and infinities become
/// `null`); serialising these cannot fail.
fn json<T: serde::Serialize + ?Sized>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "null".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema() -> TableSchema {
        TableSchema::new(["plddt", "i_ptm", "rmsd"], ["af2ig_easy", "af2ig_strict"])
    }

    fn row(id: &str, plddt: f64) -> ScreenRow {
        ScreenRow {
            id: id.to_string(),
            sequence: "ACDEFG".to_string(),
            metrics: vec![Some(plddt), Some(0.61), None],
            filters: vec![
                FilterCell {
                    passed: true,
                    failed: String::new(),
                },
                FilterCell {
                    passed: false,
                    failed: "rmsd missing (needs rmsd < 1.5); plddt, \"quoted\"".to_string(),
                },
            ],
            error: None,
        }
    }

    #[test]
    fn a_table_in_use_is_refused_until_released() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("screen.csv");
        let mut first = ScreenTable::open(&path, TableFormat::Csv, schema()).unwrap();
        first.append(&row("d1", 0.91)).unwrap();
        let err = ScreenTable::open(&path, TableFormat::Csv, schema()).unwrap_err();
        let message = err.to_string();
        assert!(message.contains("another process is writing"), "{message}");
        assert!(message.contains("screen.csv"), "{message}");
        drop(first);
        let again = ScreenTable::open(&path, TableFormat::Csv, schema()).unwrap();
        assert_eq!(again.rows(), 1, "the refused open changed nothing");
    }

    #[test]
    fn csv_rows_parse_back_and_resume() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("screen.csv");
        {
            let mut t = ScreenTable::open(&path, TableFormat::Csv, schema()).unwrap();
            assert_eq!(t.rows(), 0);
            t.append(&row("d1", 0.91)).unwrap();
            t.append(&ScreenRow::failed("d2", "AXZ", "bad residue 'Z'\nat 3"))
                .unwrap();
        }
        // Parse back with the csv crate.
        let mut reader = csv::Reader::from_path(&path).unwrap();
        let header: Vec<String> = reader.headers().unwrap().iter().map(String::from).collect();
        assert_eq!(header, schema().columns());
        assert_eq!(
            header,
            [
                "id",
                "sequence",
                "plddt",
                "i_ptm",
                "rmsd",
                "af2ig_easy_pass",
                "af2ig_easy_failed",
                "af2ig_strict_pass",
                "af2ig_strict_failed",
                "error"
            ]
        );
        let rows: Vec<csv::StringRecord> = reader.records().map(|r| r.unwrap()).collect();
        assert_eq!(rows.len(), 2);
        assert_eq!(&rows[0][0], "d1");
        assert_eq!(rows[0][2].parse::<f64>().unwrap(), 0.91);
        assert_eq!(&rows[0][4], "");
        assert_eq!(&rows[0][5], "true");
        assert_eq!(&rows[0][7], "false");
        assert_eq!(
            &rows[0][8],
            "rmsd missing (needs rmsd < 1.5); plddt, \"quoted\""
        );
        assert_eq!(&rows[1][9], "bad residue 'Z' at 3");
        assert_eq!(&rows[1][2], "");

        // Resume: ids come back, new rows append after them.
        let mut t = ScreenTable::open(&path, TableFormat::Csv, schema()).unwrap();
        assert_eq!(t.rows(), 2);
        assert!(t.contains("d1") && t.is_scored("d1"));
        assert!(t.contains("d2") && !t.is_scored("d2"));
        assert!(!t.contains("d3"));
        t.append(&row("d3", 0.5)).unwrap();
        let n = csv::Reader::from_path(&path).unwrap().records().count();
        assert_eq!(n, 3);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.matches("id,sequence").count(), 1, "one header");
    }

    #[test]
    fn a_row_cut_off_by_a_crash_is_dropped_on_resume() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("screen.csv");
        {
            let mut t = ScreenTable::open(&path, TableFormat::Csv, schema()).unwrap();
            t.append(&row("d1", 0.91)).unwrap();
        }
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"d2,ACD,0.8").unwrap();
        drop(f);
        let mut t = ScreenTable::open(&path, TableFormat::Csv, schema()).unwrap();
        assert!(t.dropped_partial_row());
        assert!(t.contains("d1"));
        assert!(!t.contains("d2"));
        t.append(&row("d2", 0.8)).unwrap();
        let ids: Vec<String> = csv::Reader::from_path(&path)
            .unwrap()
            .records()
            .map(|r| r.unwrap()[0].to_string())
            .collect();
        assert_eq!(ids, ["d1", "d2"]);
    }

    #[test]
    fn csv_with_other_columns_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("screen.csv");
        std::fs::write(&path, "id,sequence,plddt\nd1,AC,0.5\n").unwrap();
        let err = ScreenTable::open(&path, TableFormat::Csv, schema()).unwrap_err();
        assert!(err.to_string().contains("screen.csv"), "{err}");
        assert!(err.to_string().contains("columns"), "{err}");
        // The file is untouched.
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "id,sequence,plddt\nd1,AC,0.5\n"
        );
    }

    #[test]
    fn jsonl_rows_parse_back_and_resume() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("screen.jsonl");
        assert_eq!(TableFormat::from_path(&path), Some(TableFormat::Jsonl));
        {
            let mut t = ScreenTable::open(&path, TableFormat::Jsonl, schema()).unwrap();
            t.append(&row("d1", 0.91)).unwrap();
            let mut nan = row("d2", f64::NAN);
            nan.metrics[1] = Some(f64::INFINITY);
            t.append(&nan).unwrap();
            t.append(&ScreenRow::failed("d3", "", "oops")).unwrap();
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let values: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(values.len(), 3);
        assert!(text.starts_with("{\"id\":\"d1\",\"sequence\":\"ACDEFG\",\"plddt\":0.91,"));
        assert_eq!(values[0]["i_ptm"], 0.61);
        assert!(values[0]["rmsd"].is_null());
        assert_eq!(values[0]["af2ig_easy_pass"], true);
        assert_eq!(values[0]["af2ig_strict_pass"], false);
        assert!(values[0]["error"].is_null());
        assert!(values[1]["plddt"].is_null(), "NaN is written as null");
        assert_eq!(values[2]["error"], "oops");
        assert!(values[2]["af2ig_easy_pass"].is_null());

        let mut t = ScreenTable::open(&path, TableFormat::Jsonl, schema()).unwrap();
        assert_eq!(t.rows(), 3);
        assert!(t.is_scored("d1") && t.is_scored("d2") && !t.is_scored("d3"));
        // Re-scoring a failed design: its last row wins.
        t.append(&row("d3", 0.7)).unwrap();
        drop(t);
        let t = ScreenTable::open(&path, TableFormat::Jsonl, schema()).unwrap();
        assert!(t.is_scored("d3"));
        assert_eq!(t.rows(), 4);
    }

    #[test]
    fn corrupt_jsonl_is_reported_with_its_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("screen.jsonl");
        std::fs::write(&path, "{\"id\":\"a\"}\nnot json\n").unwrap();
        let err = ScreenTable::open(&path, TableFormat::Jsonl, schema()).unwrap_err();
        assert!(err.to_string().contains("line 2"), "{err}");
    }

    #[test]
    fn rows_of_the_wrong_shape_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("screen.csv");
        let mut t = ScreenTable::open(&path, TableFormat::Csv, schema()).unwrap();
        let mut r = row("d1", 0.9);
        r.metrics.pop();
        assert!(t.append(&r).is_err());
        assert!(!t.contains("d1"));
        assert_eq!(t.rows(), 0);
    }
}
