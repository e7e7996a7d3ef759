//! The WAL against real files (io_uring, Direct I/O) and against the fault-injecting file
//! system: round trips, group commit, bounds, rotation and checkpoints, torn tails, corruption,
//! salvage, and every injected fault with its expected outcome.

use std::path::{Path, PathBuf};
use std::time::Duration;
use vortex_io::RingConfig;
use vortex_storage::fault::{Fault, FaultEnv, Target};
use vortex_storage::record::{Defect, LogReader, Step, BLOCK_BYTES};
use vortex_storage::wal::{segment_name, ReplayReport, Wal, WalOptions};
use vortex_storage::{DirectIo, Env, PosixEnv, StorageError};
use vortex_test_support::{test_seed, Rng};

type Records = Vec<(u8, u64, Vec<u8>)>;

const DIR: &str = "/db/wal";

fn dir() -> PathBuf {
    PathBuf::from(DIR)
}

/// A payload that depends only on the sequence number, so that a record read back can be
/// checked without remembering it.
fn payload_for(sequence: u64, size: usize) -> Vec<u8> {
    let mut state = sequence.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..size)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

fn open<E: Env>(
    env: E,
    dir: &Path,
    options: WalOptions,
) -> Result<(Wal<E>, Records, ReplayReport), StorageError> {
    let mut records = Vec::new();
    let (wal, report) = Wal::open(env, dir, options, |record| {
        records.push((record.kind, record.sequence, record.payload.to_vec()))
    })?;
    Ok((wal, records, report))
}

/// Appends `sizes` and waits until all are durable; returns what was written.
fn append_all<E: Env>(wal: &mut Wal<E>, sizes: &[usize]) -> Records {
    let mut written = Vec::new();
    for &size in sizes {
        let sequence = wal.next_sequence();
        let payload = payload_for(sequence, size);
        let kind = 1 + (sequence % 3) as u8;
        loop {
            match wal.append(kind, &payload) {
                Ok(got) => {
                    assert_eq!(got, sequence);
                    break;
                }
                Err(StorageError::Throttled(_)) => {
                    wal.poll(Some(Duration::from_millis(10))).unwrap();
                }
                Err(error) => panic!("append: {error}"),
            }
        }
        written.push((kind, sequence, payload));
    }
    wal.flush().unwrap();
    written
}

fn sizes(count: usize, seed: u64) -> Vec<usize> {
    let mut state = seed | 1;
    (0..count)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            match state % 10 {
                0 => (state >> 8) as usize % (3 * BLOCK_BYTES),
                1..=3 => (state >> 8) as usize % 4096,
                _ => (state >> 8) as usize % 300,
            }
        })
        .collect()
}

fn small_options() -> WalOptions {
    WalOptions {
        segment_bytes_target: 256 << 10,
        batch_bytes_max: 256 << 10,
        appends_pending_max: 64,
        record_bytes_max: 128 << 10,
        salvage: false,
    }
}

#[test]
fn records_survive_a_reopen_on_real_files() {
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path().join("wal");
    let env = PosixEnv::new(&RingConfig::plain(64), DirectIo::Auto).unwrap();
    let (mut wal, replayed, report) = open(env, &dir, small_options()).unwrap();
    assert!(replayed.is_empty());
    assert_eq!(report.segments, 0);
    println!("direct I/O on {}: {}", dir.display(), wal.direct_io());
    let written = append_all(&mut wal, &sizes(400, 7));
    assert!(wal.stats().rotations > 0, "{:?}", wal.stats());
    drop(wal);

    let env = PosixEnv::new(&RingConfig::plain(64), DirectIo::Auto).unwrap();
    let (mut wal, replayed, report) = open(env, &dir, small_options()).unwrap();
    assert_eq!(replayed, written);
    assert_eq!(report.last_sequence, 400);
    assert!(report.truncated.is_empty());
    // Appends continue the numbering.
    let more = append_all(&mut wal, &[10, 20]);
    assert_eq!(more[0].1, 401);
}

#[test]
fn direct_io_is_used_where_the_file_system_allows_it_and_buffered_where_not() {
    let scratch = tempfile::tempdir().unwrap();
    let env = PosixEnv::new(&RingConfig::plain(32), DirectIo::Auto).unwrap();
    let (wal, _, _) = open(env, &scratch.path().join("wal"), WalOptions::default()).unwrap();
    let direct_here = wal.direct_io();
    drop(wal);
    let env = PosixEnv::new(&RingConfig::plain(32), DirectIo::Off).unwrap();
    let (wal, _, _) = open(env, &scratch.path().join("off"), WalOptions::default()).unwrap();
    assert!(!wal.direct_io());
    drop(wal);

    // tmpfs refuses O_DIRECT: the WAL falls back to buffered writes + fdatasync and works.
    let shm = Path::new("/dev/shm");
    if !shm.is_dir() {
        println!("no /dev/shm here; the tmpfs fallback is not exercised (direct: {direct_here})");
        return;
    }
    let tmpfs = tempfile::tempdir_in(shm).unwrap();
    // tmpfs accepts O_DIRECT from Linux 6.6 on; either way the WAL must work.
    let direct = real_round_trip(&tmpfs.path().join("wal"), DirectIo::Auto, &sizes(50, 3));
    println!("tmpfs: direct I/O {direct}");
}

/// Appends `sizes` on real files in `dir`, reopens, checks that replay gives them back, and
/// returns whether the WAL used Direct I/O.
fn real_round_trip(dir: &Path, direct: DirectIo, sizes: &[usize]) -> bool {
    let env = PosixEnv::new(&RingConfig::plain(32), direct).unwrap();
    let (mut wal, _, _) = open(env, dir, small_options()).unwrap();
    let used_direct_io = wal.direct_io();
    let written = append_all(&mut wal, sizes);
    drop(wal);
    let env = PosixEnv::new(&RingConfig::plain(32), direct).unwrap();
    let (_, replayed, _) = open(env, dir, small_options()).unwrap();
    assert_eq!(replayed, written);
    used_direct_io
}

