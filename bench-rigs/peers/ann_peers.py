#!/usr/bin/env python3
"""Recall/QPS/build/memory benchmark of the peer HNSW engines (hnswlib, FAISS, USearch).

    python ann_peers.py --data DIR --engines hnswlib,faiss,usearch --ef 16,32,64,128,256 \
        --m 16 --ef-construction 200 --build-threads 2 --out RESULTS_DIR [--k 10] [--repeats 3]

DIR holds base.fvecs, query.fvecs, groundtruth.ivecs (exact nearest ids per query, 0-based
rows of base, best first) and meta.json ({"name", "metric": "l2" | "cosine", "n", "dim",
"queries", "seed"}). Cosine datasets are stored normalised. Each engine writes
RESULTS_DIR/<dataset name>/<engine>.json in the schema vortex-bench writes for our own
index, so report.py reads both alike.

Search, per ef: one untimed warm-up pass over all queries, then --repeats timed passes (one
batch call each), of which the fastest gives the QPS; recall is the same in every pass. This
machine is shared and noisy, and other load only ever slows a pass down, so best-of-N is
the least noisy estimate of what an engine can do. vortex-bench does the same for ours.

Every engine runs in a fresh subprocess of this script (hidden flag --single ENGINE): the
resident-set delta of its build is then not blurred by another engine's heap, libraries or
allocator caches.
"""

import argparse
import gc
import json
import math
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

import numpy as np

ENGINES = ("hnswlib", "faiss", "usearch")
# The PyPI distribution of each engine, whose version goes into the result.
DISTRIBUTIONS = {"hnswlib": "hnswlib", "faiss": "faiss-cpu", "usearch": "usearch"}


# --- TEXMEX .fvecs / .ivecs ------------------------------------------------------------


def read_vecs(path: Path, dtype: str) -> np.ndarray:
    """Reads an .fvecs ('<f4') or .ivecs ('<i4') file into an owned (rows, dim) array.

    Each row is an int32 dim followed by dim values. The file is mapped and the value
    columns copied out in one strided copy (fast at 1M x 128); the copy also leaves no
    file-backed pages mapped, which would otherwise enter the resident set as an engine
    first touches them and be counted as its memory.
    """
    raw = np.memmap(path, dtype="<i4", mode="r")
    if raw.size == 0:
        raise ValueError(f"{path}: empty")
    dim = int(raw[0])
    if dim <= 0 or raw.size % (dim + 1):
        raise ValueError(f"{path}: size is not a whole number of rows of dim {dim}")
    rows = raw.reshape(-1, dim + 1)
    if not np.all(rows[:, 0] == dim):
        raise ValueError(f"{path}: rows of differing dim (first row has {dim})")
    values = np.ascontiguousarray(rows[:, 1:]).view(dtype)
    del rows, raw
    return values


def load_dataset(data_dir: Path, k: int):
    meta = json.loads((data_dir / "meta.json").read_text())
    if meta["metric"] not in ("l2", "cosine"):
        raise ValueError(f"unsupported metric {meta['metric']!r}: expected l2 or cosine")
    base = read_vecs(data_dir / "base.fvecs", "<f4")
    queries = read_vecs(data_dir / "query.fvecs", "<f4")
    truth = read_vecs(data_dir / "groundtruth.ivecs", "<i4")
    if base.shape != (meta["n"], meta["dim"]):
        raise ValueError(f"base.fvecs is {base.shape}, meta.json says ({meta['n']}, {meta['dim']})")
    if queries.shape != (meta["queries"], meta["dim"]):
        raise ValueError(f"query.fvecs is {queries.shape}, meta.json says ({meta['queries']}, {meta['dim']})")
    if truth.shape[0] != meta["queries"] or truth.shape[1] < k:
        raise ValueError(f"groundtruth.ivecs is {truth.shape}: need {meta['queries']} rows of at least k={k}")
    return meta, base, queries, truth[:, :k]


# --- measurement ------------------------------------------------------------------------


def resident_bytes() -> int:
    """Current resident set size: field 2 of /proc/self/statm is in pages."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean over queries of |found ∩ truth| / k; both are (queries, k) id arrays.

    Ids a search failed to fill (FAISS's -1) match nothing; an engine returns each id at
    most once, so counting found ids present in the truth row is the intersection size.
    """
    hits = (found[:, :, None] == truth[:, None, :]).any(axis=2)
    return float(hits.sum()) / truth.size


def host() -> dict:
    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {"cpu": cpu, "cores": os.cpu_count()}


# --- engines ----------------------------------------------------------------------------
# Each adapter exposes build(base) and search(queries, k, ef) -> (queries, k) ids, with the
# thread counts fixed by the benchmark: build_threads for the build, one for search.


class Hnswlib:
    def __init__(self, metric: str, dim: int, m: int, ef_construction: int, build_threads: int):
        import hnswlib

        self.index = hnswlib.Index(space={"l2": "l2", "cosine": "cosine"}[metric], dim=dim)
        self.m, self.ef_construction, self.build_threads = m, ef_construction, build_threads

    def build(self, base):
        self.index.init_index(max_elements=len(base), M=self.m, ef_construction=self.ef_construction)
        self.index.add_items(base, np.arange(len(base)), num_threads=self.build_threads)

    def search(self, queries, k, ef):
        self.index.set_ef(ef)
        labels, _ = self.index.knn_query(queries, k=k, num_threads=1)
        return labels


