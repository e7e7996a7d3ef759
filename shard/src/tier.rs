//! The node's index tier (issue #22): few, large graphs. Each LEU's LSM keeps its own
//! segments, each with a side-car graph, so the settled data of a collection on a node with
//! N LEUs is at least N graphs, and a search that walks N graphs costs nearly N walks. The
//! tier builds one [`NodeGraph`] per collection over the settled segments of every LEU, and
//! a whole search (`view::search_node`) walks it instead of the segments it covers.
//!
//! **What a node graph covers.** The tables it was built from, named by (LEU, table number),
//! and in each only the nodes that were live then (not superseded). Each of its nodes keeps
//! where it came from: the covered table and its node there. A search admits a node only
//! when, in its LEU's current view, that table is still live, that node of it is still not
//! superseded, and the MemTables hold nothing newer of the point: exactly the test the
//! table's own segment would apply. So a node graph never needs updating to stay correct;
//! it only covers less as the LEUs' merges retire the tables it was built from, and the
//! segments it does not cover (newer flushes, merge outputs) are searched as before. Nothing
//! is ever returned twice: a point's newest version lies in one table, which is either
//! covered (the node graph answers for it) or not (its segment does).
//!
//! **When it is rebuilt** ([`Coverage::wants_rebuild`]): once a search would walk two graphs
//! or more, and what the node graph does not cover is a tenth of what it does, or more than
//! [`WALKS_MAX`] graphs, or when a tenth of its nodes died since its build (deletes and
//! overwrites: its walk then tests every node); and, once the LEUs' tables have not changed
//! for [`QUIET`], whenever a search would walk two graphs or more over live nodes or the
//! graph holds any dead node: settled, a collection is one graph walked without a test per
//! node. Rebuilds for that last rule back off by what the previous one took (`Quiet`). A rebuild is seeded with the previous node graph (`Seed`): a node
//! whose point and vector are unchanged keeps its links, and only the rest is inserted, so
//! each rebuild costs what arrived since the last.
//!
//! **Builder.** [`IndexTier::start`] runs one thread, unpinned and at nice 19, that looks at
//! the LEUs' published views every [`CHECK_EVERY`] and builds what is due with `threads`
//! build threads, its helpers at idle priority (`Helpers::Idle`: only CPU time the LEUs
//! leave; the tier's own thread keeps progressing under full load), publishing each graph
//! through an `arc_swap` cell as the views are. Dropping the tier cancels a running build
//! and joins the thread. Given a directory, the tier saves each node graph there once
//! nothing more is due (not after every rebuild of a load), and a restarted tier loads them
//! before its first look (`tier_file.rs`): searches walk one graph per collection at once.

use crate::catalog::Catalog;
use crate::error::ShardError;
use crate::sidecar::{carry_unchanged, index_metric, Region};
use crate::tier_file;
use crate::view::{live_collection, PublishedView, ShardView};
use arc_swap::ArcSwap;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;
use vortex_index::NodeSet;
use vortex_index::{
    vector_stride, BuildControl, BuildParams, Helpers, Hnsw, IndexError, Quantization, Rows, Seed,
    Store,
};
use vortex_vbp::message::{CollectionSpec, VectorType};

/// How often the builder looks at the views.
pub const CHECK_EVERY: Duration = Duration::from_millis(250);
/// Graphs a search may walk before the tier rebuilds whatever the sizes.
pub const WALKS_MAX: usize = 4;
/// How long the LEUs' tables must stay unchanged before the tier folds whatever is left
/// uncovered into the node graph.
pub const QUIET: Duration = Duration::from_secs(1);

/// Where a node of a node graph came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Source {
    /// Index into [`NodeGraph::covered`].
    pub table: u32,
    /// The node in that table's segment.
    pub node: u32,
}

/// One graph over the settled segments of every LEU, for one collection.
#[derive(Debug)]
pub struct NodeGraph {
    /// The collection's name, and its id in each LEU's catalog (by LEU).
    pub(crate) name: String,
    pub(crate) collection_ids: Vec<u32>,
    pub(crate) graph: Hnsw,
    /// Per node: where its vector came from.
    pub(crate) sources: Vec<Source>,
    /// The tables covered: (LEU, table number).
    pub(crate) covered: Vec<(u16, u64)>,
    /// Each covered table's superseded nodes when it was built. A table's superseded set
    /// only grows, so a view whose set for it is smaller is older than the build: the node
    /// graph lacks nodes superseded since, which are live in that view, and must not answer
    /// for the table there.
    pub(crate) superseded_at_build: Vec<usize>,
}

