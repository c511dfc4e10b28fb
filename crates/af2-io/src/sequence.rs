//! Sequence inputs: FASTA (with ColabFold's `:` chain separator) and A3M alignments.
//!
//! Both readers keep AlphaFold's semantics (`alphafold/data/parsers.py`): lines are stripped,
//! blank lines are skipped, and a record is a `>` header followed by any number of sequence lines.
//! In an A3M, the first record is the query; upper-case letters and `-` are aligned columns,
//! lower-case letters are insertions relative to the query: they are dropped from the aligned row
//! and counted into the deletion matrix (`deletion_matrix[i][j]` = number of insertions just
//! before aligned column `j` of row `i`, as `parsers.parse_a3m` counts them; insertions after the
//! last aligned column are dropped, as there).
//!
//! Unlike AlphaFold's parser, which fails later with a bare `KeyError`, every malformed input is
//! reported as an [`InputError::Parse`] that names the file, the line and what was expected.
//!
//! Two leniencies, both for files written by other tools: `#` lines before the first record
//! (ColabFold's A3M header `#len\tcardinality`) are skipped, and NUL bytes (ColabFold separates
//! concatenated A3Ms with them) are removed. In an A3M, `.` (an A2M insert-state gap) is ignored,
//! as it carries no residue.

use std::fmt;
use std::path::Path;

use crate::error::IoError;

/// An error reading an input file: the file could not be read, or its contents are malformed.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// The file could not be opened or read.
    #[error(transparent)]
    Io(#[from] IoError),
    /// Malformed contents, located by file and line.
    #[error("{source_name}:{line}: {message}")]
    Parse {
        /// The file (or `<string>` for in-memory text).
        source_name: String,
        /// 1-based line number (0 when the problem concerns the whole input).
        line: usize,
        /// What is wrong and what was expected.
        message: String,
    },
}

impl InputError {
    /// Builds a [`InputError::Parse`].
    pub fn parse(source_name: impl fmt::Display, line: usize, message: impl Into<String>) -> Self {
        InputError::Parse {
            source_name: source_name.to_string(),
            line,
            message: message.into(),
        }
    }
}

/// Result alias for input parsing.
pub type InputResult<T> = std::result::Result<T, InputError>;

/// Reads a whole text file, mapping failures to [`IoError`] (which names the file).
pub(crate) fn read_text(path: &Path) -> InputResult<String> {
    let bytes = std::fs::read(path).map_err(|e| IoError::io(path, "open", e))?;
    String::from_utf8(bytes).map_err(|e| {
        InputError::parse(
            path.display(),
            0,
            format!(
                "not UTF-8 text (invalid byte at offset {})",
                e.utf8_error().valid_up_to()
            ),
        )
    })
}

/// One FASTA record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FastaRecord {
    /// The header line without the leading `>`.
    pub description: String,
    /// The chains of the record (ColabFold's `:` separator), upper-cased. A plain record has one.
    pub chains: Vec<String>,
    /// 1-based line number of the header.
    pub line: usize,
}

impl FastaRecord {
    /// The chains concatenated (the sequence without `:`).
    pub fn sequence(&self) -> String {
        self.chains.concat()
    }

    /// The first word of the description (a conventional identifier).
    pub fn id(&self) -> &str {
        self.description.split_whitespace().next().unwrap_or("")
    }
}

/// A raw record: header, header line, and its sequence lines with their line numbers.
struct RawRecord<'a> {
    description: &'a str,
    line: usize,
    body: Vec<(usize, &'a str)>,
}

