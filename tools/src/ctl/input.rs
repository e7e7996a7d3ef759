//! Point files `vortexctl load` reads, in batches, without holding the file in memory:
//!
//! - **`.fvecs`**: rows of `dim: i32 LE` then `dim` `f32 LE` (the ANN benchmarks' format);
//!   ids are the row numbers plus `--start-id`.
//! - **`.npy`**: a NumPy array of shape `(n, dim)`, `<f4` or `<f8` (converted), C order;
//!   ids as for `.fvecs`.
//! - **JSON Lines** (`.jsonl`, `.ndjson`): one object per line, `{"id": 7, "vector": [...],
//!   "payload": {...}}` (`payload` optional); blank lines are skipped.
//!
//! Every error names the file and the row (or line) and says what was expected.

use super::json::{payload_from_json, vector_from_json};
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use vortex_vbp::message::Payload;

/// The largest dimension accepted from a file (VBP's frames bound it further).
pub const DIMENSION_MAX: usize = 65_536;
/// The largest `.npy` header read.
const NPY_HEADER_MAX: usize = 64 << 10;
/// The longest JSON Lines line read (a point beyond it could not travel in a VBP frame).
pub const LINE_BYTES_MAX: u64 = 16 << 20;

/// Rows of `dimension` that fit in about 8 MiB of vectors (at least one): the batch size
/// that keeps an upsert well inside VBP's 16 MiB frames and a reader's memory bounded.
pub fn rows_within_budget(dimension: usize) -> usize {
    ((8usize << 20) / (4 * dimension.max(1) + 8)).max(1)
}

/// A file's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `.fvecs`.
    Fvecs,
    /// `.npy`.
    Npy,
    /// JSON Lines.
    JsonLines,
}

impl Format {
    /// From the file's extension, or `None`.
    pub fn from_path(path: &Path) -> Option<Format> {
        match path.extension()?.to_str()? {
            "fvecs" => Some(Format::Fvecs),
            "npy" => Some(Format::Npy),
            "jsonl" | "ndjson" | "json" => Some(Format::JsonLines),
            _ => None,
        }
    }
}

/// A bad or unreadable input file.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct InputError {
    /// The file.
    pub path: PathBuf,
    /// Where in it and what is wrong.
    pub message: String,
}

/// A batch of points, columnar as VBP's `Upsert` wants them.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Batch {
    /// Point ids.
    pub ids: Vec<u64>,
    /// `ids.len() × dimension` floats.
    pub vectors: Vec<f32>,
    /// Empty, or one per id.
    pub payloads: Vec<Payload>,
}

/// Reads a point file in batches.
#[derive(Debug)]
pub struct PointReader {
    path: PathBuf,
    source: Source,
    dimension: Option<usize>,
    /// Rows (or lines) read so far.
    row: u64,
    start_id: u64,
    total: Option<u64>,
}

#[derive(Debug)]
enum Source {
    Fvecs(BufReader<File>),
    Npy {
        reader: BufReader<File>,
        rows: u64,
        wide: bool,
    },
    JsonLines(BufReader<File>),
}