#[test]
fn appends_during_a_write_are_batched_into_the_next_one() {
    let env = FaultEnv::direct(512);
    let (mut wal, _, _) = open(env, &dir(), WalOptions::default()).unwrap();
    for sequence in 1..=100u64 {
        assert_eq!(
            wal.append(1, &payload_for(sequence, 100)).unwrap(),
            sequence
        );
    }
    // Nothing is durable before the write completes.
    assert_eq!(wal.durable_sequence(), 0);
    wal.flush().unwrap();
    assert_eq!(wal.durable_sequence(), 100);
    assert_eq!(wal.stats().chains, 1, "{:?}", wal.stats());

    // With a write in flight (the fault env completes it at the next reap), new appends
    // queue in the open batch and go out together as the second chain.
    wal.append(1, b"a").unwrap();
    wal.poll(None).unwrap();
    let chains_before = wal.stats().chains;
    for _ in 0..10 {
        wal.append(1, b"b").unwrap();
    }
    wal.flush().unwrap();
    assert!(wal.stats().chains <= chains_before + 1, "{:?}", wal.stats());
    assert_eq!(wal.durable_sequence(), 111);
}

#[test]
fn batches_are_bounded_and_full_batches_throttle() {
    let env = FaultEnv::direct(4096);
    let options = WalOptions {
        appends_pending_max: 5,
        ..small_options()
    };
    let (mut wal, _, _) = open(env, &dir(), options).unwrap();
    for _ in 0..5 {
        wal.append(1, b"x").unwrap();
    }
    assert!(matches!(
        wal.append(1, b"x"),
        Err(StorageError::Throttled(_))
    ));
    wal.poll(None).unwrap();
    wal.append(1, b"x").unwrap();

    let big = vec![7u8; 100 << 10];
    let env = FaultEnv::direct(4096);
    let (mut wal, _, _) = open(env, &dir(), small_options()).unwrap();
    wal.append(1, &big).unwrap();
    wal.append(1, &big).unwrap();
    let error = wal.append(1, &big).unwrap_err();
    assert!(matches!(error, StorageError::Throttled(_)), "{error}");
    assert!(error.to_string().contains("THROTTLED"));
    let error = wal.append(1, &vec![0u8; (128 << 10) + 1]).unwrap_err();
    assert!(
        matches!(error, StorageError::RecordTooLarge { .. }),
        "{error}"
    );
    assert!(matches!(
        wal.append(0, b"x"),
        Err(StorageError::ReservedKind)
    ));
}

#[test]
fn checkpoints_delete_old_segments_and_replay_skips_them() {
    let env = FaultEnv::direct(4096);
    let (mut wal, _, _) = open(env.clone(), &dir(), small_options()).unwrap();
    let written = append_all(&mut wal, &[20_000; 100]);
    let segments_before = env
        .file_names(&dir())
        .iter()
        .filter(|n| n.starts_with("wal-"))
        .count();
    assert!(segments_before >= 4, "{segments_before}");
    wal.checkpoint(40).unwrap();
    let segments_after = env
        .file_names(&dir())
        .iter()
        .filter(|n| n.starts_with("wal-"))
        .count();
    assert!(
        segments_after < segments_before,
        "{segments_after} < {segments_before}"
    );
    assert_eq!(wal.manifest_state().wal_checkpoint_sequence, 40);
    drop(wal);
    env.crash();
    let (_, replayed, report) = open(env, &dir(), small_options()).unwrap();
    assert_eq!(report.checkpoint_sequence, 40);
    assert_eq!(replayed, written[40..].to_vec());
}

#[test]
fn every_truncation_inside_the_last_record_keeps_every_earlier_record() {
    let base = FaultEnv::direct(512);
    // Two small records, one that ends 1000 bytes before the block's end, and a last record
    // of 3000 bytes that therefore spans the block boundary (FIRST + LAST fragments).
    let third = BLOCK_BYTES - 1000 - (116 + 216) - 16;
    let (written, segment, spans) = written_log(&base, &[100, 200, third, 3000], small_options());
    base.crash();
    let bytes = base.durable_bytes(&segment).unwrap();
    let (last_start, last_end) = spans[spans.len() - 1];
    // Records may have rotated into the newest segment only partly: find what it holds.
    let newest_first = first_sequence(&bytes);
    println!(
        "newest segment {} holds records {newest_first}..; last record at {last_start}..{last_end}",
        segment.display()
    );
    for cut in last_start..last_end {
        let env = base.snapshot();
        env.cut(&segment, cut as usize).unwrap();
        let (mut wal, replayed, report) = open(env.clone(), &dir(), small_options())
            .unwrap_or_else(|error| panic!("cut at {cut}: {error}"));
        assert_eq!(
            replayed,
            written[..written.len() - 1].to_vec(),
            "cut at {cut}"
        );
        if cut > last_start {
            assert_eq!(report.truncated.len(), 1, "cut at {cut}: {report:?}");
            assert_eq!(report.truncated[0].offset, last_start);
        }
        // The log goes on after the cut, and the cut stays cut.
        let next = wal.append(1, b"after").unwrap();
        assert_eq!(next, written.len() as u64);
        wal.flush().unwrap();
        drop(wal);
        let (_, replayed, report) = open(env, &dir(), small_options()).unwrap();
        assert_eq!(replayed.len(), written.len(), "cut at {cut}");
        assert!(report.truncated.is_empty());
    }
}