/// Splits text into records. Lines are stripped and NUL bytes removed; `#` lines before the first
/// record are skipped when `allow_comments` is set.
fn split_records<'a>(
    text: &'a str,
    source: &str,
    allow_comments: bool,
) -> InputResult<Vec<RawRecord<'a>>> {
    let mut records: Vec<RawRecord<'a>> = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let line_no = index + 1;
        let line = raw.trim_matches(|c: char| c.is_whitespace() || c == '\0');
        if line.is_empty() {
            continue;
        }
        if let Some(description) = line.strip_prefix('>') {
            records.push(RawRecord {
                description: description.trim(),
                line: line_no,
                body: Vec::new(),
            });
            continue;
        }
        match records.last_mut() {
            Some(record) => record.body.push((line_no, line)),
            None if allow_comments && line.starts_with('#') => {}
            None => {
                return Err(InputError::parse(
                    source,
                    line_no,
                    format!(
                        "expected a '>' header line before sequence data, found {:?}",
                        clip(line)
                    ),
                ));
            }
        }
    }
    if records.is_empty() {
        return Err(InputError::parse(
            source,
            0,
            "no records: expected at least one '>' header line",
        ));
    }
    Ok(records)
}

/// Shortens a line for an error message.
fn clip(line: &str) -> String {
    const MAX: usize = 40;
    if line.chars().count() <= MAX {
        line.to_string()
    } else {
        format!("{}...", line.chars().take(MAX).collect::<String>())
    }
}

/// Describes a character for an error message.
fn describe(c: char) -> String {
    if c.is_ascii_graphic() {
        format!("'{c}'")
    } else {
        format!("{:?} (U+{:04X})", c, c as u32)
    }
}

/// Parses FASTA text. Each record's sequence may span lines; `:` separates chains (ColabFold).
/// Residue letters are ASCII letters (upper-cased here; letters outside the 20 standard residues
/// become `X` when features are built, as AlphaFold maps them). Errors name `source_name` and the
/// line: text before the first header, an invalid character, an empty record or an empty chain.
pub fn parse_fasta(text: &str, source_name: &str) -> InputResult<Vec<FastaRecord>> {
    let mut out = Vec::new();
    for record in split_records(text, source_name, false)? {
        let mut chains = vec![String::new()];
        // Line of the start of the current chain, for empty-chain errors.
        let mut chain_line = record.line;
        for &(line_no, line) in &record.body {
            for (col, c) in line.chars().enumerate() {
                if c == ':' {
                    if chains.last().is_some_and(String::is_empty) {
                        return Err(InputError::parse(
                            source_name,
                            line_no,
                            format!(
                                "record '{}': empty chain before ':' at column {}; expected residue letters between chain separators",
                                record.description,
                                col + 1
                            ),
                        ));
                    }
                    chains.push(String::new());
                    chain_line = line_no;
                } else if c.is_ascii_alphabetic() {
                    if let Some(chain) = chains.last_mut() {
                        chain.push(c.to_ascii_uppercase());
                    }
                } else {
                    return Err(InputError::parse(
                        source_name,
                        line_no,
                        format!(
                            "record '{}': invalid residue character {} at column {}; expected a letter or ':' (chain separator)",
                            record.description,
                            describe(c),
                            col + 1
                        ),
                    ));
                }
            }
        }
        if chains.len() == 1 && chains[0].is_empty() {
            return Err(InputError::parse(
                source_name,
                record.line,
                format!("record '{}' has no sequence", record.description),
            ));
        }
        if chains.last().is_some_and(String::is_empty) {
            return Err(InputError::parse(
                source_name,
                chain_line,
                format!(
                    "record '{}' ends with ':'; expected residue letters after the chain separator",
                    record.description
                ),
            ));
        }
        out.push(FastaRecord {
            description: record.description.to_string(),
            chains,
            line: record.line,
        });
    }
    Ok(out)
}

/// Reads a FASTA file (see [`parse_fasta`]).
pub fn read_fasta(path: &Path) -> InputResult<Vec<FastaRecord>> {
    let text = read_text(path)?;
    parse_fasta(&text, &path.display().to_string())
}

/// A parsed multiple sequence alignment (AlphaFold's `parsers.Msa`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Msa {
    /// Aligned rows without insertions: upper-case letters and `-`, all as long as the query.
    /// Row 0 is the query.
    pub sequences: Vec<String>,
    /// `deletion_matrix[i][j]`: insertions in row `i` just before aligned column `j`.
    pub deletion_matrix: Vec<Vec<u32>>,
    /// Header of each row.
    pub descriptions: Vec<String>,
    /// 1-based header line of each row in the file (for later error messages).
    pub lines: Vec<usize>,
}