impl NodeGraph {
    /// Nodes.
    pub fn len(&self) -> usize {
        self.graph.len()
    }

    /// Whether it has no node.
    pub fn is_empty(&self) -> bool {
        self.graph.is_empty()
    }

    /// Whether it holds no vectors of its own (an `i8` collection's: it walks on codes and
    /// re-ranks with the covered tables' rows).
    pub fn is_codes_only(&self) -> bool {
        self.graph.is_codes_only()
    }

    /// Tables covered (over all LEUs).
    pub fn tables_covered(&self) -> usize {
        self.covered.len()
    }

    /// Each covered table's superseded set in its LEU's view (`views` in LEU order), where
    /// the node graph answers for the table there; `None` where the table was retired since
    /// the build, or the view is older than the build (see `superseded_at_build`).
    pub(crate) fn answering<'v>(&self, views: &[&'v ShardView]) -> Vec<Option<&'v NodeSet>> {
        self.covered
            .iter()
            .zip(&self.superseded_at_build)
            .map(|(&(leu, number), &at_build)| {
                let entry = views.get(usize::from(leu))?.segment(number)?;
                Some(&*entry.superseded).filter(|set| set.len() >= at_build)
            })
            .collect()
    }

    /// Which covered table table `number` of LEU `leu` is, when the node graph answers for
    /// it (`answering`: what [`NodeGraph::answering`] gave for the same views).
    pub(crate) fn answers_for(
        &self,
        answering: &[Option<&NodeSet>],
        leu: usize,
        number: u64,
    ) -> Option<usize> {
        self.covered
            .iter()
            .zip(answering)
            .position(|(&(l, n), set)| usize::from(l) == leu && n == number && set.is_some())
    }

    /// Whether it was built for collection `name` as `views` hold it now (a collection
    /// dropped and created again under the same name has new ids).
    pub fn serves(&self, name: &str, views: &[&ShardView]) -> bool {
        self.name == name
            && self.collection_ids.len() == views.len()
            && views.iter().zip(&self.collection_ids).all(|(view, &id)| {
                live_collection(view.catalog(), name).is_ok_and(|(live, _)| live == id)
            })
    }
}

/// The vectors of a node graph's nodes where they live: each node's row in the covered
/// table it came from (the table's mapped vector region, through its segment), as `views`
/// (every LEU's, in LEU order) hold them. A node whose table is gone from its view has none.
/// A codes-only graph re-ranks with these; any graph can be read through them.
pub(crate) struct NodeRows<'a> {
    sources: &'a [Source],
    /// By covered table: where its rows are read.
    tables: Vec<Option<TableRows<'a>>>,
}

/// Where a covered table's rows are read from, in the view searched.
#[derive(Clone, Copy)]
enum TableRows<'a> {
    /// Its segment's graph, whose vectors are the table's rows: read from the file.
    Graph(&'a Hnsw),
    /// Its vector region, while the segment's graph is being built (a table published by a
    /// flush): a view taken then has no graph for it, and a node graph built later covers
    /// it. Read from the file, for as long as the build takes.
    Region(&'a Region),
}

impl<'a> NodeRows<'a> {
    pub(crate) fn of(graph: &'a NodeGraph, views: &[&'a ShardView]) -> NodeRows<'a> {
        let tables = graph
            .covered
            .iter()
            .map(|&(leu, number)| {
                let segment = views
                    .get(usize::from(leu))?
                    .segment(number)?
                    .segment
                    .as_ref()?;
                match (&segment.graph, &segment.rows) {
                    (Some(graph), _) => Some(TableRows::Graph(graph)),
                    (None, Some(rows)) => Some(TableRows::Region(rows)),
                    (None, None) => None,
                }
            })
            .collect();
        NodeRows {
            sources: &graph.sources,
            tables,
        }
    }
}