#[test]
fn truncation_on_real_files_at_a_stride() {
    let scratch = tempfile::tempdir().unwrap();
    let source = scratch.path().join("source");
    let env = PosixEnv::new(&RingConfig::plain(32), DirectIo::Auto).unwrap();
    let (mut wal, _, _) = open(env, &source, small_options()).unwrap();
    let written = append_all(&mut wal, &[100, 5000, 300, 9000]);
    let segment_file = segment_name(wal.segment_number());
    drop(wal);
    let bytes = std::fs::read(source.join(&segment_file)).unwrap();
    let (last_start, last_end) = last_record(&bytes);
    for cut in (last_start..last_end).step_by(397) {
        let copy = scratch.path().join(format!("cut-{cut}"));
        std::fs::create_dir(&copy).unwrap();
        for entry in std::fs::read_dir(&source).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), copy.join(entry.file_name())).unwrap();
        }
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(copy.join(&segment_file))
            .unwrap();
        file.set_len(cut).unwrap();
        let env = PosixEnv::new(&RingConfig::plain(32), DirectIo::Auto).unwrap();
        let (_, replayed, _) = open(env, &copy, small_options()).unwrap();
        assert_eq!(replayed, written[..3].to_vec(), "cut at {cut}");
        assert_eq!(
            std::fs::metadata(copy.join(&segment_file)).unwrap().len(),
            last_start,
            "the torn tail is cut off on disk"
        );
    }
}

/// The offsets of the last record in a log file.
fn last_record(bytes: &[u8]) -> (u64, u64) {
    let mut reader = LogReader::new(bytes, usize::MAX);
    let mut last = None;
    while let Step::Record(record) = reader.next_record() {
        last = Some((record.offset, record.end));
    }
    last.expect("a record")
}

fn first_sequence(bytes: &[u8]) -> u64 {
    match LogReader::new(bytes, usize::MAX).next_record() {
        Step::Record(record) => record.sequence,
        other => panic!("{other:?}"),
    }
}

/// The offsets of every record in a log file.
fn record_spans(bytes: &[u8]) -> Vec<(u64, u64)> {
    let mut reader = LogReader::new(bytes, usize::MAX);
    let mut spans = Vec::new();
    while let Step::Record(record) = reader.next_record() {
        spans.push((record.offset, record.end));
    }
    spans
}

/// Opens a WAL on `env`, appends `sizes` until durable and closes it: returns what was
/// written, the newest segment's path and the spans of the records in it.
fn written_log(
    env: &FaultEnv,
    sizes: &[usize],
    options: WalOptions,
) -> (Records, PathBuf, Vec<(u64, u64)>) {
    let (mut wal, _, _) = open(env.clone(), &dir(), options).unwrap();
    let written = append_all(&mut wal, sizes);
    let segment = dir().join(segment_name(wal.segment_number()));
    drop(wal);
    let spans = record_spans(&env.durable_bytes(&segment).unwrap());
    (written, segment, spans)
}

#[test]
fn a_flipped_bit_in_a_middle_record_stops_recovery_with_its_offset() {
    let base = FaultEnv::direct(4096);
    let (written, segment, spans) = written_log(&base, &[200; 20], WalOptions::default());
    let (start, end) = spans[7];
    for offset in [start, start + 5, start + 16 + 100, end - 1] {
        let env = base.snapshot();
        env.flip_bit(&segment, offset as usize, 3).unwrap();
        let error = open(env.clone(), &dir(), WalOptions::default()).unwrap_err();
        match &error {
            StorageError::Corrupt {
                path,
                offset: at,
                defect,
            } => {
                assert_eq!(path, &segment);
                assert_eq!(*at, start, "flip at {offset}: {error}");
                assert_ne!(*defect, Defect::SequenceRegression);
            }
            other => panic!("flip at {offset}: {other}"),
        }
        let message = error.to_string();
        assert!(message.contains(&format!("offset {start}")), "{message}");

        // Salvage skips the damaged record, keeps the rest, and leaves a clean log behind.
        let salvage = WalOptions {
            salvage: true,
            ..WalOptions::default()
        };
        let (wal, replayed, report) = open(env.clone(), &dir(), salvage).unwrap();
        let mut expected = written.clone();
        expected.remove(7);
        assert_eq!(replayed, expected);
        assert_eq!(report.skipped.len(), 1, "{report:?}");
        assert_eq!(report.skipped[0].offset, start);
        drop(wal);
        env.crash();
        let (_, replayed, report) = open(env, &dir(), WalOptions::default()).unwrap();
        assert_eq!(replayed, expected, "after salvage, a normal start is clean");
        assert!(report.skipped.is_empty() && report.truncated.is_empty());
    }
}

#[test]
fn a_flipped_bit_in_the_tail_record_is_a_truncation() {
    let base = FaultEnv::direct(4096);
    let (written, segment, spans) = written_log(&base, &[200; 20], WalOptions::default());
    let (start, end) = spans[19];
    for offset in [start, start + 9, end - 1] {
        let env = base.snapshot();
        env.flip_bit(&segment, offset as usize, 0).unwrap();
        let (_, replayed, report) = open(env, &dir(), WalOptions::default()).unwrap();
        assert_eq!(replayed, written[..19].to_vec());
        assert_eq!(report.truncated.len(), 1);
        assert_eq!(report.truncated[0].offset, start);
    }
}

/// The outcome every failed write or sync must have: the appends not yet durable fail, the
/// WAL refuses more, nothing is retried, and after a crash every acknowledged record is back.
fn assert_fail_stop(env: FaultEnv, fault: Fault, errno_text: &str) {
    let (mut wal, _, _) = open(env.clone(), &dir(), small_options()).unwrap();
    let acknowledged = append_all(&mut wal, &[300; 10]);
    env.inject(fault);
    for sequence in 11..=15u64 {
        wal.append(1, &payload_for(sequence, 300)).unwrap();
    }
    let error = wal.flush().unwrap_err();
    let message = error.to_string();
    assert!(matches!(error, StorageError::ReadOnly { .. }), "{message}");
    assert!(message.contains(errno_text), "{message}");
    assert_eq!(
        wal.durable_sequence(),
        10,
        "nothing past the failure is acknowledged"
    );
    let writes = env.log_writes();
    let refused = wal.append(1, b"more").unwrap_err();
    assert!(
        matches!(refused, StorageError::ReadOnly { .. }),
        "{refused}"
    );
    assert!(wal.poll(Some(Duration::from_millis(1))).is_err());
    assert_eq!(env.log_writes(), writes, "a failed WAL must not retry");
    drop(wal);
    env.crash();
    let (_, replayed, _) = open(env, &dir(), small_options()).unwrap();
    assert!(replayed.len() >= 10);
    assert_eq!(replayed[..10].to_vec(), acknowledged);
}

