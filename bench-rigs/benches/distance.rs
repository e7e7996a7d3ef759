//! Distance kernels per SIMD level, side by side (issue #4's kernels; the recall/QPS
//! harness against the peers comes with the index).
//!
//! Run: `cargo bench -p vortex-bench --bench distance`. Results: bench-rigs/README.md.

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use vortex_index::distance::{Kernels, Level};
use vortex_vbp::samples::vector as values;

fn bench_kernels(c: &mut Criterion) {
    let levels: Vec<Kernels> = Level::ALL
        .into_iter()
        .filter_map(|level| Kernels::for_level(level).ok())
        .collect();
    for dimension in [128usize, 384, 768] {
        let a = values(dimension, 1);
        let b = values(dimension, 2);
        let codes_a: Vec<i8> = a.iter().map(|value| (value * 127.0) as i8).collect();
        let codes_b: Vec<i8> = b.iter().map(|value| (value * 127.0) as i8).collect();
        let mut group = c.benchmark_group(format!("distance/{dimension}"));
        for kernels in &levels {
            let name = kernels.level.name();
            group.bench_function(BenchmarkId::new("l2_squared", name), |bencher| {
                bencher.iter(|| (kernels.l2_squared)(black_box(&a), black_box(&b)))
            });
            group.bench_function(BenchmarkId::new("dot", name), |bencher| {
                bencher.iter(|| (kernels.dot)(black_box(&a), black_box(&b)))
            });
            group.bench_function(BenchmarkId::new("cosine_distance", name), |bencher| {
                bencher.iter(|| (kernels.cosine_distance)(black_box(&a), black_box(&b)))
            });
            group.bench_function(BenchmarkId::new("dot_i8", name), |bencher| {
                bencher.iter(|| (kernels.dot_i8)(black_box(&codes_a), black_box(&codes_b)))
            });
            group.bench_function(BenchmarkId::new("l2_squared_i8", name), |bencher| {
                bencher.iter(|| (kernels.l2_squared_i8)(black_box(&codes_a), black_box(&codes_b)))
            });
            // What the i8 graph walk calls (codes within ±127).
            group.bench_function(BenchmarkId::new("dot_i8_narrow", name), |bencher| {
                bencher.iter(|| (kernels.dot_i8_narrow)(black_box(&codes_a), black_box(&codes_b)))
            });
        }
        group.finish();
    }
}

criterion_group!(benches, bench_kernels);
criterion_main!(benches);