impl Rows for NodeRows<'_> {
    fn read(&self, node: u32, out: &mut [f32]) -> Result<bool, IndexError> {
        let Some(source) = self.sources.get(node as usize) else {
            return Ok(false);
        };
        // Reads of the file, not of its mapping (see `Rows`), the units verified.
        match self.tables.get(source.table as usize) {
            Some(Some(TableRows::Graph(table))) => table.read_vector(source.node, out),
            Some(Some(TableRows::Region(region))) => {
                region.read(source.node, out).map_err(IndexError::Corrupt)
            }
            _ => Ok(false),
        }
    }
}

/// What a search of a collection walks, with and without the current node graph.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Coverage {
    /// Graphs a search walks: the node graph (if any) and the segments it does not cover.
    pub walks: usize,
    /// Segments (with a graph) of the collection over all LEUs.
    pub segments: usize,
    /// Nodes, live when last looked at, in segments the node graph does not cover.
    pub uncovered_nodes: usize,
    /// Nodes of the node graph whose table is still live.
    pub covered_nodes: usize,
    /// Nodes of the node graph superseded or deleted since its build (in tables still
    /// live): they hold every search of the graph to the walk that tests each node.
    pub dead_nodes: usize,
}

impl Coverage {
    /// Whether a rebuild of the node graph is due while the LEUs' tables keep changing (see
    /// the module documentation).
    pub fn wants_rebuild(&self) -> bool {
        (self.walks >= 2
            && self.uncovered_nodes > 0
            && (self.walks > WALKS_MAX || self.uncovered_nodes * 10 >= self.covered_nodes))
            || (self.dead_nodes > 0 && self.dead_nodes * 10 >= self.covered_nodes)
    }

    /// Whether a rebuild is due once the LEUs' tables have stopped changing for [`QUIET`]:
    /// whenever a search walks more than one graph over live nodes, or the node graph holds
    /// nodes dead since its build (deletes, overwrites), so that a settled collection is one
    /// graph walked without a per-node test.
    pub fn wants_rebuild_when_quiet(&self) -> bool {
        (self.walks >= 2 && self.uncovered_nodes > 0) || self.dead_nodes > 0
    }
}

/// What a search of `name` over `views` walks with `graph` (checked with
/// [`NodeGraph::serves`] by the caller).
pub fn coverage(views: &[&ShardView], name: &str, graph: Option<&NodeGraph>) -> Coverage {
    let mut coverage = Coverage::default();
    if views
        .iter()
        .any(|view| live_collection(view.catalog(), name).is_err())
    {
        // Not on every LEU (a create or drop part-way): nothing to build over yet.
        return coverage;
    }
    let answering = graph.map_or_else(Vec::new, |graph| graph.answering(views));
    for (leu, view) in views.iter().enumerate() {
        let Ok((id, _)) = live_collection(view.catalog(), name) else {
            continue;
        };
        for entry in view.segments_of(id) {
            let Some(segment_graph) = entry.segment.as_ref().and_then(|s| s.graph.as_ref()) else {
                continue;
            };
            coverage.segments += 1;
            let number = entry.table.number();
            if graph
                .and_then(|g| g.answers_for(&answering, leu, number))
                .is_none()
            {
                coverage.walks += 1;
                coverage.uncovered_nodes +=
                    segment_graph.len().saturating_sub(entry.superseded.len());
            }
        }
    }
    if let Some(graph) = graph {
        coverage.walks += 1;
        coverage.covered_nodes = graph
            .sources
            .iter()
            .filter(|source| answering[source.table as usize].is_some())
            .count();
        coverage.dead_nodes = answering
            .iter()
            .zip(&graph.superseded_at_build)
            .filter_map(|(set, &at_build)| Some(set.as_ref()?.len().saturating_sub(at_build)))
            .sum();
    }
    coverage
}

/// Collections of `views` (every LEU's) whose node graph in `graphs` is due for a build once
/// the tables stop changing ([`Coverage::wants_rebuild_when_quiet`]): what the dataplane
/// reports as `node_graphs_due`.
pub fn collections_due(views: &[&ShardView], graphs: &NodeGraphs) -> usize {
    let Some(first) = views.first() else {
        return 0;
    };
    first
        .catalog()
        .live()
        .filter(|collection| {
            let name = collection.spec.name.as_str();
            let graph = graphs
                .get(name)
                .filter(|graph| graph.serves(name, views))
                .map(|graph| &**graph);
            coverage(views, name, graph).wants_rebuild_when_quiet()
        })
        .count()
}

