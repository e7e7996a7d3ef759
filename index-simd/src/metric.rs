//! The metrics an index ranks by, and the distance each one uses.
//!
//! Every distance is "smaller is closer", as in VBP: squared L2 for `l2`, the negative inner
//! product for `ip`, `1 - cos` for `cosine`. A cosine index stores its vectors normalised,
//! so its distance is `1 - a·b`: one dot product, no norms per comparison.

use crate::distance::Kernels;

/// How vectors are compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Metric {
    /// Squared Euclidean distance.
    L2,
    /// Inner product (the distance is its negative).
    InnerProduct,
    /// Cosine distance; vectors are normalised when they enter the index.
    Cosine,
}

impl Metric {
    /// Every metric.
    pub const ALL: [Metric; 3] = [Metric::L2, Metric::InnerProduct, Metric::Cosine];

    /// The name used in configs, files and logs.
    pub fn name(self) -> &'static str {
        match self {
            Metric::L2 => "l2",
            Metric::InnerProduct => "ip",
            Metric::Cosine => "cosine",
        }
    }

    /// The metric named `name`.
    pub fn from_name(name: &str) -> Option<Metric> {
        Metric::ALL
            .into_iter()
            .find(|metric| metric.name().eq_ignore_ascii_case(name.trim()))
    }

    /// The on-disk code of the metric.
    pub(crate) fn code(self) -> u8 {
        match self {
            Metric::L2 => 0,
            Metric::InnerProduct => 1,
            Metric::Cosine => 2,
        }
    }

    /// The metric with on-disk code `code`.
    pub(crate) fn from_code(code: u8) -> Option<Metric> {
        Metric::ALL.into_iter().find(|metric| metric.code() == code)
    }

    /// Whether vectors are normalised on the way in.
    pub fn normalizes(self) -> bool {
        self == Metric::Cosine
    }

    /// The distance between two vectors as the index stores them (normalised for cosine).
    #[inline(always)]
    pub fn distance(self, kernels: &Kernels, a: &[f32], b: &[f32]) -> f32 {
        match self {
            Metric::L2 => (kernels.l2_squared)(a, b),
            Metric::InnerProduct => -(kernels.dot)(a, b),
            Metric::Cosine => 1.0 - (kernels.dot)(a, b),
        }
    }

    /// A distance on `i8` codes that ranks like [`Metric::distance`] on the vectors the
    /// codes stand for (up to the quantizer's error and a positive scale).
    #[inline(always)]
    pub fn code_distance(self, kernels: &Kernels, a: &[i8], b: &[i8]) -> f32 {
        match self {
            Metric::L2 => (kernels.l2_squared_i8)(a, b) as f32,
            // Quantizer codes stay within ±127, which the narrow kernel needs.
            Metric::InnerProduct | Metric::Cosine => -((kernels.dot_i8_narrow)(a, b) as f32),
        }
    }
}

/// Scales `vector` to unit length in place; an all-zero vector stays zero.
pub fn normalize(vector: &mut [f32]) {
    let norm = vector
        .iter()
        .map(|&x| f64::from(x) * f64::from(x))
        .sum::<f64>()
        .sqrt();
    if norm > 0.0 && norm.is_finite() {
        // Divided in f64: for a norm below about 3e-39 the inverse overflows f32, and the
        // quotient of a finite component by the norm never exceeds 1.
        vector
            .iter_mut()
            .for_each(|x| *x = (f64::from(*x) / norm) as f32);
    }
}

#[cfg(test)]
mod tests {
    use super::normalize;

    #[test]
    fn normalising_tiny_vectors_stays_finite() {
        for tiny in [1e-39f32, 1e-45, f32::MIN_POSITIVE, 3e-39] {
            let mut vector = [tiny, 0.0, -tiny, 0.0];
            normalize(&mut vector);
            assert!(vector.iter().all(|x| x.is_finite()), "{tiny}: {vector:?}");
            let norm: f32 = vector.iter().map(|x| x * x).sum();
            assert!((norm - 1.0).abs() < 1e-6, "{tiny}: norm² {norm}");
        }
        let mut zero = [0.0f32; 3];
        normalize(&mut zero);
        assert_eq!(zero, [0.0; 3]);
    }
}
