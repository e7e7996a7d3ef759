//! Scalar (`i8`) quantization: each component becomes one signed byte, a quarter of an
//! `f32`, so that a graph walk reads four times less memory and uses the `i8` kernels.
//!
//! The code of component `d` is `round((x_d - offset_d) / scale)` clamped to ±127. The scale
//! is one number for the whole vector, so that squared L2 and dot products on codes are the
//! true ones times `scale²`: the order of distances survives and the codes can be compared
//! with the exact integer kernels. For `l2` the offsets centre each dimension on the middle
//! of its range in the training sample (they cancel in a difference). For `ip` and `cosine`
//! the offsets are zero, since an offset would add a term per stored vector to every dot
//! product.
//!
//! The scale comes from a high quantile (99.9 %) of the centred magnitudes in the sample,
//! not the maximum, so that one outlier does not cost every other value its resolution; the
//! rare values beyond it clamp. The search re-ranks its candidates with the `f32` vectors,
//! which repairs the order among near ties that quantization blurs.

use crate::metric::Metric;

/// The largest magnitude of a code.
pub const CODE_MAX: i8 = 127;

/// The quantile of centred magnitudes that maps to [`CODE_MAX`].
const SCALE_QUANTILE: f64 = 0.999;

/// The most components the training looks at (rows evenly spaced through the sample): a
/// million values place the 99.9 % quantile within a few hundredths of a percent, and keep
/// the training's scratch at 4 MiB whatever the index's size.
const TRAINING_VALUES_MAX: usize = 1 << 20;

/// The trained mapping from `f32` vectors to `i8` codes.
#[derive(Debug, Clone, PartialEq)]
pub struct ScalarQuantizer {
    offsets: Vec<f32>,
    scale: f32,
}

impl ScalarQuantizer {
    /// Trains on `rows` (row-major, `dim` components each) for `metric`. An empty sample,
    /// or one whose values are all equal, gives a scale of 1.
    pub fn train(metric: Metric, dim: usize, rows: &[f32]) -> ScalarQuantizer {
        ScalarQuantizer::train_strided(metric, dim, dim, rows)
    }

    /// Trains on rows that start `stride` floats apart (the first `dim` of each are the
    /// vector), as the index stores them.
    pub fn train_strided(
        metric: Metric,
        dim: usize,
        stride: usize,
        rows: &[f32],
    ) -> ScalarQuantizer {
        assert!(dim > 0 && stride >= dim && rows.len().is_multiple_of(stride));
        let row_count = rows.len() / stride;
        let row_step = (row_count * dim).div_ceil(TRAINING_VALUES_MAX).max(1);
        let sample = || {
            rows.chunks_exact(stride)
                .step_by(row_step)
                .map(|row| &row[..dim])
        };
        let mut offsets = vec![0.0f32; dim];
        if metric == Metric::L2 && row_count > 0 {
            let mut low = vec![f32::INFINITY; dim];
            let mut high = vec![f32::NEG_INFINITY; dim];
            for row in sample() {
                for (d, &x) in row.iter().enumerate() {
                    low[d] = low[d].min(x);
                    high[d] = high[d].max(x);
                }
            }
            for d in 0..dim {
                offsets[d] = low[d] / 2.0 + high[d] / 2.0;
            }
        }
        let mut magnitudes: Vec<f32> = sample()
            .flat_map(|row| row.iter().zip(&offsets).map(|(&x, &o)| (x - o).abs()))
            .collect();
        let scale = if magnitudes.is_empty() {
            1.0
        } else {
            let rank = ((magnitudes.len() - 1) as f64 * SCALE_QUANTILE).round() as usize;
            let (_, &mut quantile, _) = magnitudes.select_nth_unstable_by(rank, f32::total_cmp);
            quantile / f32::from(CODE_MAX)
        };
        let scale = if scale > 0.0 && scale.is_finite() {
            scale
        } else {
            1.0
        };
        ScalarQuantizer { offsets, scale }
    }

    /// A quantizer from its parts (as stored in an index file).
    pub(crate) fn from_parts(offsets: Vec<f32>, scale: f32) -> Option<ScalarQuantizer> {
        (scale > 0.0 && scale.is_finite() && offsets.iter().all(|x| x.is_finite()))
            .then_some(ScalarQuantizer { offsets, scale })
    }

    /// The number of components.
    pub fn dim(&self) -> usize {
        self.offsets.len()
    }

    /// The value one code step stands for.
    pub fn scale(&self) -> f32 {
        self.scale
    }

    /// The per-component centres.
    pub fn offsets(&self) -> &[f32] {
        &self.offsets
    }

    /// Writes the codes of `vector` into `codes` (both `dim` long).
    pub fn encode(&self, vector: &[f32], codes: &mut [i8]) {
        debug_assert_eq!(vector.len(), self.dim());
        debug_assert_eq!(codes.len(), self.dim());
        let inverse = 1.0 / self.scale;
        let limit = f32::from(CODE_MAX);
        for ((code, &x), &offset) in codes.iter_mut().zip(vector).zip(&self.offsets) {
            // `as` saturates and maps NaN to 0; the clamp keeps -128 out so that |code| ≤ 127.
            *code = ((x - offset) * inverse).round().clamp(-limit, limit) as i8;
        }
    }

    /// The vector that `codes` stand for.
    pub fn decode(&self, codes: &[i8], vector: &mut [f32]) {
        for ((x, &code), &offset) in vector.iter_mut().zip(codes).zip(&self.offsets) {
            *x = offset + f32::from(code) * self.scale;
        }
    }
}