#[test]
fn eio_and_enospc_on_a_log_write_make_the_wal_read_only() {
    for (errno, text) in [
        (libc::EIO, "Input/output error"),
        (libc::ENOSPC, "No space left"),
    ] {
        for env in [FaultEnv::direct(4096), FaultEnv::buffered()] {
            let fault = Fault::Fail {
                target: Target::LogWrite,
                errno,
                skip: 0,
            };
            assert_fail_stop(env, fault, text);
        }
    }
}

#[test]
fn eio_and_enospc_on_fsync_make_the_wal_read_only_and_unsynced_data_is_lost() {
    for (errno, text) in [
        (libc::EIO, "Input/output error"),
        (libc::ENOSPC, "No space left"),
    ] {
        let env = FaultEnv::buffered();
        let fault = Fault::Fail {
            target: Target::LogSync,
            errno,
            skip: 0,
        };
        assert_fail_stop(env.clone(), fault, text);
        // The failed fsync's data never became durable: records 11..=15 are gone.
        let (_, replayed, _) = open(env, &dir(), small_options()).unwrap();
        assert_eq!(replayed.len(), 10);
    }
}

#[test]
fn a_short_write_is_finished_by_resubmitting_the_rest() {
    for env in [FaultEnv::direct(512), FaultEnv::buffered()] {
        let (mut wal, _, _) = open(env.clone(), &dir(), small_options()).unwrap();
        let first = append_all(&mut wal, &[1000; 3]);
        env.inject(Fault::ShortWrite { bytes: 1024 });
        let second = append_all(&mut wal, &[BLOCK_BYTES + 500, 100]);
        assert_eq!(wal.stats().short_writes, 1);
        drop(wal);
        env.crash();
        let (_, replayed, _) = open(env, &dir(), small_options()).unwrap();
        assert_eq!(replayed, [first, second].concat());
    }
}

#[test]
fn a_write_torn_at_any_byte_loses_only_unacknowledged_records() {
    let base = FaultEnv::direct(512);
    let (mut wal, _, _) = open(base.clone(), &dir(), small_options()).unwrap();
    let acknowledged = append_all(&mut wal, &[700; 5]);
    drop(wal);
    base.crash();
    // Tear the first write of the next batch at every 7th byte of its (aligned) extent.
    for torn in (0..4096).step_by(7) {
        let env = base.snapshot();
        let (mut wal, _, _) = open(env.clone(), &dir(), small_options()).unwrap();
        env.inject(Fault::TearWrite { bytes: torn });
        for sequence in 6..=9u64 {
            wal.append(1, &payload_for(sequence, 700)).unwrap();
        }
        let _ = wal.poll(Some(Duration::from_millis(1)));
        assert_eq!(
            wal.durable_sequence(),
            5,
            "a torn write is never acknowledged"
        );
        drop(wal);
        env.crash();
        let (_, replayed, report) = open(env, &dir(), small_options())
            .unwrap_or_else(|error| panic!("torn at {torn}: {error}"));
        assert_eq!(replayed[..5].to_vec(), acknowledged, "torn at {torn}");
        // What survives of the torn batch is a prefix of it, intact.
        for (index, (kind, sequence, payload)) in replayed[5..].iter().enumerate() {
            assert_eq!(*sequence, 6 + index as u64);
            assert_eq!((*kind, payload.clone()), (1, payload_for(*sequence, 700)));
        }
        assert!(report.skipped.is_empty());
    }
}

#[test]
fn a_failed_segment_creation_at_rotation_makes_the_wal_read_only() {
    let env = FaultEnv::direct(4096);
    let (mut wal, _, _) = open(env.clone(), &dir(), small_options()).unwrap();
    env.inject(Fault::Fail {
        target: Target::OpenLog,
        errno: libc::ENOSPC,
        skip: 0,
    });
    let mut outcome = Ok(0);
    for sequence in 1..200u64 {
        outcome = wal
            .append(1, &payload_for(sequence, 20_000))
            .and_then(|_| wal.flush());
        if outcome.is_err() {
            break;
        }
    }
    let error = outcome.unwrap_err();
    assert!(error.to_string().contains("No space left"), "{error}");
    assert!(wal.read_only().is_some());
    let acknowledged = wal.durable_sequence();
    drop(wal);
    env.crash();
    let (_, replayed, _) = open(env, &dir(), small_options()).unwrap();
    assert_eq!(replayed.len() as u64, acknowledged);
}

/// Only the MANIFEST in force is left in the WAL's directory.
fn assert_one_manifest(env: &FaultEnv, what: &str) {
    let files = env.file_names(&dir());
    let manifests = files.iter().filter(|name| name.starts_with("MANIFEST"));
    assert_eq!(manifests.count(), 1, "{what}: {files:?}");
}