impl Msa {
    /// The query (row 0).
    pub fn query(&self) -> &str {
        &self.sequences[0]
    }

    /// Number of rows.
    pub fn depth(&self) -> usize {
        self.sequences.len()
    }

    /// Number of aligned columns (the query length).
    pub fn width(&self) -> usize {
        self.sequences[0].len()
    }
}

/// Parses A3M text exactly as AlphaFold's `parsers.parse_a3m` (see the module documentation).
/// Errors name `source_name` and the line: an invalid character, an empty record, or a row whose
/// number of aligned columns differs from the query's.
pub fn parse_a3m(text: &str, source_name: &str) -> InputResult<Msa> {
    let records = split_records(text, source_name, true)?;
    let mut msa = Msa {
        sequences: Vec::with_capacity(records.len()),
        deletion_matrix: Vec::with_capacity(records.len()),
        descriptions: Vec::with_capacity(records.len()),
        lines: Vec::with_capacity(records.len()),
    };
    for record in records {
        let mut aligned = String::new();
        let mut deletions = Vec::new();
        let mut count = 0u32;
        for &(line_no, line) in &record.body {
            for (col, c) in line.chars().enumerate() {
                if c.is_ascii_uppercase() || c == '-' {
                    aligned.push(c);
                    deletions.push(count);
                    count = 0;
                } else if c.is_ascii_lowercase() {
                    count += 1;
                } else if c == '.' {
                    // A2M insert-state gap: no residue, no column.
                } else {
                    return Err(InputError::parse(
                        source_name,
                        line_no,
                        format!(
                            "record '{}': invalid character {} at column {}; expected an upper-case residue letter or '-' (aligned), or a lower-case letter (insertion)",
                            record.description,
                            describe(c),
                            col + 1
                        ),
                    ));
                }
            }
        }
        if aligned.is_empty() {
            let what = if count > 0 {
                "has only insertions (lower-case letters) and no aligned column"
            } else {
                "has no sequence"
            };
            return Err(InputError::parse(
                source_name,
                record.line,
                format!("record '{}' {what}", record.description),
            ));
        }
        if let Some(query) = msa.sequences.first()
            && aligned.len() != query.len()
        {
            return Err(InputError::parse(
                source_name,
                record.line,
                format!(
                    "record '{}' has {} aligned columns (upper-case letters and '-'); expected {}, the length of the query (first record)",
                    record.description,
                    aligned.len(),
                    query.len()
                ),
            ));
        }
        msa.sequences.push(aligned);
        msa.deletion_matrix.push(deletions);
        msa.descriptions.push(record.description.to_string());
        msa.lines.push(record.line);
    }
    Ok(msa)
}

