#!/usr/bin/env python3
"""The Chroma server over loopback, measured as `vortex-bench serve-ann` measures VORTEX.

    python chroma_server.py --data DIR --port 8765 --ef 16,32,64,128 --connections 2 \
        --seconds 5 --out RESULTS_DIR [--k 10] [--m 16] [--ef-construction 200]

Chroma stands in for PostgreSQL + pgvector, which is not packaged for this machine's Debian
(see shared/BRIEF.md). The script starts `chroma run` on a fresh directory, creates a
collection with the same HNSW parameters as ours (`space`, `max_neighbors` = M,
`ef_construction`), adds the dataset's base vectors (ids are row numbers), then for each
ef sets `ef_search` on the collection and sends the dataset's queries round-robin from
`--connections` threads (one HTTP client each, closed loop) for `--seconds`, recording
each query's latency, the QPS and recall@k against groundtruth.ivecs. The result goes to
RESULTS_DIR/serve/<dataset>/chroma.json in the schema `vortex-bench serve-ann` writes.
"""

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ann_peers import load_dataset  # noqa: E402


def percentile_us(samples_ns, q):
    if not samples_ns:
        return 0.0
    return float(np.percentile(np.asarray(samples_ns, dtype=np.float64), q * 100)) / 1000.0


def wait_for_server(port, deadline_s=60):
    import chromadb

    deadline = time.monotonic() + deadline_s
    while True:
        try:
            client = chromadb.HttpClient(host="127.0.0.1", port=port)
            client.heartbeat()
            return client
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--ef", default="16,32,64,128")
    parser.add_argument("--connections", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--m", type=int, default=16)
    parser.add_argument("--ef-construction", type=int, default=200)
    parser.add_argument("--out", type=Path, default=Path("bench-rigs/results"))
    args = parser.parse_args()
    efs = [int(x) for x in args.ef.split(",")]

    meta, base, queries, truth = load_dataset(args.data, args.k)
    space = {"l2": "l2", "cosine": "cosine"}[meta["metric"]]
    chroma = shutil.which("chroma", path=str(Path(sys.executable).parent)) or "chroma"
    workdir = Path(tempfile.mkdtemp(prefix="chroma-bench-"))
    log = open(workdir / "server.log", "w")
    server = subprocess.Popen(
        [chroma, "run", "--path", str(workdir / "data"), "--host", "127.0.0.1", "--port", str(args.port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        import chromadb

        client = wait_for_server(args.port)
        collection = client.create_collection(
            "ann",
            configuration={
                "hnsw": {
                    "space": space,
                    "max_neighbors": args.m,
                    "ef_construction": args.ef_construction,
                    "ef_search": efs[0],
                }
            },
        )
        started = time.monotonic()
        batch = min(1000, client.get_max_batch_size())
        for start in range(0, len(base), batch):
            end = min(start + batch, len(base))
            collection.add(ids=[str(i) for i in range(start, end)], embeddings=base[start:end])
            if start % 50_000 == 0:
                print(f"loaded {end} of {len(base)}", file=sys.stderr)
        # Chroma indexes as it adds (its HNSW is built inline); one query makes sure the
        # index is loaded before the timed runs.
        collection.query(query_embeddings=queries[:1], n_results=args.k)
        load_seconds = time.monotonic() - started

        points = []
        for ef in efs:
            collection.modify(configuration={"hnsw": {"ef_search": ef}})
            got = client.get_collection("ann").configuration_json.get("hnsw", {}).get("ef_search")
            if got not in (None, ef):
                raise RuntimeError(f"ef_search is {got} after setting {ef}")
            counter = {"next": 0}
            lock = threading.Lock()
            deadline = time.monotonic() + args.seconds
            shares = []

            def worker():
                local = chromadb.HttpClient(host="127.0.0.1", port=args.port)
                coll = local.get_collection("ann")
                times, found, asked, errors = [], 0, 0, 0
                while time.monotonic() < deadline:
                    with lock:
                        q = counter["next"] % len(queries)
                        counter["next"] += 1
                    sent = time.perf_counter_ns()
                    try:
                        result = coll.query(query_embeddings=queries[q : q + 1], n_results=args.k)
                    except Exception:
                        errors += 1
                        continue
                    times.append(time.perf_counter_ns() - sent)
                    ids = {int(i) for i in result["ids"][0]}
                    found += len(ids & set(truth[q].tolist()))
                    asked += 1
                shares.append((times, found, asked, errors))

            run_started = time.monotonic()
            threads = [threading.Thread(target=worker) for _ in range(args.connections)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            elapsed = time.monotonic() - run_started
            times = [t for share in shares for t in share[0]]
            found = sum(s[1] for s in shares)
            asked = sum(s[2] for s in shares)
            errors = sum(s[3] for s in shares)
            point = {
                "ef": ef,
                "recall": found / max(asked * args.k, 1),
                "qps": asked / elapsed,
                "queries": asked,
                "errors": errors,
                "latency": {
                    "p50_us": percentile_us(times, 0.5),
                    "p99_us": percentile_us(times, 0.99),
                    "p999_us": percentile_us(times, 0.999),
                    "max_us": max(times) / 1000.0 if times else 0.0,
                },
                "loop_jitter": [],
            }
            print(
                f"ef {ef}: recall@{args.k} {point['recall']:.4f}, {point['qps']:.0f} QPS, "
                f"p50 {point['latency']['p50_us']:.0f} µs, p99 {point['latency']['p99_us']:.0f} µs",
                file=sys.stderr,
            )
            points.append(point)
        result = {
            "engine": f"chroma {version('chromadb')}",
            "dataset": meta["name"],
            "command": " ".join(sys.argv),
            "connections": args.connections,
            "seconds_per_ef": args.seconds,
            "k": args.k,
            "load_seconds": load_seconds,
            "points": points,
        }
        out = args.out / "serve" / meta["name"]
        out.mkdir(parents=True, exist_ok=True)
        (out / "chroma.json").write_text(json.dumps(result, indent=2) + "\n")
        print(f"| ef | recall@{args.k} | QPS | p50 µs | p99 µs |")
        print("|---:|---:|---:|---:|---:|")
        for p in points:
            print(
                f"| {p['ef']} | {p['recall']:.4f} | {p['qps']:.0f} | "
                f"{p['latency']['p50_us']:.0f} | {p['latency']['p99_us']:.0f} |"
            )
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