/// Builds the node graph of collection `name` over the settled segments of `views` (every
/// LEU's, in LEU order), seeded with `previous` (see the module documentation). `None` when
/// a view lacks the collection or nothing is settled.
pub fn build_node_graph(
    views: &[&ShardView],
    name: &str,
    previous: Option<&NodeGraph>,
    threads: usize,
    cancel: Arc<AtomicBool>,
) -> Result<Option<NodeGraph>, ShardError> {
    let mut collection_ids = Vec::with_capacity(views.len());
    let mut spec: Option<CollectionSpec> = None;
    for view in views {
        let Ok((id, found)) = live_collection(view.catalog(), name) else {
            return Ok(None);
        };
        collection_ids.push(id);
        spec.get_or_insert(found);
    }
    let Some(spec) = spec else {
        return Ok(None);
    };
    let dim = spec.dimension as usize;
    let stride = vector_stride(dim);
    // The live nodes of every settled segment: counted first, then copied into the rows.
    let mut settled = Vec::new();
    for (leu, (view, &id)) in views.iter().zip(&collection_ids).enumerate() {
        for entry in view.segments_of(id) {
            let Some(segment) = entry.segment.as_ref() else {
                continue;
            };
            if let Some(graph) = segment.graph.as_ref().filter(|g| g.dim() == dim) {
                settled.push((leu as u16, entry, segment, graph));
            }
        }
    }
    let count: usize = settled
        .iter()
        .map(|(_, entry, _, graph)| graph.len().saturating_sub(entry.superseded.len()))
        .sum();
    if count == 0 {
        return Ok(None);
    }
    let mut stored = Store::<f32>::zeroed(count * stride);
    let mut labels = Vec::with_capacity(count);
    let mut sources = Vec::with_capacity(count);
    let mut covered = Vec::with_capacity(settled.len());
    let mut superseded_at_build = Vec::with_capacity(settled.len());
    let mut rows_out = stored.chunks_exact_mut(stride);
    let mut copied = Vec::with_capacity(settled.len());
    for (leu, entry, segment, graph) in settled {
        let table = covered.len() as u32;
        for node in 0..graph.len() as u32 {
            if entry.superseded.contains(node) {
                continue;
            }
            // Verified before it is copied: the node graph's rows get checksums of their own.
            let vector = graph
                .checked_vector(node)
                .map_err(|error| ShardError::index(entry.table.number(), error))?;
            let (Some(vector), Some(&label), Some(row)) =
                (vector, segment.labels.get(node as usize), rows_out.next())
            else {
                continue;
            };
            row[..dim].copy_from_slice(vector);
            labels.push(label);
            sources.push(Source { table, node });
        }
        covered.push((leu, entry.table.number()));
        superseded_at_build.push(entry.superseded.len());
        copied.push(graph);
    }
    drop(rows_out);
    if labels.len() != count {
        return Err(ShardError::Invalid(format!(
            "the node graph of {name:?}: {} rows for {count} live nodes",
            labels.len()
        )));
    }
    let rows = Store::from_avec(stored);
    let params = BuildParams {
        metric: index_metric(spec.metric),
        m: spec.m as usize,
        ef_construction: spec.ef_construction as usize,
        threads: threads.max(1),
        control: BuildControl {
            cancel: Some(cancel),
            helpers: Helpers::Idle,
        },
        quantization: match spec.vector_type {
            VectorType::F32 => Quantization::None,
            VectorType::I8 => Quantization::ScalarI8,
        },
        ..BuildParams::default()
    };
    // Seeded with the previous node graph: a point whose vector did not change keeps its
    // node's links.
    let seed = previous.filter(|old| {
        old.graph.dim() == dim && old.graph.m() == params.m && old.graph.metric() == params.metric
    });
    let built = match seed {
        Some(old) => {
            let node_of: HashMap<u64, u32> = (0..old.graph.len() as u32)
                .filter_map(|node| old.graph.label(node).map(|label| (label, node)))
                .collect();
            let mut carried: Vec<u32> = labels
                .iter()
                .map(|label| node_of.get(label).copied().unwrap_or(u32::MAX))
                .collect();
            // A codes-only graph's vectors are in the tables it covered, where still live.
            let old_rows = NodeRows::of(old, views);
            carry_unchanged(
                |node, out| matches!(old_rows.read(node, out), Ok(true)),
                &rows,
                dim,
                &mut carried,
            );
            Hnsw::build_over_seeded(
                dim,
                rows,
                Some(&labels),
                &params,
                Seed {
                    graph: &old.graph,
                    carried: &carried,
                },
            )
        }
        None => Hnsw::build_over(dim, rows, Some(&labels), &params),
    };
    // Copied and compared: the tables' rows need not stay resident for this (see
    // `Hnsw::release_pages`).
    for graph in copied {
        graph.release_pages();
    }
    let graph = match built.and_then(|graph| match spec.vector_type {
        // Only the codes and the graph stay resident: searches re-rank with the covered
        // tables' rows (`NodeRows`), which are on disk already.
        VectorType::I8 => graph.into_codes_only(),
        VectorType::F32 => Ok(graph),
    }) {
        Ok(graph) => graph,
        Err(IndexError::Cancelled) => return Ok(None),
        Err(error) => {
            return Err(ShardError::Invalid(format!(
                "the node graph of {name:?} failed to build: {error}"
            )))
        }
    };
    Ok(Some(NodeGraph {
        name: name.to_owned(),
        collection_ids,
        graph,
        sources,
        covered,
        superseded_at_build,
    }))
}