/// Reads an A3M file (see [`parse_a3m`]).
pub fn read_a3m(path: &Path) -> InputResult<Msa> {
    let text = read_text(path)?;
    parse_a3m(&text, &path.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_error(result: InputResult<impl fmt::Debug>) -> (usize, String) {
        match result {
            Err(InputError::Parse { line, message, .. }) => (line, message),
            other => panic!("expected a parse error, got {other:?}"),
        }
    }

    #[test]
    fn fasta_records_chains_and_multiline() {
        let text = "\n>first desc\nACDE\nfgh\n\n>complex\nAAAA:\nCC:D\n";
        let records = parse_fasta(text, "t.fasta").unwrap();
        assert_eq!(records.len(), 2);
        assert_eq!(records[0].description, "first desc");
        assert_eq!(records[0].id(), "first");
        assert_eq!(records[0].chains, vec!["ACDEFGH"]);
        assert_eq!(records[0].line, 2);
        assert_eq!(records[1].chains, vec!["AAAA", "CC", "D"]);
        assert_eq!(records[1].sequence(), "AAAACCD");
        assert_eq!(records[1].line, 6);
    }

    #[test]
    fn fasta_errors_name_the_line() {
        let (line, msg) = parse_error(parse_fasta(">a\nAC\nA1C\n", "x.fa"));
        assert_eq!(line, 3);
        assert!(msg.contains("'1'") && msg.contains("column 2"), "{msg}");

        let (line, msg) = parse_error(parse_fasta(">a\nAC\n>b\n\n>c\nA", "x.fa"));
        assert_eq!(line, 3);
        assert!(msg.contains("'b' has no sequence"), "{msg}");

        let (line, msg) = parse_error(parse_fasta("ACD\n>a\nA", "x.fa"));
        assert_eq!(line, 1);
        assert!(msg.contains("header"), "{msg}");

        let (line, msg) = parse_error(parse_fasta(">a\nAC::D\n", "x.fa"));
        assert_eq!(line, 2);
        assert!(msg.contains("empty chain"), "{msg}");

        let (line, msg) = parse_error(parse_fasta(">a\nAC:\n\n", "x.fa"));
        assert_eq!(line, 2);
        assert!(msg.contains("ends with ':'"), "{msg}");

        let (line, _) = parse_error(parse_fasta("\n\n", "x.fa"));
        assert_eq!(line, 0);

        // The message names the file.
        let err = parse_fasta(">a\nA-C\n", "dir/in.fasta")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("dir/in.fasta:2: "), "{err}");
    }

    #[test]
    fn a3m_deletions_follow_alphafold() {
        // Row 2: two insertions before column 0, one before column 3, trailing insertion dropped.
        let text = "#3\t1\n>query\nMKV-\n>hit1 something\nabMKvL-\n>hit2\nM.-\nKAa\n";
        let msa = parse_a3m(text, "t.a3m").unwrap();
        assert_eq!(msa.sequences, vec!["MKV-", "MKL-", "M-KA"]);
        assert_eq!(
            msa.deletion_matrix,
            vec![vec![0, 0, 0, 0], vec![2, 0, 1, 0], vec![0, 0, 0, 0]]
        );
        assert_eq!(msa.descriptions, vec!["query", "hit1 something", "hit2"]);
        assert_eq!(msa.lines, vec![2, 4, 6]);
        assert_eq!(msa.query(), "MKV-");
        assert_eq!((msa.depth(), msa.width()), (3, 4));
    }

    #[test]
    fn a3m_errors_name_the_line() {
        let (line, msg) = parse_error(parse_a3m(">q\nMKV\n>h\nMK\n", "t.a3m"));
        assert_eq!(line, 3);
        assert!(
            msg.contains("2 aligned columns") && msg.contains("expected 3"),
            "{msg}"
        );

        let (line, msg) = parse_error(parse_a3m(">q\nMKV\n>h\nMK*\n", "t.a3m"));
        assert_eq!(line, 4);
        assert!(msg.contains("'*'") && msg.contains("column 3"), "{msg}");

        let (line, msg) = parse_error(parse_a3m(">q\nMKV\n>h\n>i\nMKV\n", "t.a3m"));
        assert_eq!(line, 3);
        assert!(msg.contains("'h' has no sequence"), "{msg}");

        let (line, msg) = parse_error(parse_a3m(">q\nabc\n", "t.a3m"));
        assert_eq!(line, 1);
        assert!(msg.contains("only insertions"), "{msg}");
    }

    #[test]
    fn files_are_read_and_missing_files_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.a3m");
        std::fs::write(&path, ">q\nMKV\n>h\nMKvL\n").unwrap();
        let msa = read_a3m(&path).unwrap();
        assert_eq!(msa.deletion_matrix[1], vec![0, 0, 1]);
        let fasta = dir.path().join("q.fasta");
        std::fs::write(&fasta, ">q\nmkv:ww\n").unwrap();
        assert_eq!(read_fasta(&fasta).unwrap()[0].chains, vec!["MKV", "WW"]);
        let missing = dir.path().join("none.fasta");
        let err = read_fasta(&missing).unwrap_err().to_string();
        assert!(
            err.contains("none.fasta") && err.contains("not found"),
            "{err}"
        );
    }
}