/// Issue #23 item 11: a start on a full disk. Before, the open failed (its new segment and
/// MANIFEST could not be written), so the node served nothing. Now it replays (every
/// acknowledged record is handed over), refuses appends with `NoSpace`, and takes them again
/// once the disk does (`resume`, tried at most once a second); a crash at any point in
/// between loses nothing acknowledged. Each of the start's writes is the one that fails in
/// turn (the segment, the new MANIFEST, CURRENT), in both log modes.
#[test]
fn a_start_on_a_full_disk_serves_the_log_and_takes_appends_once_space_frees() {
    for (target, skip) in [
        (Target::OpenLog, 0),
        (Target::FileWrite, 0),
        (Target::FileWrite, 1),
    ] {
        for env in [FaultEnv::direct(4096), FaultEnv::buffered()] {
            let what = format!("{target:?} {skip}");
            let (mut wal, _, _) = open(env.clone(), &dir(), small_options()).unwrap();
            let acknowledged = append_all(&mut wal, &[300; 10]);
            drop(wal);
            env.crash();
            // The disk is full but for `skip` writes of this kind.
            env.inject(Fault::Fail {
                target,
                errno: libc::ENOSPC,
                skip,
            });
            let opened = open(env.clone(), &dir(), small_options());
            env.clear_faults();
            let (mut wal, replayed, _) = match opened {
                Ok(opened) => opened,
                Err(error) => panic!("{what}: the open failed: {error}"),
            };
            assert_eq!(replayed, acknowledged, "{what}");
            assert!(wal.read_only().is_some(), "{what}: the fault missed");
            env.set_full(true);
            let refused = wal.append(1, b"x").unwrap_err();
            assert!(
                matches!(refused, StorageError::NoSpace { .. })
                    && refused.to_string().contains("No space left"),
                "{what}: {refused}"
            );
            // Still full: the next try fails too, and a crash now loses nothing.
            std::thread::sleep(vortex_storage::wal::RESUME_INTERVAL);
            assert!(!wal.resume(), "{what}");
            assert!(!wal.resume(), "{what}: tried again within the interval");
            let snapshot = env.snapshot();
            let (_, after_crash, _) = open(snapshot, &dir(), small_options()).unwrap();
            assert_eq!(after_crash, acknowledged, "{what}: crashed while waiting");
            // Space frees: within an interval the WAL takes appends again.
            env.set_full(false);
            std::thread::sleep(vortex_storage::wal::RESUME_INTERVAL);
            assert!(wal.resume(), "{what}");
            assert!(wal.read_only().is_none(), "{what}");
            let more = append_all(&mut wal, &[500; 5]);
            assert_eq!(more[0].1, 11, "{what}");
            drop(wal);
            env.crash();
            let (_, replayed, _) = open(env.clone(), &dir(), small_options()).unwrap();
            assert_eq!(
                replayed,
                [acknowledged.clone(), more].concat(),
                "{what}: after the resume"
            );
            assert_one_manifest(&env, &what);
        }
    }
}

/// How the disk fills up under a running WAL, in
/// [`a_disk_that_fills_up_while_the_wal_runs_takes_appends_again_once_space_frees`].
#[derive(Debug, Clone, Copy)]
enum Fills {
    /// At a log write.
    LogWrite,
    /// At the `fdatasync` ending a buffered chain (ENOSPC there: the data may be lost).
    LogSync,
    /// When a segment is due and cannot be created.
    Rotation,
    /// At a MANIFEST append (a checkpoint's).
    Manifest,
    /// At a MANIFEST append while a chain is in flight (its completion held back): the
    /// resume waits for it, and its records are durable.
    ManifestInFlight,
}

/// Issue #23 item 11: the disk fills up while the WAL runs. Before, the WAL stayed
/// read-only until a restart. Now, once no chain is in flight, `resume` cuts the segment
/// back to its durable end, and once the disk has room it starts a new segment and a new
/// MANIFEST: appends are taken again, the failed ones' sequence numbers are passed over
/// (`take_skipped`), and a crash at any point keeps exactly the acknowledged records.
#[test]
fn a_disk_that_fills_up_while_the_wal_runs_takes_appends_again_once_space_frees() {
    for fills in [
        Fills::LogWrite,
        Fills::LogSync,
        Fills::Rotation,
        Fills::Manifest,
        Fills::ManifestInFlight,
    ] {
        for env in [FaultEnv::direct(4096), FaultEnv::buffered()] {
            let what = format!("{fills:?}");
            let (mut wal, _, _) = open(env.clone(), &dir(), small_options()).unwrap();
            if matches!(fills, Fills::LogSync) && wal.direct_io() {
                continue; // only a buffered log syncs
            }
            let mut acknowledged = append_all(&mut wal, &[300; 10]);
            match fills {
                Fills::LogSync => env.inject(Fault::Fail {
                    target: Target::LogSync,
                    errno: libc::ENOSPC,
                    skip: 0,
                }),
                Fills::Rotation => env.inject(Fault::Fail {
                    target: Target::OpenLog,
                    errno: libc::ENOSPC,
                    skip: 0,
                }),
                Fills::LogWrite | Fills::Manifest => env.set_full(true),
                Fills::ManifestInFlight => {
                    env.hold_completions(true);
                    for sequence in 11..=13u64 {
                        let payload = payload_for(sequence, 300);
                        assert_eq!(wal.append(2, &payload).unwrap(), sequence);
                        acknowledged.push((2, sequence, payload));
                    }
                    wal.poll(None).unwrap(); // the chain goes out; its completion waits
                    env.set_full(true);
                }
            }
            let failed = match fills {
                Fills::LogWrite | Fills::LogSync => (11..=15u64)
                    .map(|sequence| wal.append(1, &payload_for(sequence, 300)))
                    .collect::<Result<Vec<u64>, _>>()
                    .and_then(|_| wal.flush()),
                Fills::Rotation => {
                    let mut outcome = Ok(0);
                    for sequence in 11..200u64 {
                        outcome = wal
                            .append(1, &payload_for(sequence, 20_000))
                            .and_then(|_| wal.flush());
                        match &outcome {
                            Ok(_) => {
                                acknowledged.push((1, sequence, payload_for(sequence, 20_000)))
                            }
                            Err(_) => break,
                        }
                    }
                    outcome
                }
                Fills::Manifest | Fills::ManifestInFlight => wal.checkpoint(5).map(|()| 0),
            };
            let error = failed.expect_err(&what);
            assert!(
                error.to_string().contains("No space left"),
                "{what}: {error}"
            );
            env.set_full(true); // and it stays full for now
            if matches!(fills, Fills::ManifestInFlight) {
                // A chain in flight: nothing is cut back before it completes.
                assert!(!wal.resume(), "{what}");
                assert_eq!(wal.durable_sequence(), 10, "{what}");
                env.hold_completions(false);
            }
            assert!(wal.append(1, b"x").is_err(), "{what}");
            // Still full: the segment is cut back (the chain in flight, if any, completed
            // first), the new one cannot start yet.
            assert!(!wal.resume(), "{what}");
            let durable = wal.durable_sequence();
            assert_eq!(durable, acknowledged.last().unwrap().1, "{what}");
            let refused = wal.append(1, b"x").unwrap_err();
            assert!(
                matches!(refused, StorageError::NoSpace { .. }),
                "{what}: {refused}"
            );
            let (_, after_crash, _) = open(env.snapshot(), &dir(), small_options()).unwrap();
            assert_eq!(after_crash, acknowledged, "{what}: crashed while full");
            // Room again: appends are taken within an interval, after the failed numbers.
            env.set_full(false);
            env.clear_faults();
            std::thread::sleep(vortex_storage::wal::RESUME_INTERVAL);
            assert!(wal.resume(), "{what}");
            let skipped = wal.take_skipped();
            let next = wal.next_sequence();
            match skipped {
                Some((from, to)) => assert_eq!((from, to + 1), (durable + 1, next), "{what}"),
                None => assert_eq!(next, durable + 1, "{what}"),
            }
            assert_eq!(wal.durable_sequence(), next - 1, "{what}");
            let more = append_all(&mut wal, &[500; 5]);
            assert_eq!(more[0].1, next, "{what}");
            acknowledged.extend(more);
            drop(wal);
            env.crash();
            let (mut wal, replayed, _) = open(env.clone(), &dir(), small_options()).unwrap();
            assert_eq!(replayed, acknowledged, "{what}: after the resume");
            assert_one_manifest(&env, &what);
            // And the log goes on.
            let last = append_all(&mut wal, &[100; 3]);
            assert_eq!(last[0].1, acknowledged.last().unwrap().1 + 1, "{what}");
        }
    }
}