impl PointReader {
    /// Opens `path` as `format`; ids of `.fvecs` and `.npy` rows start at `start_id`.
    pub fn open(path: &Path, format: Format, start_id: u64) -> Result<PointReader, InputError> {
        let fail = |message: String| InputError {
            path: path.to_owned(),
            message,
        };
        let file = File::open(path).map_err(|e| fail(format!("cannot open: {e}")))?;
        let metadata = file
            .metadata()
            .map_err(|e| fail(format!("cannot read its size: {e}")))?;
        if !metadata.is_file() {
            return Err(fail("not a regular file".to_owned()));
        }
        let length = metadata.len();
        let mut reader = BufReader::with_capacity(1 << 20, file);
        let (source, dimension, total) = match format {
            Format::Fvecs => {
                let mut first = [0u8; 4];
                let dimension = match reader.read_exact(&mut first) {
                    Ok(()) => Some(fvecs_dimension(first, 0).map_err(fail)?),
                    Err(_) if length == 0 => None,
                    Err(e) => return Err(fail(format!("cannot read row 0: {e}"))),
                };
                reader
                    .seek(SeekFrom::Start(0))
                    .map_err(|e| fail(format!("cannot rewind: {e}")))?;
                let total = dimension.map(|d| length / (4 + 4 * d as u64));
                (Source::Fvecs(reader), dimension, total)
            }
            Format::Npy => {
                let (rows, dimension, wide) = npy_header(&mut reader).map_err(fail)?;
                let needed = rows
                    .checked_mul(dimension as u64 * if wide { 8 } else { 4 })
                    .ok_or_else(|| fail("the shape overflows".to_owned()))?;
                let position = reader
                    .stream_position()
                    .map_err(|e| fail(format!("cannot read: {e}")))?;
                if length.saturating_sub(position) < needed {
                    return Err(fail(format!(
                        "the header says {rows} × {dimension} but the file is too short for it"
                    )));
                }
                (
                    Source::Npy { reader, rows, wide },
                    Some(dimension),
                    Some(rows),
                )
            }
            Format::JsonLines => {
                let counting = BufReader::new(
                    File::open(path).map_err(|e| fail(format!("cannot open: {e}")))?,
                );
                let mut lines = 0u64;
                for line in counting.split(b'\n') {
                    let line = line.map_err(|e| fail(format!("cannot read: {e}")))?;
                    lines += u64::from(!line.trim_ascii().is_empty());
                }
                (Source::JsonLines(reader), None, Some(lines))
            }
        };
        Ok(PointReader {
            path: path.to_owned(),
            source,
            dimension,
            row: 0,
            start_id,
            total,
        })
    }

    /// The vectors' dimension, once known (JSON Lines: after the first batch).
    pub fn dimension(&self) -> Option<usize> {
        self.dimension
    }

    /// How many points the file holds, where that is known up front.
    pub fn total(&self) -> Option<u64> {
        self.total
    }

    /// The next batch of at most `max` points, or `None` at the end.
    pub fn next_batch(&mut self, max: usize) -> Result<Option<Batch>, InputError> {
        let mut batch = Batch::default();
        // JSON Lines: one payload per point once any point of the batch has one.
        let mut any_payload = false;
        let path = &self.path;
        let fail = |message: String| InputError {
            path: path.clone(),
            message,
        };
        while batch.ids.len() < max {
            let more = match &mut self.source {
                Source::Fvecs(reader) => {
                    let mut head = [0u8; 4];
                    match read_full(reader, &mut head) {
                        Ok(0) => false,
                        Ok(4) => {
                            let dimension = fvecs_dimension(head, self.row).map_err(fail)?;
                            if Some(dimension) != self.dimension {
                                return Err(fail(format!(
                                    "row {} has dimension {dimension}, the rows before {}",
                                    self.row,
                                    self.dimension.unwrap_or(0)
                                )));
                            }
                            read_floats(reader, dimension, false, &mut batch.vectors)
                                .map_err(|e| fail(format!("row {}: {e}", self.row)))?;
                            batch
                                .ids
                                .push(row_id(self.start_id, self.row).map_err(&fail)?);
                            true
                        }
                        Ok(_) => return Err(fail(format!("row {} is cut short", self.row))),
                        Err(e) => return Err(fail(format!("row {}: {e}", self.row))),
                    }
                }
                Source::Npy { reader, rows, wide } => {
                    if self.row >= *rows {
                        false
                    } else {
                        let dimension = self.dimension.unwrap_or(0);
                        read_floats(reader, dimension, *wide, &mut batch.vectors)
                            .map_err(|e| fail(format!("row {}: {e}", self.row)))?;
                        batch
                            .ids
                            .push(row_id(self.start_id, self.row).map_err(&fail)?);
                        true
                    }
                }
                Source::JsonLines(reader) => {
                    let mut line = Vec::new();
                    let read = reader
                        .by_ref()
                        .take(LINE_BYTES_MAX + 1)
                        .read_until(b'\n', &mut line)
                        .map_err(|e| fail(format!("line {}: {e}", self.row + 1)))?;
                    if read as u64 > LINE_BYTES_MAX {
                        return Err(fail(format!(
                            "line {} is longer than {} MiB",
                            self.row + 1,
                            LINE_BYTES_MAX >> 20
                        )));
                    }
                    if read == 0 {
                        false
                    } else {
                        self.row += 1;
                        if line.trim_ascii().is_empty() {
                            continue;
                        }
                        let at = format!("line {}", self.row);
                        let (id, vector, payload) = json_point(&line, &at).map_err(fail)?;
                        match self.dimension {
                            None => self.dimension = Some(vector.len()),
                            Some(d) if d != vector.len() => {
                                return Err(fail(format!(
                                    "{at}: the vector has {} numbers, the lines before {d}",
                                    vector.len()
                                )))
                            }
                            Some(_) => {}
                        }
                        batch.ids.push(id);
                        batch.vectors.extend(vector);
                        any_payload |= payload.is_some();
                        batch.payloads.push(payload.unwrap_or_default());
                        continue; // the row was counted above
                    }
                }
            };
            if !more {
                break;
            }
            self.row += 1;
        }
        if !any_payload {
            batch.payloads.clear();
        }
        Ok((!batch.ids.is_empty()).then_some(batch))
    }
}

