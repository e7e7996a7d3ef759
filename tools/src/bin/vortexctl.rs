//! `vortexctl`: the VORTEX command line over VBP. `vortexctl --help` lists the commands;
//! docs/VORTEXCTL.md has them all with examples, the JSON formats and the exit codes.

use clap::{Args, Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};
use vortex_tools::ctl::demo::{self, DemoOptions};
use vortex_tools::ctl::doctor::{self, Verdict};
use vortex_tools::ctl::input::{read_row, rows_within_budget, Format, PointReader};
use vortex_tools::ctl::json::{
    filter_from_json, payload_from_json, payload_to_json, vector_from_json,
};
use vortex_tools::ctl::{retrying, CtlError, EXIT_FAILED};
use vortex_vbp::client::{Client, ClientError, ClientOptions, ServerCode};
use vortex_vbp::message::{
    CollectionInfo, CollectionSpec, ErrorCode, FencedTable, Filter, LeuStats, Metric, Search,
    Upsert, VectorType,
};
use vortex_vbp::sharded::ShardedClient;

/// Prints a line on standard output. A reader that went away (`vortexctl … | head`) ends
/// the program quietly with status 0, as Unix filters do, instead of a panic.
macro_rules! out {
    ($($arg:tt)*) => {
        emit(format_args!($($arg)*))
    };
}

fn emit(line: std::fmt::Arguments<'_>) {
    let mut stdout = std::io::stdout().lock();
    let written = stdout
        .write_fmt(line)
        .and_then(|()| stdout.write_all(b"\n"));
    if let Err(error) = written {
        if error.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("vortexctl: cannot write to standard output: {error}");
        std::process::exit(i32::from(EXIT_FAILED));
    }
}

#[derive(Debug, Parser)]
#[command(
    name = "vortexctl",
    version,
    about = "Talk to a VORTEX appliance over VBP",
    after_help = "Exit codes: 0 success, 1 the server or the operation failed, 2 a usage or \
                  input mistake, 3 the server could not be reached, 4 THROTTLED through every \
                  retry. docs/VORTEXCTL.md has every command and format."
)]
struct Cli {
    /// The appliance's address, HOST:PORT (any of its ports).
    #[arg(
        long,
        global = true,
        env = "VORTEX_ADDRESS",
        default_value = "127.0.0.1:7700"
    )]
    address: String,
    /// Seconds a request may take (1 to 86400).
    #[arg(long, global = true, default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    timeout: u64,
    #[command(subcommand)]
    command: Command,
}