#[test]
fn the_current_switch_is_atomic_across_a_crash() {
    let env = FaultEnv::direct(4096);
    let (mut wal, _, _) = open(env.clone(), &dir(), small_options()).unwrap();
    let written = append_all(&mut wal, &[100; 5]);
    drop(wal);
    // The next open fails to sync the directory after renaming CURRENT.tmp over CURRENT:
    // after a crash, CURRENT still names a whole MANIFEST, old or new.
    for skip in 0..3 {
        let trial = env.snapshot();
        trial.inject(Fault::Fail {
            target: Target::DirSync,
            errno: libc::EIO,
            skip,
        });
        let _ = open(trial.clone(), &dir(), small_options());
        trial.crash();
        let (_, replayed, _) = open(trial, &dir(), small_options())
            .unwrap_or_else(|error| panic!("dir sync {skip} failed: {error}"));
        assert_eq!(replayed, written);
    }
    // And a failed MANIFEST write at open is an error, not a silent start.
    env.inject(Fault::Fail {
        target: Target::FileSync,
        errno: libc::EIO,
        skip: 0,
    });
    let error = open(env.clone(), &dir(), small_options()).unwrap_err();
    assert!(matches!(error, StorageError::Io { .. }), "{error}");
}

#[test]
fn a_missing_current_or_segment_is_refused() {
    let env = FaultEnv::direct(4096);
    let (mut wal, _, _) = open(env.clone(), &dir(), small_options()).unwrap();
    append_all(&mut wal, &[20_000; 60]);
    drop(wal);
    let mut copy = env.snapshot();
    copy.remove(&dir().join("CURRENT")).unwrap();
    let error = open(copy, &dir(), small_options()).unwrap_err();
    assert!(error.to_string().contains("CURRENT does not"), "{error}");

    let segments: Vec<String> = env
        .file_names(&dir())
        .into_iter()
        .filter(|name| name.starts_with("wal-"))
        .collect();
    assert!(segments.len() >= 3, "{segments:?}");
    // A segment in the middle, or the newest one: either loses acknowledged records.
    for name in [&segments[1], segments.last().unwrap()] {
        let mut copy = env.snapshot();
        copy.remove(&dir().join(name)).unwrap();
        let error = open(copy, &dir(), small_options()).unwrap_err();
        assert!(
            error.to_string().contains(&format!("{name} is missing")),
            "{error}"
        );
    }
}

/// Random appends, random faults (a write torn at a random byte, EIO on a write or a sync),
/// a crash, a restart: over many rounds on one log, every acknowledged record is always back,
/// in order, and everything replayed is exactly what was appended.
#[test]
fn random_faults_and_crashes_never_lose_an_acknowledged_record() {
    let seed = test_seed();
    println!("seed {seed} (replay with VORTEX_TEST_SEED={seed})");
    let mut rng = Rng(seed);
    for env in [FaultEnv::direct(512), FaultEnv::buffered()] {
        // Everything ever appended, by sequence number: (kind, payload).
        let mut appended: std::collections::BTreeMap<u64, (u8, Vec<u8>)> = Default::default();
        let mut acknowledged = 0u64;
        for round in 0..40 {
            let (mut wal, replayed, _) = open(env.clone(), &dir(), small_options())
                .unwrap_or_else(|error| panic!("seed {seed} round {round}: {error}"));
            let mut expected_next = None;
            for (kind, sequence, payload) in &replayed {
                let (want_kind, want_payload) = appended
                    .get(sequence)
                    .unwrap_or_else(|| panic!("seed {seed}: record {sequence} invented"));
                assert_eq!((kind, payload), (want_kind, want_payload), "seed {seed}");
                if let Some(next) = expected_next {
                    assert_eq!(*sequence, next, "seed {seed}: a gap in replay");
                }
                expected_next = Some(sequence + 1);
            }
            let last = replayed.last().map_or(0, |record| record.1);
            assert!(
                last >= acknowledged,
                "seed {seed} round {round}: lost {last} < {acknowledged}"
            );
            // Records beyond what replay returned were never acknowledged: forget them.
            appended.retain(|&sequence, _| sequence <= last);
            match rng.below(4) {
                0 => env.inject(Fault::TearWrite {
                    bytes: rng.below(6000) as usize,
                }),
                1 => env.inject(Fault::Fail {
                    target: Target::LogWrite,
                    errno: libc::EIO,
                    skip: rng.below(5) as u32,
                }),
                2 => env.inject(Fault::Fail {
                    target: Target::LogSync,
                    errno: libc::EIO,
                    skip: rng.below(5) as u32,
                }),
                _ => {}
            }
            for _ in 0..rng.below(30) + 1 {
                let sequence = wal.next_sequence();
                let payload = payload_for(sequence ^ seed, rng.below(5000) as usize);
                let kind = 1 + rng.below(5) as u8;
                match wal.append(kind, &payload) {
                    Ok(got) => {
                        assert_eq!(got, sequence);
                        appended.insert(sequence, (kind, payload));
                    }
                    Err(StorageError::Throttled(_)) => {}
                    Err(StorageError::ReadOnly { .. }) => break,
                    Err(error) => panic!("seed {seed}: {error}"),
                }
                if rng.below(3) == 0 {
                    let _ = wal.poll(Some(Duration::from_millis(1)));
                }
                acknowledged = acknowledged.max(wal.durable_sequence());
            }
            let _ = wal.flush();
            acknowledged = acknowledged.max(wal.durable_sequence());
            drop(wal);
            env.crash();
        }
        assert!(
            acknowledged > 0,
            "seed {seed}: nothing was ever acknowledged"
        );
    }
}