/// The id of row `row` when the first is `start_id`.
fn row_id(start_id: u64, row: u64) -> Result<u64, String> {
    start_id.checked_add(row).ok_or_else(|| {
        format!("row {row}: its id would pass 2^64 - 1 (--start-id {start_id} is too large)")
    })
}

/// Reads into `buffer` until it is full or the end: the bytes read.
fn read_full(reader: &mut impl Read, buffer: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        match reader.read(&mut buffer[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

fn fvecs_dimension(head: [u8; 4], row: u64) -> Result<usize, String> {
    let dimension = i32::from_le_bytes(head);
    if dimension <= 0 || dimension as usize > DIMENSION_MAX {
        return Err(format!(
            "row {row} says dimension {dimension}; expected 1 to {DIMENSION_MAX} (is this an .fvecs file?)"
        ));
    }
    Ok(dimension as usize)
}

/// Appends `dimension` little-endian floats (`f64` when `wide`) to `out`; refuses
/// non-finite values (the server would).
fn read_floats(
    reader: &mut impl Read,
    dimension: usize,
    wide: bool,
    out: &mut Vec<f32>,
) -> Result<(), String> {
    let width = if wide { 8 } else { 4 };
    let mut bytes = vec![0u8; dimension * width];
    if read_full(reader, &mut bytes).map_err(|e| e.to_string())? != bytes.len() {
        return Err("cut short".to_owned());
    }
    for (i, chunk) in bytes.chunks_exact(width).enumerate() {
        let value = if wide {
            let mut eight = [0u8; 8];
            eight.copy_from_slice(chunk);
            f64::from_le_bytes(eight) as f32
        } else {
            let mut four = [0u8; 4];
            four.copy_from_slice(chunk);
            f32::from_le_bytes(four)
        };
        if !value.is_finite() {
            return Err(format!("component {i} is {value}; vectors must be finite"));
        }
        out.push(value);
    }
    Ok(())
}

/// The bytes of a version-1 `.npy` file: `descr` (e.g. `<f4`), `shape` as NumPy writes it
/// (e.g. `(3, 2)`), then `data` (for tests, fuzz seeds and tools that write point files).
pub fn npy_file(descr: &str, shape: &str, data: &[u8]) -> Vec<u8> {
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    // NumPy pads the header with spaces so that the data starts on a 64-byte boundary.
    while !(10 + header.len() + 1).is_multiple_of(64) {
        header.push(' ');
    }
    header.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend((header.len() as u16).to_le_bytes());
    bytes.extend(header.as_bytes());
    bytes.extend(data);
    bytes
}

/// Parses a `.npy` header: (rows, dimension, whether `<f8`).
pub fn npy_header(reader: &mut impl Read) -> Result<(u64, usize, bool), String> {
    let mut magic = [0u8; 8];
    if read_full(reader, &mut magic).map_err(|e| e.to_string())? != 8 || &magic[..6] != b"\x93NUMPY"
    {
        return Err("not a .npy file (no \\x93NUMPY magic)".to_owned());
    }
    let length = match magic[6] {
        1 => {
            let mut two = [0u8; 2];
            reader.read_exact(&mut two).map_err(|e| e.to_string())?;
            usize::from(u16::from_le_bytes(two))
        }
        2 | 3 => {
            let mut four = [0u8; 4];
            reader.read_exact(&mut four).map_err(|e| e.to_string())?;
            u32::from_le_bytes(four) as usize
        }
        major => {
            return Err(format!(
                ".npy version {major} is not supported (1 to 3 are)"
            ))
        }
    };
    if length > NPY_HEADER_MAX {
        return Err(format!("a .npy header of {length} bytes is too large"));
    }
    let mut header = vec![0u8; length];
    reader.read_exact(&mut header).map_err(|e| e.to_string())?;
    let header = String::from_utf8_lossy(&header);
    let descr = dict_value(&header, "descr").ok_or("the header has no 'descr'")?;
    let wide = match descr.trim_matches(|c| c == '\'' || c == '"') {
        "<f4" | "=f4" | "f4" => false,
        "<f8" | "=f8" | "f8" => true,
        other => {
            return Err(format!(
                "dtype {other}: expected little-endian float32 ('<f4') or float64 ('<f8')"
            ))
        }
    };
    let fortran =
        dict_value(&header, "fortran_order").ok_or("the header has no 'fortran_order'")?;
    if fortran.trim() != "False" {
        return Err("a Fortran-order array: save it in C order (np.ascontiguousarray)".to_owned());
    }
    let shape = dict_value(&header, "shape").ok_or("the header has no 'shape'")?;
    let dims: Vec<&str> = shape
        .trim()
        .trim_start_matches('(')
        .trim_end_matches(')')
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    let parse = |s: &str| s.parse::<u64>().map_err(|_| format!("shape entry `{s}`"));
    match dims.as_slice() {
        [rows, dimension] => {
            let (rows, dimension) = (parse(rows)?, parse(dimension)?);
            if dimension == 0 || dimension as usize > DIMENSION_MAX {
                return Err(format!(
                    "dimension {dimension}: expected 1 to {DIMENSION_MAX}"
                ));
            }
            Ok((rows, dimension as usize, wide))
        }
        _ => Err(format!(
            "shape ({shape}): expected two dimensions, (points, dimension)"
        )),
    }
}

/// The text of `key`'s value in a Python dict literal (up to the next top-level comma).
fn dict_value<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let quoted = [format!("'{key}'"), format!("\"{key}\"")];
    let start = quoted
        .iter()
        .find_map(|q| header.find(q.as_str()).map(|i| i + q.len()))?;
    let rest = header.get(start..)?.trim_start().strip_prefix(':')?;
    let mut depth = 0i32;
    for (i, c) in rest.char_indices() {
        match c {
            '(' | '[' => depth += 1,
            ')' | ']' => depth -= 1,
            ',' | '}' if depth <= 0 => return Some(rest[..i].trim()),
            _ => {}
        }
    }
    Some(rest.trim())
}

/// One JSON Lines point: (id, vector, payload). `at` names the line in errors.
pub fn json_point(line: &[u8], at: &str) -> Result<(u64, Vec<f32>, Option<Payload>), String> {
    let value: serde_json::Value =
        serde_json::from_slice(line).map_err(|e| format!("{at}: not JSON: {e}"))?;
    let id = value
        .get("id")
        .and_then(serde_json::Value::as_u64)
        .ok_or_else(|| format!("{at}: expected \"id\", an integer from 0 to 2^64 - 1"))?;
    let vector = value
        .get("vector")
        .ok_or_else(|| format!("{at}: expected \"vector\", an array of numbers"))?;
    let vector = vector_from_json(vector, &format!("{at}.vector")).map_err(|e| e.0)?;
    if vector.is_empty() || vector.len() > DIMENSION_MAX {
        return Err(format!(
            "{at}.vector: expected 1 to {DIMENSION_MAX} numbers"
        ));
    }
    let payload = match value.get("payload") {
        None | Some(serde_json::Value::Null) => None,
        Some(payload) => {
            Some(payload_from_json(payload, &format!("{at}.payload")).map_err(|e| e.0)?)
        }
    };
    Ok((id, vector, payload))
}

/// Row `row` of a point file, as a vector (for `vortexctl search --vector-file`).
pub fn read_row(path: &Path, format: Format, row: u64) -> Result<Vec<f32>, InputError> {
    let mut reader = PointReader::open(path, format, 0)?;
    let mut skipped = 0u64;
    // Batches of about 8 MiB (one row until a JSON Lines file's dimension is known).
    while let Some(batch) = reader.next_batch(reader.dimension().map_or(1, rows_within_budget))? {
        let count = batch.ids.len() as u64;
        if row < skipped + count {
            let dimension = batch.vectors.len() / batch.ids.len();
            let index = (row - skipped) as usize;
            return Ok(batch.vectors[index * dimension..(index + 1) * dimension].to_vec());
        }
        skipped += count;
    }
    Err(InputError {
        path: path.to_owned(),
        message: format!("row {row} asked for, the file holds {skipped}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let path = dir.join(name);
        std::fs::File::create(&path)
            .unwrap()
            .write_all(bytes)
            .unwrap();
        path
    }

    fn fvecs(rows: &[Vec<f32>]) -> Vec<u8> {
        let mut bytes = Vec::new();
        for row in rows {
            bytes.extend((row.len() as i32).to_le_bytes());
            for x in row {
                bytes.extend(x.to_le_bytes());
            }
        }
        bytes
    }

    fn npy(descr: &str, shape: &str, data: &[u8]) -> Vec<u8> {
        npy_file(descr, shape, data)
    }

    fn all(reader: &mut PointReader, max: usize) -> Vec<Batch> {
        std::iter::from_fn(|| reader.next_batch(max).unwrap()).collect()
    }

    #[test]
    fn fvecs_rows_come_in_batches_with_ids_from_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let rows: Vec<Vec<f32>> = (0..5).map(|i| vec![i as f32, 0.5, -1.0]).collect();
        let path = write(dir.path(), "a.fvecs", &fvecs(&rows));
        let mut reader = PointReader::open(&path, Format::Fvecs, 100).unwrap();
        assert_eq!((reader.dimension(), reader.total()), (Some(3), Some(5)));
        let batches = all(&mut reader, 2);
        assert_eq!(batches.len(), 3);
        assert_eq!(batches[2].ids, vec![104]);
        assert_eq!(batches[0].vectors, vec![0.0, 0.5, -1.0, 1.0, 0.5, -1.0]);
        assert_eq!(read_row(&path, Format::Fvecs, 3).unwrap(), rows[3]);
        assert!(read_row(&path, Format::Fvecs, 5)
            .unwrap_err()
            .to_string()
            .contains("holds 5"));
    }

    #[test]
    fn bad_fvecs_say_which_row() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = fvecs(&[vec![1.0, 2.0], vec![1.0, 2.0, 3.0]]);
        let path = write(dir.path(), "mixed.fvecs", &bytes);
        let mut reader = PointReader::open(&path, Format::Fvecs, 0).unwrap();
        let error = reader.next_batch(10).unwrap_err().to_string();
        assert!(error.contains("row 1 has dimension 3"), "{error}");
        bytes.truncate(bytes.len() - 2);
        let path = write(dir.path(), "cut.fvecs", &bytes[..14]);
        let mut reader = PointReader::open(&path, Format::Fvecs, 0).unwrap();
        assert!(reader
            .next_batch(10)
            .unwrap_err()
            .to_string()
            .contains("row 1"));
        let path = write(dir.path(), "nan.fvecs", &fvecs(&[vec![f32::NAN]]));
        let mut reader = PointReader::open(&path, Format::Fvecs, 0).unwrap();
        assert!(reader
            .next_batch(10)
            .unwrap_err()
            .to_string()
            .contains("finite"));
        let path = write(dir.path(), "text.fvecs", b"hello world");
        let error = PointReader::open(&path, Format::Fvecs, 0)
            .unwrap_err()
            .to_string();
        assert!(error.contains("is this an .fvecs file"), "{error}");
    }

    #[test]
    fn npy_float32_and_float64_are_read_and_other_dtypes_refused() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        let path = write(dir.path(), "a.npy", &npy("<f4", "(3, 2)", &data));
        let mut reader = PointReader::open(&path, Format::Npy, 0).unwrap();
        assert_eq!((reader.dimension(), reader.total()), (Some(2), Some(3)));
        let batches = all(&mut reader, 10);
        assert_eq!(batches[0].vectors, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        assert_eq!(batches[0].ids, vec![0, 1, 2]);
        let wide: Vec<u8> = [1.5f64, -2.0]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        let path = write(dir.path(), "b.npy", &npy("<f8", "(1, 2)", &wide));
        let mut reader = PointReader::open(&path, Format::Npy, 0).unwrap();
        assert_eq!(all(&mut reader, 10)[0].vectors, vec![1.5, -2.0]);
        for (descr, shape, expected) in [
            ("<i4", "(3, 2)", "dtype <i4"),
            ("<f4", "(6,)", "expected two dimensions"),
            ("<f4", "(4, 2)", "too short"),
        ] {
            let path = write(dir.path(), "bad.npy", &npy(descr, shape, &data));
            let error = PointReader::open(&path, Format::Npy, 0)
                .unwrap_err()
                .to_string();
            assert!(error.contains(expected), "{error}");
        }
        let path = write(dir.path(), "junk.npy", b"PK\x03\x04 not numpy");
        let error = PointReader::open(&path, Format::Npy, 0)
            .unwrap_err()
            .to_string();
        assert!(error.contains("not a .npy file"), "{error}");
    }

    #[test]
    fn json_lines_carry_ids_and_payloads_and_errors_name_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let text = "{\"id\": 7, \"vector\": [1, 2], \"payload\": {\"color\": \"red\"}}\n\n\
                    {\"id\": 9, \"vector\": [3, 4]}\n";
        let path = write(dir.path(), "a.jsonl", text.as_bytes());
        let mut reader = PointReader::open(&path, Format::JsonLines, 0).unwrap();
        assert_eq!(reader.total(), Some(2));
        let batches = all(&mut reader, 10);
        assert_eq!(batches[0].ids, vec![7, 9]);
        assert_eq!(
            batches[0].payloads.len(),
            2,
            "one payload per point, or none"
        );
        assert_eq!(reader.dimension(), Some(2));
        for (text, expected) in [
            (
                "{\"id\": 1, \"vector\": [1]}\n{\"id\": 2, \"vector\": [1, 2]}\n",
                "line 2: the vector has 2",
            ),
            ("{\"id\": -1, \"vector\": [1]}\n", "line 1: expected \"id\""),
            ("{\"id\": 1}\n", "line 1: expected \"vector\""),
            ("not json\n", "line 1: not JSON"),
            (
                "{\"id\": 1, \"vector\": [1], \"payload\": 3}\n",
                "line 1.payload: expected a JSON object",
            ),
        ] {
            let path = write(dir.path(), "bad.jsonl", text.as_bytes());
            let mut reader = PointReader::open(&path, Format::JsonLines, 0).unwrap();
            let error = std::iter::from_fn(|| match reader.next_batch(10) {
                Ok(Some(_)) => Some(None),
                Ok(None) => None,
                Err(e) => Some(Some(e.to_string())),
            })
            .flatten()
            .next()
            .unwrap_or_default();
            assert!(error.contains(expected), "{text}: {error}");
        }
    }
}
