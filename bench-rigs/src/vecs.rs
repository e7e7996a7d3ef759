//! TEXMEX `.fvecs` / `.ivecs` files: each row is a little-endian `i32` dimension followed by
//! that many `f32` (or `i32`) values. The format of the classic ANN sets (SIFT1M, GIST1M),
//! read by every peer.

use anyhow::{bail, Context};
use std::io::{BufWriter, Write};
use std::path::Path;

/// Rows of equal length, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Rows<T> {
    /// Values per row.
    pub dim: usize,
    /// All values, row after row.
    pub values: Vec<T>,
}

impl<T> Rows<T> {
    /// The number of rows.
    pub fn len(&self) -> usize {
        self.values.len().checked_div(self.dim).unwrap_or(0)
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// Row `index`.
    pub fn row(&self, index: usize) -> &[T] {
        &self.values[index * self.dim..(index + 1) * self.dim]
    }
}

/// A 4-byte little-endian value type of a vecs file.
pub trait VecsValue: Copy {
    fn from_le(bytes: [u8; 4]) -> Self;
    fn to_le(self) -> [u8; 4];
}

impl VecsValue for f32 {
    fn from_le(bytes: [u8; 4]) -> f32 {
        f32::from_le_bytes(bytes)
    }
    fn to_le(self) -> [u8; 4] {
        self.to_le_bytes()
    }
}

impl VecsValue for i32 {
    fn from_le(bytes: [u8; 4]) -> i32 {
        i32::from_le_bytes(bytes)
    }
    fn to_le(self) -> [u8; 4] {
        self.to_le_bytes()
    }
}

/// Reads a whole vecs file; every row must have the first row's dimension.
pub fn read<T: VecsValue>(path: &Path) -> anyhow::Result<Rows<T>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let word = |at: usize| -> [u8; 4] { bytes[at..at + 4].try_into().unwrap_or_default() };
    if bytes.len() < 4 {
        bail!("{}: empty or shorter than one header", path.display());
    }
    let dim = i32::from_le_bytes(word(0));
    if dim <= 0 {
        bail!("{}: dimension {dim} in the first row", path.display());
    }
    let dim = dim as usize;
    let row_bytes = 4 * (dim + 1);
    if !bytes.len().is_multiple_of(row_bytes) {
        bail!(
            "{}: {} bytes is not a whole number of {dim}-value rows",
            path.display(),
            bytes.len()
        );
    }
    let mut values = Vec::with_capacity(bytes.len() / row_bytes * dim);
    for (row, chunk) in bytes.chunks_exact(row_bytes).enumerate() {
        let header = i32::from_le_bytes(chunk[..4].try_into().unwrap_or_default());
        if header as usize != dim {
            bail!(
                "{}: row {row} has dimension {header}, the first has {dim}",
                path.display()
            );
        }
        values.extend(
            chunk[4..]
                .chunks_exact(4)
                .map(|value| T::from_le(value.try_into().unwrap_or_default())),
        );
    }
    Ok(Rows { dim, values })
}

/// Writes `rows` as a vecs file.
pub fn write<T: VecsValue>(path: &Path, rows: &Rows<T>) -> anyhow::Result<()> {
    let file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut writer = BufWriter::with_capacity(1 << 20, file);
    let dim = i32::try_from(rows.dim).context("dimension beyond i32")?;
    for row in rows.values.chunks_exact(rows.dim) {
        writer.write_all(&dim.to_le_bytes())?;
        for &value in row {
            writer.write_all(&value.to_le())?;
        }
    }
    writer.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("a.fvecs");
        let rows = Rows {
            dim: 3,
            values: vec![1.0f32, 2.0, 3.0, -4.0, 5.5, 6.25],
        };
        write(&path, &rows).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 2 * 16);
        assert_eq!(read::<f32>(&path).unwrap(), rows);

        std::fs::write(&path, [3, 0, 0, 0, 1, 2]).unwrap();
        assert!(read::<f32>(&path)
            .unwrap_err()
            .to_string()
            .contains("whole number"));
        let mut bytes = Vec::new();
        for dim in [1i32, 2] {
            bytes.extend(dim.to_le_bytes());
            bytes.extend([0u8; 4]);
        }
        std::fs::write(&path, &bytes).unwrap();
        assert!(read::<i32>(&path).is_err());
        std::fs::write(&path, []).unwrap();
        assert!(read::<i32>(&path)
            .unwrap_err()
            .to_string()
            .contains("empty"));
    }
}