/// Random appends, polls, resumes and crashes while the disk fills up and frees at random
/// (seeded; replay with `VORTEX_TEST_SEED`): every open comes up, full disk or not, and
/// replays every acknowledged record and nothing else: never a record whose append the
/// full disk failed and a resume passed over, never one invented, in increasing order.
#[test]
fn random_full_disks_resumes_and_crashes_never_lose_an_acknowledged_record() {
    let seed = test_seed();
    println!("seed {seed} (replay with VORTEX_TEST_SEED={seed})");
    let mut rng = Rng(seed);
    let later = || std::time::Instant::now() + Duration::from_secs(3600);
    let mut resumes = 0;
    for env in [FaultEnv::direct(512), FaultEnv::buffered()] {
        let mut appended: std::collections::BTreeMap<u64, (u8, Vec<u8>)> = Default::default();
        let mut acknowledged: std::collections::BTreeSet<u64> = Default::default();
        let mut full = false;
        for round in 0..60 {
            let context = format!("seed {seed} round {round}");
            let (mut wal, replayed, _) = open(env.clone(), &dir(), small_options())
                .unwrap_or_else(|error| panic!("{context}: the open failed: {error}"));
            let mut previous = 0;
            for (kind, sequence, payload) in &replayed {
                assert!(*sequence > previous, "{context}: out of order");
                previous = *sequence;
                // A record a resume passed over was taken out of `appended`: were it back,
                // it would be invented (or, its number used again after a crash by another
                // record, mismatch).
                let (want_kind, want_payload) = appended
                    .get(sequence)
                    .unwrap_or_else(|| panic!("{context}: record {sequence} invented"));
                assert_eq!((kind, payload), (want_kind, want_payload), "{context}");
            }
            let present: std::collections::BTreeSet<u64> =
                replayed.iter().map(|record| record.1).collect();
            let lost: Vec<&u64> = acknowledged.difference(&present).collect();
            assert!(
                lost.is_empty(),
                "{context}: acknowledged records lost: {lost:?}"
            );
            // What replay did not return was never acknowledged: forget it.
            appended.retain(|sequence, _| present.contains(sequence));
            for _ in 0..rng.below(80) + 1 {
                match rng.below(12) {
                    0 | 1 => {
                        full = !full;
                        env.set_full(full);
                    }
                    2 | 3 => {
                        if wal.resume_at(later()) {
                            if let Some(range) = wal.take_skipped() {
                                resumes += 1;
                                appended
                                    .retain(|sequence, _| !(range.0..=range.1).contains(sequence));
                            }
                        }
                    }
                    4 => {
                        let _ = wal.poll(Some(Duration::from_millis(1)));
                    }
                    _ => {
                        let sequence = wal.next_sequence();
                        let payload = payload_for(sequence ^ seed, rng.below(6000) as usize);
                        let kind = 1 + rng.below(5) as u8;
                        if let Ok(got) = wal.append(kind, &payload) {
                            assert_eq!(got, sequence, "{context}");
                            appended.insert(sequence, (kind, payload));
                        }
                    }
                }
                let durable = wal.durable_sequence();
                acknowledged.extend(appended.range(..=durable).map(|(sequence, _)| *sequence));
            }
            let _ = wal.flush();
            let durable = wal.durable_sequence();
            acknowledged.extend(appended.range(..=durable).map(|(sequence, _)| *sequence));
            drop(wal);
            env.crash();
            if rng.below(3) == 0 {
                full = !full;
                env.set_full(full);
            }
        }
        assert!(
            resumes > 0,
            "seed {seed}: no resume passed over a failed append"
        );
        assert!(
            !acknowledged.is_empty(),
            "seed {seed}: nothing acknowledged"
        );
    }
}

#[test]
fn buffered_mode_on_real_files_round_trips() {
    let scratch = tempfile::tempdir().unwrap();
    let direct = real_round_trip(&scratch.path().join("wal"), DirectIo::Off, &sizes(200, 5));
    assert!(!direct);
}