/// A point id from the command line: 0 to 2^64 - 1, said plainly when it is not (`-1`
/// included, which clap would otherwise take for a flag).
fn point_id(text: &str) -> Result<u64, String> {
    text.parse::<u64>().map_err(|_| {
        format!(
            "a point id is an integer from 0 to {}, not `{text}`",
            u64::MAX
        )
    })
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Round trips to the server, with their times.
    Ping {
        /// How many round trips.
        #[arg(long, default_value_t = 3)]
        count: u32,
    },
    /// Create, drop, list or describe collections.
    #[command(subcommand)]
    Collection(CollectionCommand),
    /// Load points from a .fvecs, .npy or JSON Lines file, in batches, with a progress bar.
    Load {
        /// The collection to load into.
        collection: String,
        /// The point file (.fvecs, .npy, or .jsonl / .ndjson / .json).
        file: PathBuf,
        /// The file's format (default: from its extension).
        #[arg(long, value_enum)]
        format: Option<FileFormat>,
        /// Points per request (at most about 8 MiB of vectors go in one).
        #[arg(long, default_value_t = 1000)]
        batch: usize,
        /// The id of the first row of an .fvecs or .npy file (rows are numbered from it).
        #[arg(long, default_value_t = 0)]
        start_id: u64,
        /// Create the collection first (dimension from the file) if it does not exist.
        #[arg(long)]
        create: bool,
        #[command(flatten)]
        spec: SpecArgs,
    },
    /// Write one point.
    Upsert {
        /// The collection.
        collection: String,
        /// The point's id (0 to 2^64 - 1).
        #[arg(long, value_parser = point_id, allow_negative_numbers = true)]
        id: u64,
        /// The vector, as a JSON array.
        #[arg(long)]
        vector: String,
        /// The payload, as a JSON object.
        #[arg(long)]
        payload: Option<String>,
    },
    /// Read points by id.
    Get {
        /// The collection.
        collection: String,
        /// The ids to read.
        #[arg(required = true, value_parser = point_id, allow_negative_numbers = true)]
        ids: Vec<u64>,
        /// Print one JSON array of the points, with their vectors.
        #[arg(long)]
        json: bool,
    },
    /// Delete points by id.
    Delete {
        /// The collection.
        collection: String,
        /// The ids to delete.
        #[arg(required = true, value_parser = point_id, allow_negative_numbers = true)]
        ids: Vec<u64>,
    },
    /// The nearest points to a vector.
    Search {
        /// The collection.
        collection: String,
        /// The query, as a JSON array.
        #[arg(long, conflicts_with = "vector_file")]
        vector: Option<String>,
        /// Take the query from this point file ...
        #[arg(long, requires = "row")]
        vector_file: Option<PathBuf>,
        /// ... at this row (from 0).
        #[arg(long, requires = "vector_file", conflicts_with = "vector")]
        row: Option<u64>,
        /// How many neighbours (1 to 10000).
        #[arg(short, long, default_value_t = 10,
              value_parser = clap::value_parser!(u32).range(1..=10_000))]
        k: u32,
        /// Search beam width (0: the collection's default).
        #[arg(long, default_value_t = 0)]
        ef: u32,
        /// A payload filter, as JSON (docs/VORTEXCTL.md).
        #[arg(long)]
        filter: Option<String>,
        /// Return the payloads too.
        #[arg(long)]
        payload: bool,
        /// Print one JSON array of the hits.
        #[arg(long)]
        json: bool,
    },
    /// Count a collection's points.
    Count {
        /// The collection.
        collection: String,
    },
    /// Per LEU: connections, QPS, latency, THROTTLED time, MemTable, segments, index builds.
    Stats {
        /// Seconds between the two samples QPS is computed from (0.1 to 60).
        #[arg(long, default_value_t = 1.0)]
        interval: f64,
        /// Print one JSON array, an object per LEU with every counter.
        #[arg(long)]
        json: bool,
    },
    /// Check every table of every LEU against its checksums now, online, at the scrubber's
    /// pace (`[storage] scrub_mib_per_second`), showing progress; exit 1 if a table was found
    /// damaged (it is fenced: requests that need it answer `Fenced`).
    Scrub {
        /// Start the pass and return without waiting for it.
        #[arg(long)]
        no_wait: bool,
    },
    /// The tables fenced for damage on every LEU, with their collections and id ranges
    /// (requests that need one are refused with `Fenced`); exit 1 if there is any.
    Fenced {
        /// Print one JSON array, an object per table.
        #[arg(long)]
        json: bool,
    },
    /// Run a benchmark (a front for `vortex-bench`; `vortexctl bench -- --help`).
    Bench {
        /// The arguments for `vortex-bench`, as they are.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// The quickstart: an appliance in this process on a temporary directory, a generated
    /// dataset loaded, searched and checked against exact search, then a clean stop.
    Demo {
        /// Points to generate and load.
        #[arg(long, default_value_t = 100_000)]
        points: usize,
        /// Their dimension.
        #[arg(long, default_value_t = 128)]
        dimension: usize,
        /// Queries to search and check against exact search.
        #[arg(long, default_value_t = 200)]
        queries: usize,
        /// Neighbours per query.
        #[arg(short, long, default_value_t = 10)]
        k: usize,
        /// Search beam width.
        #[arg(long, default_value_t = 64)]
        ef: u32,
        /// Keep the data in this directory (a demo collection already there is replaced).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Check this host against the appliance config: pass / warn / fail, with fixes.
    Doctor {
        /// The appliance config (default: the built-in defaults).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Print one JSON array of the checks.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum CollectionCommand {
    /// Create a collection.
    Create {
        /// Its name.
        name: String,
        /// The dimension of its vectors.
        #[arg(long)]
        dimension: u32,
        #[command(flatten)]
        spec: SpecArgs,
    },
    /// Drop a collection and its points.
    Drop {
        /// Its name.
        name: String,
    },
    /// List the collections.
    List {
        /// Print one JSON array, an object per collection.
        #[arg(long)]
        json: bool,
    },
    /// One collection's settings and point count.
    Describe {
        /// Its name.
        name: String,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Clone, Args)]
struct SpecArgs {
    /// The distance.
    #[arg(long, value_enum, default_value_t = MetricArg::L2)]
    metric: MetricArg,
    /// HNSW neighbours per node.
    #[arg(long, default_value_t = 16)]
    m: u16,
    /// HNSW beam width while building.
    #[arg(long, default_value_t = 200)]
    ef_construction: u16,
    /// Keep the vectors scalar-quantized to i8 for the graph walk.
    #[arg(long)]
    i8: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum MetricArg {
    /// Euclidean distance (squared).
    L2,
    /// One minus the cosine similarity.
    Cosine,
    /// Negative inner product.
    Ip,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum FileFormat {
    /// Rows of an i32 dimension and that many f32.
    Fvecs,
    /// A NumPy array (points, dimension) of <f4 or <f8.
    Npy,
    /// One {"id", "vector", "payload"} object per line.
    Jsonl,
}

impl SpecArgs {
    fn spec(&self, name: &str, dimension: u32) -> CollectionSpec {
        CollectionSpec {
            name: name.to_owned(),
            dimension,
            metric: match self.metric {
                MetricArg::L2 => Metric::L2,
                MetricArg::Cosine => Metric::Cosine,
                MetricArg::Ip => Metric::Ip,
            },
            m: self.m,
            ef_construction: self.ef_construction,
            vector_type: if self.i8 {
                VectorType::I8
            } else {
                VectorType::F32
            },
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .without_time()
        .try_init();
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(error) => {
            eprintln!("vortexctl: {error}");
            ExitCode::from(error.code)
        }
    }
}

fn options(cli: &Cli) -> ClientOptions {
    ClientOptions {
        request_timeout: Duration::from_secs(cli.timeout.max(1)),
        ..ClientOptions::default()
    }
}

fn connect(cli: &Cli) -> Result<Client, CtlError> {
    Client::connect(&[cli.address.as_str()], options(cli)).map_err(CtlError::from_client)
}

fn parse_json(text: &str, what: &str) -> Result<Value, CtlError> {
    serde_json::from_str(text).map_err(|e| CtlError::usage(format!("{what} is not JSON: {e}")))
}

/// A vector given as JSON on the command line: finite numbers, at least one.
fn vector_argument(text: &str, what: &str) -> Result<Vec<f32>, CtlError> {
    let vector =
        vector_from_json(&parse_json(text, what)?, what).map_err(|e| CtlError::usage(e.0))?;
    if vector.is_empty() {
        return Err(CtlError::usage(format!(
            "{what}: a vector has at least one number"
        )));
    }
    Ok(vector)
}

fn filter(text: Option<&str>) -> Result<Option<Filter>, CtlError> {
    text.map(|text| {
        filter_from_json(&parse_json(text, "--filter")?).map_err(|e| CtlError::usage(e.0))
    })
    .transpose()
}

fn format_of(path: &std::path::Path, given: Option<FileFormat>) -> Result<Format, CtlError> {
    match given {
        Some(FileFormat::Fvecs) => Ok(Format::Fvecs),
        Some(FileFormat::Npy) => Ok(Format::Npy),
        Some(FileFormat::Jsonl) => Ok(Format::JsonLines),
        None => Format::from_path(path).ok_or_else(|| {
            CtlError::usage(format!(
                "{}: cannot tell the format from the extension; give --format fvecs, npy or jsonl",
                path.display()
            ))
        }),
    }
}

fn run(cli: Cli) -> Result<u8, CtlError> {
    match &cli.command {
        Command::Ping { count } => {
            let client = connect(&cli)?;
            for _ in 0..(*count).max(1) {
                let started = Instant::now();
                client.ping().map_err(CtlError::from_client)?;
                let endpoint = client
                    .connected_endpoint()
                    .map_or_else(|| cli.address.clone(), |e| e.to_string());
                out!(
                    "pong from {endpoint} in {:.0} µs",
                    started.elapsed().as_secs_f64() * 1e6
                );
            }
            Ok(0)
        }
        Command::Collection(command) => collection(&cli, command),
        Command::Load {
            collection,
            file,
            format,
            batch,
            start_id,
            create,
            spec,
        } => load(
            &cli,
            collection,
            file,
            *format,
            *batch,
            *start_id,
            create.then_some(spec),
        ),
        Command::Upsert {
            collection,
            id,
            vector,
            payload,
        } => {
            let vector = vector_argument(vector, "--vector")?;
            let payloads = match payload {
                Some(text) => vec![
                    payload_from_json(&parse_json(text, "--payload")?, "--payload")
                        .map_err(|e| CtlError::usage(e.0))?,
                ],
                None => Vec::new(),
            };
            let client = connect(&cli)?;
            let written = retrying(|| {
                client.upsert(Upsert {
                    collection: collection.clone(),
                    dimension: vector.len() as u32,
                    ids: vec![*id],
                    vectors: vector.clone(),
                    payloads: payloads.clone(),
                })
            })
            .map_err(CtlError::from_client)?;
            out!("upserted {written} point (durable)");
            Ok(0)
        }
        Command::Get {
            collection,
            ids,
            json,
        } => {
            let client = connect(&cli)?;
            let points = client
                .get(collection, ids.clone())
                .map_err(CtlError::from_client)?;
            if *json {
                let points: Vec<Value> = points
                    .iter()
                    .map(|point| {
                        let payload = point.payload.as_ref().map(payload_to_json);
                        json!({"id": point.id, "vector": point.vector, "payload": payload})
                    })
                    .collect();
                out!("{}", Value::Array(points));
            }
            for point in points.iter().filter(|_| !*json) {
                let payload = point.payload.as_ref().map(payload_to_json);
                let shown: Vec<String> = point
                    .vector
                    .iter()
                    .take(4)
                    .map(|x| format!("{x:.4}"))
                    .collect();
                let more = if point.vector.len() > 4 { ", …" } else { "" };
                out!(
                    "{:>12}  [{}{more}] ({} dims)  {}",
                    point.id,
                    shown.join(", "),
                    point.vector.len(),
                    payload.map_or_else(String::new, |p| p.to_string())
                );
            }
            let missing = ids.len().saturating_sub(points.len());
            if missing > 0 {
                eprintln!("{missing} of {} id(s) not found", ids.len());
            }
            Ok(0)
        }
        Command::Delete { collection, ids } => {
            let client = connect(&cli)?;
            let deleted = retrying(|| client.delete(collection, ids.clone()))
                .map_err(CtlError::from_client)?;
            let distinct = ids.iter().collect::<std::collections::BTreeSet<_>>().len();
            let absent = (distinct as u64).saturating_sub(u64::from(deleted));
            if absent == 0 {
                out!("deleted {deleted} point(s) (durable)");
            } else {
                out!("deleted {deleted} point(s) (durable); {absent} id(s) did not exist");
            }
            Ok(0)
        }
        Command::Search {
            collection,
            vector,
            vector_file,
            row,
            k,
            ef,
            filter: filter_text,
            payload,
            json: as_json,
        } => {
            let vector = match (vector, vector_file) {
                (Some(text), _) => vector_argument(text, "--vector")?,
                (None, Some(path)) => read_row(path, format_of(path, None)?, row.unwrap_or(0))
                    .map_err(|e| CtlError::usage(e.to_string()))?,
                (None, None) => {
                    return Err(CtlError::usage(
                        "give the query: --vector '[…]' or --vector-file FILE --row N",
                    ))
                }
            };
            let filter = filter(filter_text.as_deref())?;
            let client = connect(&cli)?;
            let started = Instant::now();
            let hits = retrying(|| {
                client.search(Search {
                    collection: collection.clone(),
                    vector: vector.clone(),
                    k: *k,
                    ef: *ef,
                    filter: filter.clone(),
                    with_payload: *payload,
                })
            })
            .map_err(CtlError::from_client)?;
            let took = started.elapsed();
            if *as_json {
                let hits: Vec<Value> = hits
                    .iter()
                    .map(|hit| {
                        let payload = hit.payload.as_ref().map(payload_to_json);
                        json!({"id": hit.id, "distance": hit.distance, "payload": payload})
                    })
                    .collect();
                out!("{}", Value::Array(hits));
            } else {
                out!("{:>4}  {:>12}  {:>12}  payload", "rank", "id", "distance");
                for (rank, hit) in hits.iter().enumerate() {
                    let payload = hit
                        .payload
                        .as_ref()
                        .map_or_else(String::new, |p| payload_to_json(p).to_string());
                    out!(
                        "{:>4}  {:>12}  {:>12.6}  {payload}",
                        rank + 1,
                        hit.id,
                        hit.distance
                    );
                }
                out!(
                    "{} hit(s) in {:.0} µs",
                    hits.len(),
                    took.as_secs_f64() * 1e6
                );
            }
            Ok(0)
        }
        Command::Count { collection } => {
            let client = connect(&cli)?;
            let count = client
                .count(collection, None)
                .map_err(CtlError::from_client)?;
            out!("{count}");
            Ok(0)
        }
        Command::Stats { interval, json } => stats(&cli, *interval, *json),
        Command::Scrub { no_wait } => scrub(&cli, *no_wait),
        Command::Fenced { json } => {
            let client = connect(&cli)?;
            let tables = client.fenced().map_err(CtlError::from_client)?;
            if *json {
                let tables: Vec<Value> = tables
                    .iter()
                    .map(|t| {
                        json!({"leu": t.leu, "collection": t.collection, "first": t.first,
                               "last": t.last, "table": t.table, "detail": t.detail})
                    })
                    .collect();
                out!("{}", Value::Array(tables));
            } else if tables.is_empty() {
                out!("no table is fenced");
            } else {
                print_fenced(&tables);
            }
            Ok(u8::from(!tables.is_empty()))
        }
        Command::Bench { args } => bench(args),
        Command::Demo {
            points,
            dimension,
            queries,
            k,
            ef,
            data_dir,
        } => {
            let options = DemoOptions {
                points: *points,
                dimension: *dimension,
                queries: *queries,
                k: *k,
                ef: *ef,
                data_dir: data_dir.clone(),
                ..DemoOptions::default()
            };
            demo::run(&options, &mut std::io::stdout())?;
            Ok(0)
        }
        Command::Doctor { config, json } => doctor_command(config.as_ref(), *json),
    }
}

fn describe_line(info: &CollectionInfo) -> String {
    format!(
        "{:<24} {:>6} dims  {:<7} M {:<3} ef_construction {:<4} {:<4} {:>12} points",
        info.spec.name,
        info.spec.dimension,
        format!("{:?}", info.spec.metric).to_lowercase(),
        info.spec.m,
        info.spec.ef_construction,
        format!("{:?}", info.spec.vector_type).to_lowercase(),
        info.points
    )
}

fn describe_json(info: &CollectionInfo) -> Value {
    json!({
        "name": info.spec.name,
        "dimension": info.spec.dimension,
        "metric": format!("{:?}", info.spec.metric).to_lowercase(),
        "m": info.spec.m,
        "ef_construction": info.spec.ef_construction,
        "vector_type": format!("{:?}", info.spec.vector_type).to_lowercase(),
        "points": info.points,
    })
}

fn collection(cli: &Cli, command: &CollectionCommand) -> Result<u8, CtlError> {
    let client = connect(cli)?;
    match command {
        CollectionCommand::Create {
            name,
            dimension,
            spec,
        } => {
            client
                .create_collection(spec.spec(name, *dimension))
                .map_err(CtlError::from_client)?;
            out!("created collection `{name}`");
        }
        CollectionCommand::Drop { name } => {
            client
                .drop_collection(name)
                .map_err(CtlError::from_client)?;
            out!("dropped collection `{name}`");
        }
        CollectionCommand::List { json } => {
            let list = client.list_collections().map_err(CtlError::from_client)?;
            if *json {
                out!("{}", Value::Array(list.iter().map(describe_json).collect()));
            } else if list.is_empty() {
                out!("no collections");
            }
            for info in list.iter().filter(|_| !*json) {
                out!("{}", describe_line(info));
            }
        }
        CollectionCommand::Describe { name, json } => {
            let info = client
                .describe_collection(name)
                .map_err(CtlError::from_client)?;
            if *json {
                out!("{}", describe_json(&info));
            } else {
                out!("{}", describe_line(&info));
            }
        }
    }
    Ok(0)
}

fn load(
    cli: &Cli,
    collection: &str,
    file: &std::path::Path,
    format: Option<FileFormat>,
    batch: usize,
    start_id: u64,
    create: Option<&SpecArgs>,
) -> Result<u8, CtlError> {
    let format = format_of(file, format)?;
    let mut reader =
        PointReader::open(file, format, start_id).map_err(|e| CtlError::usage(e.to_string()))?;
    let client =
        ShardedClient::connect(&cli.address, options(cli)).map_err(CtlError::from_client)?;
    // Batches stay within about 8 MiB of vectors, whatever --batch says, so that every
    // upsert fits a VBP frame; a JSON Lines file's dimension is known after its first point.
    let cap = |dimension: Option<usize>| batch.clamp(1, dimension.map_or(1, rows_within_budget));
    let mut first = reader
        .next_batch(cap(reader.dimension()))
        .map_err(|e| CtlError::usage(e.to_string()))?;
    let batch = cap(reader.dimension());
    let Some(dimension) = reader.dimension().filter(|_| first.is_some()) else {
        return Err(CtlError::usage(format!(
            "{} holds no points",
            file.display()
        )));
    };
    let dimension = dimension as u32;
    if let Some(spec) = create {
        match client.any().describe_collection(collection) {
            Ok(info) if info.spec.dimension != dimension => {
                return Err(CtlError::usage(format!(
                    "collection `{collection}` has dimension {}, {} holds vectors of {dimension}",
                    info.spec.dimension,
                    file.display()
                )))
            }
            Ok(_) => {}
            Err(ClientError::Server {
                code: ServerCode::Known(ErrorCode::CollectionNotFound),
                ..
            }) => client
                .any()
                .create_collection(spec.spec(collection, dimension))
                .map_err(CtlError::from_client)?,
            Err(error) => return Err(CtlError::from_client(error)),
        }
    }
    let bar = match reader.total() {
        Some(total) => ProgressBar::new(total),
        None => ProgressBar::new_spinner(),
    }
    .with_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} points ({per_sec}, {eta} left)")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let started = Instant::now();
    let mut loaded = 0u64;
    while let Some(points) = first.take() {
        let count = points.ids.len() as u64;
        let upsert = Upsert {
            collection: collection.to_owned(),
            dimension,
            ids: points.ids,
            vectors: points.vectors,
            payloads: points.payloads,
        };
        retrying(|| client.upsert(upsert.clone())).map_err(|error| {
            bar.abandon();
            let mut error = CtlError::from_client(error);
            error.message = format!(
                "{} (after {loaded} points were loaded and acknowledged)",
                error.message
            );
            error
        })?;
        loaded += count;
        bar.inc(count);
        first = reader
            .next_batch(batch)
            .map_err(|e| CtlError::usage(format!("{e} (after {loaded} points were loaded)")))?;
    }
    bar.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    out!(
        "loaded {loaded} points of dimension {dimension} into `{collection}` in {seconds:.1} s ({:.0} points/s), every batch durable",
        loaded as f64 / seconds.max(1e-9)
    );
    Ok(0)
}

fn counter(leu: &LeuStats, name: &str) -> u64 {
    leu.counter(name).unwrap_or(0)
}

/// `vortexctl scrub`: starts a pass on every LEU, then follows the passes in the stats
/// until each LEU has finished one begun after the request.
fn scrub(cli: &Cli, no_wait: bool) -> Result<u8, CtlError> {
    let client = connect(cli)?;
    let sum =
        |leus: &[LeuStats], name: &str| -> u64 { leus.iter().map(|l| counter(l, name)).sum() };
    let before = client.stats().map_err(CtlError::from_client)?;
    client.scrub().map_err(CtlError::from_client)?;
    if no_wait {
        out!(
            "scrub started on {} LEU(s); follow it with `vortexctl stats --json` (scrub_*)",
            before.len()
        );
        return Ok(0);
    }
    // Passes run one after another; the one asked for begins after every pass begun before
    // the request: done once each LEU has finished the pass after those.
    let targets: Vec<(u16, u64)> = before
        .iter()
        .map(|leu| (leu.leu, counter(leu, "scrub_passes_started") + 1))
        .collect();
    let started = Instant::now();
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("scrub {bar:40} {bytes}/{total_bytes} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let after = loop {
        std::thread::sleep(Duration::from_millis(200));
        let now = client.stats().map_err(CtlError::from_client)?;
        bar.set_length(sum(&now, "scrub_pass_total_bytes"));
        bar.set_position(sum(&now, "scrub_pass_done_bytes"));
        bar.set_message(format!(
            "{} damaged",
            sum(&now, "scrub_corruptions") - sum(&before, "scrub_corruptions")
        ));
        let done = targets.iter().all(|&(leu, target)| {
            now.iter()
                .find(|l| l.leu == leu)
                .is_some_and(|l| counter(l, "scrub_passes") >= target)
        });
        if done {
            break now;
        }
    };
    bar.finish_and_clear();
    let corrupt = sum(&after, "scrub_corruptions") - sum(&before, "scrub_corruptions");
    let fenced = sum(&after, "fenced_tables");
    out!(
        "scrub done in {:.1} s: {} MiB checked on {} LEU(s), {corrupt} table(s) found damaged, {fenced} fenced in all",
        started.elapsed().as_secs_f64(),
        (sum(&after, "scrub_bytes") - sum(&before, "scrub_bytes")) >> 20,
        after.len()
    );
    if fenced > 0 {
        print_fenced(&client.fenced().map_err(CtlError::from_client)?);
    }
    Ok(if corrupt > 0 || fenced > 0 { 1 } else { 0 })
}

/// One line per fenced table: where it is, the ids it refuses, and what was found.
fn print_fenced(tables: &[FencedTable]) {
    for t in tables {
        out!(
            "fenced: collection `{}` ids {}..={} (LEU {}, table {}): {}",
            t.collection,
            t.first,
            t.last,
            t.leu,
            t.table,
            t.detail
        );
    }
}

fn stats(cli: &Cli, interval: f64, as_json: bool) -> Result<u8, CtlError> {
    if !(0.1..=60.0).contains(&interval) {
        return Err(CtlError::usage("--interval is 0.1 to 60 seconds"));
    }
    let client = connect(cli)?;
    let before = client.stats().map_err(CtlError::from_client)?;
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(interval));
    let after = client.stats().map_err(CtlError::from_client)?;
    let seconds = started.elapsed().as_secs_f64();
    if as_json {
        let leus: Vec<Value> = after
            .iter()
            .map(|leu| {
                let counters: serde_json::Map<String, Value> = leu
                    .counters
                    .iter()
                    .map(|c| (c.name.clone(), Value::from(c.value)))
                    .collect();
                json!({"leu": leu.leu, "counters": counters})
            })
            .collect();
        out!("{}", Value::Array(leus));
        return Ok(0);
    }
    out!(
        "{:>3}  {:>5}  {:>8}  {:>9}  {:>9}  {:>11}  {:>12}  {:>9}  {:>8}  {:>6}",
        "LEU",
        "conns",
        "QPS",
        "p99 µs",
        "loop p99",
        "THROTTLED s",
        "memtable MiB",
        "(points)",
        "segments",
        "builds"
    );
    for leu in &after {
        let earlier = before.iter().find(|b| b.leu == leu.leu);
        let answered = counter(leu, "requests_answered")
            .saturating_sub(earlier.map_or(0, |b| counter(b, "requests_answered")));
        out!(
            "{:>3}  {:>5}  {:>8.0}  {:>9.0}  {:>9.0}  {:>11.1}  {:>12.1}  {:>9}  {:>8}  {:>6}",
            leu.leu,
            counter(leu, "connections"),
            answered as f64 / seconds,
            counter(leu, "request_p99_ns") as f64 / 1e3,
            counter(leu, "loop_p99_ns") as f64 / 1e3,
            counter(leu, "throttled_us") as f64 / 1e6,
            counter(leu, "memtable_bytes") as f64 / f64::from(1u32 << 20),
            counter(leu, "memtable_points"),
            counter(leu, "segments"),
            counter(leu, "index_build_backlog"),
        );
    }
    out!(
        "(QPS over {seconds:.1} s; p99: the server's time per request since start; memtable: writes not yet in a segment; builds: points whose index is being built)"
    );
    Ok(0)
}

fn bench(args: &[String]) -> Result<u8, CtlError> {
    let here = std::env::current_exe().map_err(|e| CtlError::runtime(e.to_string()))?;
    let beside = here.with_file_name("vortex-bench");
    let program = if beside.exists() {
        beside
    } else {
        PathBuf::from("vortex-bench")
    };
    let status = std::process::Command::new(&program)
        .args(args)
        .status()
        .map_err(|e| {
            CtlError::runtime(format!(
                "cannot run {}: {e}; build it with `cargo build --release -p vortex-bench` (it goes beside vortexctl)",
                program.display()
            ))
        })?;
    Ok(status
        .code()
        .and_then(|code| u8::try_from(code).ok())
        .unwrap_or(EXIT_FAILED))
}

fn doctor_command(config_path: Option<&PathBuf>, as_json: bool) -> Result<u8, CtlError> {
    let config = match config_path {
        Some(path) => vortex_config::ApplianceConfig::load(path)
            .map_err(|e| CtlError::usage(e.to_string()))?,
        None => vortex_config::ApplianceConfig::default(),
    };
    let topology =
        vortex_config::Topology::discover().map_err(|e| CtlError::runtime(e.to_string()))?;
    let mapping = config.plan_leus(&topology).map_err(|e| e.to_string());
    // Nothing is created: a data directory that does not exist yet is judged by the file
    // system it would be made on.
    let host = doctor::observe(
        &config,
        mapping.as_ref().map_err(Clone::clone),
        &config.storage.data_dir,
        topology.cpus.len(),
    );
    let checks = doctor::evaluate(&host, &config);
    if as_json {
        let text = serde_json::to_string(&checks).map_err(|e| CtlError::runtime(e.to_string()))?;
        out!("{text}");
    } else {
        for check in &checks {
            out!(
                "{}  {:<24} {}",
                check.verdict.label(),
                check.name,
                check.detail
            );
            if let Some(fix) = &check.fix {
                out!("      fix: {fix}");
            }
        }
    }
    let worst = checks
        .iter()
        .map(|c| c.verdict)
        .max()
        .unwrap_or(Verdict::Pass);
    Ok(if worst == Verdict::Fail {
        EXIT_FAILED
    } else {
        0
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    /// Every command, argument and option says what it is in `--help`.
    #[test]
    fn every_command_and_option_has_help_text() {
        fn check(command: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for argument in command.get_arguments() {
                let id = argument.get_id().as_str();
                if matches!(id, "help" | "version") {
                    continue;
                }
                if argument.get_help().is_none() && argument.get_long_help().is_none() {
                    missing.push(format!("{path} {id}"));
                }
            }
            for sub in command.get_subcommands() {
                if sub.get_name() == "help" {
                    continue;
                }
                let sub_path = format!("{path} {}", sub.get_name());
                if sub.get_about().is_none() {
                    missing.push(sub_path.clone());
                }
                check(sub, &sub_path, missing);
            }
        }
        let mut missing = Vec::new();
        check(&Cli::command(), "vortexctl", &mut missing);
        assert!(missing.is_empty(), "no help text: {missing:?}");
    }

    #[test]
    fn ids_are_checked_with_a_plain_message() {
        assert_eq!(point_id("18446744073709551615"), Ok(u64::MAX));
        let error = point_id("-1").unwrap_err();
        assert!(
            error.contains("0 to 18446744073709551615, not `-1`"),
            "{error}"
        );
        let parsed = Cli::try_parse_from([
            "vortexctl",
            "upsert",
            "docs",
            "--id",
            "-1",
            "--vector",
            "[1]",
        ]);
        let message = parsed.unwrap_err().to_string();
        assert!(message.contains("not `-1`"), "{message}");
        assert!(!message.contains("tip"), "{message}");
        let parsed = Cli::try_parse_from(["vortexctl", "get", "docs", "3", "-7"]);
        assert!(parsed.unwrap_err().to_string().contains("not `-7`"));
    }

    #[test]
    fn a_row_without_a_file_or_beside_a_vector_is_a_usage_error() {
        for args in [
            &[
                "vortexctl",
                "search",
                "docs",
                "--vector",
                "[1]",
                "--row",
                "3",
            ][..],
            &["vortexctl", "search", "docs", "--row", "3"][..],
        ] {
            let error = Cli::try_parse_from(args).unwrap_err();
            assert_eq!(error.exit_code(), 2, "{args:?}: {error}");
        }
    }
}