class Faiss:
    def __init__(self, metric: str, dim: int, m: int, ef_construction: int, build_threads: int):
        import faiss

        self.faiss = faiss
        # Cosine data is normalised, so inner product ranks exactly as cosine similarity.
        faiss_metric = {"l2": faiss.METRIC_L2, "cosine": faiss.METRIC_INNER_PRODUCT}[metric]
        self.index = faiss.IndexHNSWFlat(dim, m, faiss_metric)
        self.index.hnsw.efConstruction = ef_construction
        self.build_threads = build_threads

    def build(self, base):
        # FAISS parallelises with OpenMP; the thread count is process-wide.
        self.faiss.omp_set_num_threads(self.build_threads)
        self.index.add(base)

    def search(self, queries, k, ef):
        self.faiss.omp_set_num_threads(1)
        self.index.hnsw.efSearch = ef
        _, ids = self.index.search(queries, k)
        return ids


class Usearch:
    def __init__(self, metric: str, dim: int, m: int, ef_construction: int, build_threads: int):
        from usearch.index import Index

        # dtype f32: USearch otherwise stores vectors as bf16, halving its memory and
        # changing its recall against engines that all keep float32.
        self.index = Index(
            ndim=dim,
            metric={"l2": "l2sq", "cosine": "cos"}[metric],
            dtype="f32",
            connectivity=m,
            expansion_add=ef_construction,
        )
        self.build_threads = build_threads

    def build(self, base):
        self.index.add(np.arange(len(base), dtype=np.uint64), base, threads=self.build_threads)

    def search(self, queries, k, ef):
        self.index.expansion_search = ef
        return self.index.search(queries, k, threads=1).keys


ADAPTERS = {"hnswlib": Hnswlib, "faiss": Faiss, "usearch": Usearch}


def bench_engine(args, engine: str) -> Path:
    """Builds and searches one engine in this process and writes its result file."""
    meta, base, queries, truth = load_dataset(args.data, args.k)
    # Import the engine's module (inside the adapter) before the baseline, so its shared
    # libraries are not counted as index memory.
    index = ADAPTERS[engine](meta["metric"], meta["dim"], args.m, args.ef_construction, args.build_threads)
    gc.collect()
    rss_before = resident_bytes()
    start = time.perf_counter()
    index.build(base)
    build_seconds = time.perf_counter() - start
    memory_bytes = resident_bytes() - rss_before

    runs = []
    for ef in args.ef:
        index.search(queries, args.k, ef)  # warm-up: caches and lazily allocated buffers
        seconds = math.inf
        for _ in range(args.repeats):
            start = time.perf_counter()
            found = index.search(queries, args.k, ef)
            seconds = min(seconds, time.perf_counter() - start)
        runs.append(
            {
                "ef": ef,
                f"recall_at_{args.k}": recall(np.asarray(found, dtype=np.int64), truth),
                "qps": len(queries) / seconds,
                # One batch call per ef gives no per-query times; vortex-bench fills these.
                "latency_us_mean": None,
                "latency_us_p99": None,
            }
        )

    result = {
        "engine": engine,
        "engine_version": version(DISTRIBUTIONS[engine]),
        "dataset": meta["name"],
        "metric": meta["metric"],
        "n": meta["n"],
        "dim": meta["dim"],
        "queries": meta["queries"],
        "m": args.m,
        "ef_construction": args.ef_construction,
        "build_threads": args.build_threads,
        "build_seconds": build_seconds,
        "memory_bytes": memory_bytes,
        "bytes_per_vector": memory_bytes / meta["n"],
        "search_threads": 1,
        "repeats": args.repeats,
        "runs": runs,
        "host": host(),
        "date": datetime.now(UTC).date().isoformat(),
    }
    out_dir = args.out / meta["name"]
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{engine}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path


def child_argv(args, engine: str) -> list:
    """This script's command line for one engine, with every setting passed explicitly."""
    options = {
        "--data": args.data,
        "--ef": ",".join(map(str, args.ef)),
        "--m": args.m,
        "--ef-construction": args.ef_construction,
        "--build-threads": args.build_threads,
        "--out": args.out,
        "--k": args.k,
        "--repeats": args.repeats,
        "--single": engine,
    }
    return [sys.executable, str(Path(__file__).resolve()), *(str(x) for pair in options.items() for x in pair)]


def comma_list(convert):
    return lambda text: [convert(item) for item in text.split(",") if item]


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="dataset directory")
    p.add_argument(
        "--engines", type=comma_list(str), default=list(ENGINES), help="comma-separated, of: " + ", ".join(ENGINES)
    )
    p.add_argument(
        "--ef", type=comma_list(int), default=[16, 32, 64, 128, 256], help="comma-separated search ef values"
    )
    p.add_argument("--m", type=int, default=16)
    p.add_argument("--ef-construction", type=int, default=200)
    p.add_argument("--build-threads", type=int, default=2)
    p.add_argument("--out", type=Path, required=True, help="results directory")
    p.add_argument("--k", type=int, default=10, help="neighbours per query, recall@k")
    p.add_argument("--repeats", type=int, default=3, help="timed passes per ef, the fastest kept")
    p.add_argument("--single", choices=ENGINES, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.repeats < 1:
        p.error(f"--repeats must be at least 1, got {args.repeats}")
    unknown = sorted(set(args.engines) - set(ENGINES))
    if unknown:
        p.error(f"unknown engine(s) {', '.join(unknown)}: expected some of {', '.join(ENGINES)}")
    return args


def main():
    args = parse_args()
    if args.single:
        print(f"wrote {bench_engine(args, args.single)}")
        return
    failed = []
    for engine in args.engines:
        print(f"== {engine}", flush=True)
        if subprocess.run(child_argv(args, engine)).returncode != 0:
            failed.append(engine)
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