#[test]
fn a_checkpoint_never_retires_a_segment_whose_last_write_is_in_flight() {
    let env = FaultEnv::direct(4096);
    let options = WalOptions {
        segment_bytes_target: 64 << 10,
        ..small_options()
    };
    let (mut wal, _, _) = open(env.clone(), &dir(), options.clone()).unwrap();
    let mut written = append_all(&mut wal, &[1000; 10]);
    // The next batch crosses the segment target and stays in flight (a slow device)...
    env.hold_completions(true);
    for _ in 0..60 {
        let sequence = wal.next_sequence();
        wal.append(1, &payload_for(sequence, 1100)).unwrap();
        written.push((1, sequence, payload_for(sequence, 1100)));
    }
    wal.poll(None).unwrap();
    assert_eq!(wal.durable_sequence(), 10);
    // ... then the next append rotates, and a checkpoint comes in.
    let segment_before = wal.segment_number();
    let sequence = wal.next_sequence();
    wal.append(1, &payload_for(sequence, 1000)).unwrap();
    written.push((1, sequence, payload_for(sequence, 1000)));
    assert!(wal.segment_number() > segment_before, "no rotation");
    wal.checkpoint(u64::MAX).unwrap();
    env.hold_completions(false);
    wal.flush().unwrap();
    drop(wal);
    env.crash();
    let (_, replayed, _) = open(env, &dir(), options).unwrap();
    assert_eq!(
        replayed,
        written[10..].to_vec(),
        "records after the checkpoint survive"
    );
}

#[test]
fn a_crash_during_the_very_first_open_starts_afresh() {
    let mut env = FaultEnv::direct(4096);
    env.create_dir_all(&dir()).unwrap();
    // What the first open leaves if it dies after creating its segment, before CURRENT.
    env.open_log(&dir().join(segment_name(1))).unwrap();
    env.sync_dir(&dir()).unwrap();
    env.crash();
    let (mut wal, replayed, _) = open(env.clone(), &dir(), small_options()).unwrap();
    assert!(replayed.is_empty());
    let written = append_all(&mut wal, &[10, 20]);
    drop(wal);
    let (_, replayed, _) = open(env.clone(), &dir(), small_options()).unwrap();
    assert_eq!(replayed, written);

    // A segment with data and no CURRENT is another matter.
    let mut copy = env.snapshot();
    copy.remove(&dir().join("CURRENT")).unwrap();
    let error = open(copy, &dir(), small_options()).unwrap_err();
    assert!(error.to_string().contains("with data exist"), "{error}");
}

#[test]
fn torn_tails_in_two_segments_are_both_cut() {
    let env = FaultEnv::direct(4096);
    let (written, newest, spans) = written_log(&env, &[300; 10], small_options());
    env.crash();
    env.cut(&newest, (spans[9].0 + 20) as usize).unwrap();
    // A later segment holding only garbage (a crash just after rotation, on a device that
    // wrote junk).
    let mut writer = env.clone();
    let garbage = dir().join(segment_name(wal_number(&newest) + 1));
    writer.write_synced(&garbage, &[0x5A; 700]).unwrap();
    writer.sync_dir(&dir()).unwrap();
    let (_, replayed, report) = open(env, &dir(), small_options()).unwrap();
    assert_eq!(replayed, written[..9].to_vec());
    assert_eq!(report.truncated.len(), 2, "{report:?}");
}

fn wal_number(path: &Path) -> u64 {
    vortex_storage::wal::parse_segment_name(&path.file_name().unwrap().to_string_lossy()).unwrap()
}

#[test]
fn damage_below_what_an_earlier_start_read_is_corruption_not_a_tail() {
    let env = FaultEnv::direct(4096);
    let (_, segment, _) = written_log(&env, &[300; 10], small_options());
    // A second start reads everything back whole and opens an empty segment after it.
    let (wal, replayed, _) = open(env.clone(), &dir(), small_options()).unwrap();
    assert_eq!(replayed.len(), 10);
    drop(wal);
    // Bit rot in record 10 now: nothing valid follows it, but it was read whole before.
    let spans = record_spans(&env.durable_bytes(&segment).unwrap());
    env.flip_bit(&segment, (spans[9].0 + 30) as usize, 2)
        .unwrap();
    let error = open(env, &dir(), small_options()).unwrap_err();
    match error {
        StorageError::Corrupt { path, offset, .. } => {
            assert_eq!(path, segment);
            assert_eq!(offset, spans[9].0);
        }
        other => panic!("{other}"),
    }
}

#[test]
fn records_written_under_a_larger_limit_replay_after_it_is_lowered() {
    let env = FaultEnv::direct(4096);
    let (mut wal, _, _) = open(env.clone(), &dir(), small_options()).unwrap();
    let written = append_all(&mut wal, &[100, 100 << 10]);
    drop(wal);
    let lowered = WalOptions {
        record_bytes_max: 16 << 10,
        ..small_options()
    };
    let (_, replayed, report) = open(env, &dir(), lowered).unwrap();
    assert_eq!(replayed, written);
    assert!(report.truncated.is_empty());
}

/// A log whose last record holds the largest sequence number a log may hold (the wal_log
/// fuzz target found it): the next append is refused. Before, it was taken, acknowledged,
/// and read back at the next start as a torn tail (its sequence number out of range), so
/// an acknowledged record was lost.
#[test]
fn a_log_at_the_last_sequence_number_refuses_appends_rather_than_lose_them() {
    use vortex_storage::record::{encode_log, SEQUENCE_MAX};
    let env = FaultEnv::direct(512);
    let options = small_options();
    let (wal, _, _) = open(env.clone(), &dir(), options.clone()).unwrap();
    drop(wal);
    let path = dir().join(segment_name(1));
    let mut files = env.clone();
    files.remove(&path).unwrap();
    files
        .write_synced(
            &path,
            &encode_log(&[(1, SEQUENCE_MAX, b"the last".to_vec())]),
        )
        .unwrap();
    let (mut wal, records, _) = open(env.clone(), &dir(), options.clone()).unwrap();
    assert_eq!(records, vec![(1, SEQUENCE_MAX, b"the last".to_vec())]);
    assert!(
        !wal.has_room([8]),
        "has_room promised an append past the last number"
    );
    match wal.append(1, b"one more") {
        Err(StorageError::Invalid(detail)) => assert!(detail.contains("every sequence number")),
        other => panic!("an append past the last sequence number: {other:?}"),
    }
    drop(wal);
    let (_, again, _) = open(env, &dir(), options).unwrap();
    assert_eq!(again, records, "the log changed");
}