/// The node graphs published now, by collection name.
pub type NodeGraphs = HashMap<String, Arc<NodeGraph>>;

/// The tier: its published node graphs and the builder thread. See the module documentation.
#[derive(Debug)]
pub struct IndexTier {
    graphs: Arc<ArcSwap<NodeGraphs>>,
    stop: Arc<AtomicBool>,
    builds: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

/// What searches read of a tier: its published node graphs.
#[derive(Debug, Clone)]
pub struct TierGraphs {
    graphs: Arc<ArcSwap<NodeGraphs>>,
    builds: Arc<AtomicU64>,
}

impl TierGraphs {
    /// The node graphs now: lock-free.
    pub fn load(&self) -> arc_swap::Guard<Arc<NodeGraphs>> {
        self.graphs.load()
    }

    /// Node graphs built since the tier started.
    pub fn builds(&self) -> u64 {
        self.builds.load(Ordering::Relaxed)
    }
}

impl IndexTier {
    /// Starts the builder over every LEU's published view (in LEU order), with `threads`
    /// build threads. With `dir`, node graphs are saved there once built and nothing more is
    /// due (`tier_file.rs`), and the ones saved earlier that still serve their collection
    /// are loaded and published first.
    pub fn start(
        views: Vec<PublishedView>,
        threads: usize,
        dir: Option<PathBuf>,
    ) -> std::io::Result<IndexTier> {
        let graphs = Arc::new(ArcSwap::from_pointee(NodeGraphs::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let builds = Arc::new(AtomicU64::new(0));
        let thread = std::thread::Builder::new()
            .name("index-tier".into())
            .spawn({
                let (graphs, stop, builds) =
                    (Arc::clone(&graphs), Arc::clone(&stop), Arc::clone(&builds));
                move || {
                    let _ = vortex_io::affinity::unpin_current_thread();
                    // Its own share of the build at nice 19, the helpers at SCHED_IDLE: the
                    // LEUs come first, and the node graph still gets built under full load.
                    let _ = vortex_io::affinity::lower_current_thread_priority();
                    if let Some(dir) = &dir {
                        load_saved(dir, &views, &graphs);
                    }
                    let mut quiet = Quiet::default();
                    let mut unsaved = HashSet::new();
                    while !stop.load(Ordering::Acquire) {
                        match build_due(&views, &graphs, threads, &stop, &mut quiet, dir.as_deref())
                        {
                            Ok(Built::Nothing) => {
                                // Not while stopping: a large graph takes a while to write,
                                // and a stop must be quick (the graph is built again).
                                if let Some(dir) =
                                    dir.as_ref().filter(|_| !stop.load(Ordering::Acquire))
                                {
                                    save_unsaved(dir, &graphs, &mut unsaved);
                                }
                                std::thread::park_timeout(CHECK_EVERY);
                            }
                            Ok(Built::Graph(name)) => {
                                builds.fetch_add(1, Ordering::Relaxed);
                                unsaved.insert(name);
                            }
                            Err(error) => {
                                tracing::error!(%error, "the index tier failed; retrying");
                                std::thread::park_timeout(CHECK_EVERY * 4);
                            }
                        }
                    }
                }
            })?;
        Ok(IndexTier {
            graphs,
            stop,
            builds,
            thread: Some(thread),
        })
    }

    /// The reading side, for the LEUs.
    pub fn graphs(&self) -> TierGraphs {
        TierGraphs {
            graphs: Arc::clone(&self.graphs),
            builds: Arc::clone(&self.builds),
        }
    }
}

impl Drop for IndexTier {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}

/// What one look at the views built.
enum Built {
    Nothing,
    /// The node graph of this collection.
    Graph(String),
}

/// Publishes the node graphs saved in `dir` that still serve their collection.
fn load_saved(dir: &Path, published: &[PublishedView], graphs: &ArcSwap<NodeGraphs>) {
    let loaded: Vec<_> = published.iter().map(PublishedView::load).collect();
    let views: Vec<&ShardView> = loaded.iter().map(|view| &***view).collect();
    let mut next = NodeGraphs::clone(&graphs.load());
    for graph in tier_file::load(dir, &views) {
        next.insert(graph.name.clone(), Arc::new(graph));
    }
    graphs.store(Arc::new(next));
}

/// Saves the node graphs built since the last save (those still published).
fn save_unsaved(dir: &Path, graphs: &ArcSwap<NodeGraphs>, unsaved: &mut HashSet<String>) {
    let current = graphs.load();
    for name in unsaved.drain() {
        let Some(graph) = current.get(&name) else {
            continue;
        };
        match tier_file::save(dir, graph) {
            Ok(()) => tracing::info!(collection = %name, nodes = graph.len(), "node graph saved"),
            Err(error) => tracing::warn!(collection = %name, %error, "cannot save the node graph"),
        }
    }
}

/// One look at the views: drops the node graphs of collections gone (and their saved
/// copies in `dir`), builds the one that is due (the first found).
fn build_due(
    published: &[PublishedView],
    graphs: &ArcSwap<NodeGraphs>,
    threads: usize,
    stop: &Arc<AtomicBool>,
    quiet: &mut Quiet,
    dir: Option<&Path>,
) -> Result<Built, ShardError> {
    let loaded: Vec<_> = published.iter().map(PublishedView::load).collect();
    let views: Vec<&ShardView> = loaded.iter().map(|view| &***view).collect();
    let Some(first) = views.first() else {
        return Ok(Built::Nothing);
    };
    let settled = quiet.settled(views.iter().map(|view| view.version_epoch()).collect());
    let names: Vec<String> = live_names(first.catalog());
    let current = graphs.load_full();
    let kept: NodeGraphs = current
        .iter()
        .filter(|(name, graph)| graph.serves(name, &views))
        .map(|(name, graph)| (name.clone(), Arc::clone(graph)))
        .collect();
    if kept.len() != current.len() {
        graphs.store(Arc::new(kept.clone()));
        if let Some(dir) = dir {
            for (name, graph) in current.iter() {
                if !kept.contains_key(name) {
                    tier_file::remove(dir, &graph.collection_ids);
                }
            }
        }
    }
    for name in names {
        if stop.load(Ordering::Acquire) {
            break;
        }
        let previous = kept.get(&name);
        let coverage = coverage(&views, &name, previous.map(Arc::as_ref));
        let quiet_build = settled && quiet.may_build() && coverage.wants_rebuild_when_quiet();
        if !(coverage.wants_rebuild() || quiet_build) {
            continue;
        }
        let started = std::time::Instant::now();
        let built = build_node_graph(
            &views,
            &name,
            previous.map(Arc::as_ref),
            threads,
            Arc::clone(stop),
        )?;
        let Some(built) = built else {
            continue;
        };
        tracing::info!(
            collection = %name,
            nodes = built.len(),
            tables = built.tables_covered(),
            "node graph built"
        );
        let mut next = NodeGraphs::clone(&graphs.load());
        next.insert(name.clone(), Arc::new(built));
        graphs.store(Arc::new(next));
        quiet.built(started.elapsed());
        return Ok(Built::Graph(name));
    }
    Ok(Built::Nothing)
}

/// Whether the LEUs' tables have stayed the same for [`QUIET`], and when a rebuild for the
/// quiet rule may come: a rebuild costs the whole graph's rows however little it folds in,
/// so after one taking `t`, the next quiet rebuild waits [`QUIET_BACKOFF`] × `t` (a trickle
/// of writes, each flushed alone when the LEU idles, then costs the tier at most a fifth
/// of a core; the tenth rule still rebuilds at once).
#[derive(Debug, Default)]
struct Quiet {
    epochs: Vec<u64>,
    since: Option<std::time::Instant>,
    next_build: Option<std::time::Instant>,
}

/// See [`Quiet`].
const QUIET_BACKOFF: u32 = 4;

impl Quiet {
    fn settled(&mut self, epochs: Vec<u64>) -> bool {
        if epochs != self.epochs {
            self.epochs = epochs;
            self.since = Some(std::time::Instant::now());
        }
        self.since.is_some_and(|since| since.elapsed() >= QUIET)
    }

    fn may_build(&self) -> bool {
        self.next_build
            .is_none_or(|at| std::time::Instant::now() >= at)
    }

    fn built(&mut self, took: Duration) {
        self.next_build = Some(std::time::Instant::now() + took * QUIET_BACKOFF);
    }
}

fn live_names(catalog: &Catalog) -> Vec<String> {
    catalog.live().map(|c| c.spec.name.clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn coverage(walks: usize, uncovered_nodes: usize, covered_nodes: usize) -> Coverage {
        Coverage {
            walks,
            segments: walks,
            uncovered_nodes,
            covered_nodes,
            dead_nodes: 0,
        }
    }

    #[test]
    fn a_rebuild_is_due_only_when_it_saves_walks_over_live_nodes() {
        // One graph to walk: nothing to gain.
        assert!(!coverage(1, 5000, 0).wants_rebuild());
        // Two segments, no node graph yet.
        assert!(coverage(2, 5000, 0).wants_rebuild());
        // Segments without a live node (all deleted, tombstones not merged away): building
        // would give nothing, and being due for ever would hold benchmarks and demos.
        assert!(!coverage(2, 0, 0).wants_rebuild());
        assert!(!coverage(WALKS_MAX + 3, 0, 1000).wants_rebuild());
        // Little new beside a large node graph waits for more, up to WALKS_MAX graphs.
        assert!(!coverage(3, 900, 10_000).wants_rebuild());
        assert!(coverage(3, 1000, 10_000).wants_rebuild());
        assert!(coverage(WALKS_MAX + 1, 10, 10_000).wants_rebuild());
        // Once the tables stop changing, anything left over is folded in.
        assert!(coverage(3, 900, 10_000).wants_rebuild_when_quiet());
        assert!(coverage(2, 1, 100_000).wants_rebuild_when_quiet());
        assert!(!coverage(1, 900, 10_000).wants_rebuild_when_quiet());
        assert!(!coverage(2, 0, 10_000).wants_rebuild_when_quiet());
        // Deletes and overwrites of covered points: one graph, but walked with a test per
        // node until rebuilt; a tenth of it at once, anything once quiet.
        let dead = |dead_nodes| Coverage {
            dead_nodes,
            ..coverage(1, 0, 10_000)
        };
        assert!(!dead(999).wants_rebuild());
        assert!(dead(1000).wants_rebuild());
        assert!(dead(1).wants_rebuild_when_quiet());
        assert!(!dead(0).wants_rebuild_when_quiet());
    }

    #[test]
    fn quiet_rebuilds_back_off_by_what_the_last_one_took() {
        let mut quiet = Quiet::default();
        assert!(quiet.may_build());
        quiet.built(Duration::from_secs(3600));
        assert!(!quiet.may_build());
        quiet.built(Duration::ZERO);
        assert!(quiet.may_build());
        assert!(!quiet.settled(vec![1, 2]), "just changed");
        assert!(!quiet.settled(vec![1, 2]), "not quiet long enough yet");
    }
}
