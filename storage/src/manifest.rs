//! The MANIFEST: a log of versioned edits to what is live on disk, and CURRENT, which names
//! the MANIFEST in force.
//!
//! A MANIFEST file (`MANIFEST-000007`) uses the log record format of `record.rs`; each record
//! (kind [`EDIT_KIND`]) is one [`Edit`]. Replaying the edits in order gives the
//! [`ManifestState`]: today the WAL checkpoint and segment numbering, in #6 the live SSTables
//! too. An edit is appended and `fdatasync`ed before anything relies on it (a segment is
//! deleted only after the edit that retires it is durable).
//!
//! A new MANIFEST starts with a snapshot edit of the whole state. It is switched to
//! atomically: CURRENT's new content is written to `CURRENT.tmp`, synced, renamed over
//! CURRENT, and the directory is synced. A crash at any point leaves CURRENT naming either
//! the old MANIFEST (still whole) or the new one (already synced). The WAL starts a new
//! MANIFEST at every open, and when the current one grows past [`MANIFEST_BYTES_MAX`].

use crate::env::Env;
use crate::error::{io_error, StorageError};
use crate::record::{self, LogReader, Step};
use std::path::{Path, PathBuf};

/// The record kind of an edit.
pub const EDIT_KIND: u8 = 1;
/// The name of the file naming the live MANIFEST.
pub const CURRENT: &str = "CURRENT";
/// Where CURRENT's next content is written before the rename.
pub const CURRENT_TEMP: &str = "CURRENT.tmp";
/// A MANIFEST larger than this is rewritten as one snapshot edit.
pub const MANIFEST_BYTES_MAX: u64 = 4 << 20;
/// The largest edit accepted on reading (a snapshot of about 90 000 tables).
const EDIT_BYTES_MAX: usize = 4 << 20;
/// The edit encoding's version: 2 adds the SSTable fields and a 16-bit field count; version 1
/// edits (WAL fields only, 8-bit count) are still read.
const EDIT_VERSION: u8 = 2;
/// The deepest LSM level plus one.
pub const LEVELS: usize = 7;

/// Field tags of an edit.
const TAG_WAL_REPLAY_FROM_SEGMENT: u8 = 1;
const TAG_WAL_CHECKPOINT_SEQUENCE: u8 = 2;
const TAG_SEGMENT_NEXT: u8 = 3;
const TAG_WAL_SEALED_SEQUENCE: u8 = 4;
const TAG_TABLE_NEXT: u8 = 5;
const TAG_TABLE_ADD: u8 = 6;
const TAG_TABLE_REMOVE: u8 = 7;
/// Bytes of an added table's description.
const TABLE_META_BYTES: usize = 8 + 1 + 4 + 8 * 4;

/// A live SSTable, as the MANIFEST records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableMeta {
    /// Its file number (`000042.sst`).
    pub number: u64,
    /// Its level, 0 (flushes, overlapping) to `LEVELS - 1`.
    pub level: u8,
    /// The collection it holds.
    pub collection: u32,
    /// Its smallest point id.
    pub smallest: u64,
    /// Its largest point id.
    pub largest: u64,
    /// Its size in bytes.
    pub file_bytes: u64,
    /// The highest sequence number in it.
    pub max_sequence: u64,
}

impl TableMeta {
    fn encode_into(&self, bytes: &mut Vec<u8>) {
        bytes.extend_from_slice(&self.number.to_le_bytes());
        bytes.push(self.level);
        bytes.extend_from_slice(&self.collection.to_le_bytes());
        for value in [
            self.smallest,
            self.largest,
            self.file_bytes,
            self.max_sequence,
        ] {
            bytes.extend_from_slice(&value.to_le_bytes());
        }
    }

    fn decode(bytes: &[u8]) -> Self {
        let u64_at = |at: usize| {
            let mut word = [0u8; 8];
            word.copy_from_slice(&bytes[at..at + 8]);
            u64::from_le_bytes(word)
        };
        TableMeta {
            number: u64_at(0),
            level: bytes[8],
            collection: u32::from_le_bytes([bytes[9], bytes[10], bytes[11], bytes[12]]),
            smallest: u64_at(13),
            largest: u64_at(21),
            file_bytes: u64_at(29),
            max_sequence: u64_at(37),
        }
    }
}

/// The largest segment or MANIFEST number accepted: far beyond any real log, and far from
/// `u64::MAX` so that `number + 1` cannot overflow.
pub const FILE_NUMBER_MAX: u64 = 1 << 40;

/// The file name of MANIFEST number `number`.
pub fn manifest_name(number: u64) -> String {
    format!("MANIFEST-{number:06}")
}

/// The number in a MANIFEST file name.
pub fn parse_manifest_name(name: &str) -> Option<u64> {
    parse_file_number(name, "MANIFEST-", "")
}

/// The number between `prefix` and `suffix` in a file name: decimal digits only, at most
/// [`FILE_NUMBER_MAX`].
pub(crate) fn parse_file_number(name: &str, prefix: &str, suffix: &str) -> Option<u64> {
    let digits = name.strip_prefix(prefix)?.strip_suffix(suffix)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits
        .parse()
        .ok()
        .filter(|&number| number <= FILE_NUMBER_MAX)
}

/// What the MANIFEST says is live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestState {
    /// The first WAL segment recovery reads; older ones may be deleted.
    pub wal_replay_from_segment: u64,
    /// Records with sequence numbers up to this one are persisted elsewhere: replay skips them.
    pub wal_checkpoint_sequence: u64,
    /// The next unused segment number (numbers are never reused).
    pub segment_next: u64,
    /// Every record up to this sequence number was read back whole by a previous open: the
    /// log may never end below it again, so damage there is corruption, not a torn tail.
    pub wal_sealed_sequence: u64,
    /// The next unused SSTable number.
    pub table_next: u64,
    /// The live SSTables by number.
    pub tables: std::collections::BTreeMap<u64, TableMeta>,
}

impl Default for ManifestState {
    fn default() -> Self {
        ManifestState {
            wal_replay_from_segment: 1,
            wal_checkpoint_sequence: 0,
            segment_next: 1,
            wal_sealed_sequence: 0,
            table_next: 1,
            tables: std::collections::BTreeMap::new(),
        }
    }
}

impl ManifestState {
    /// Why the state cannot be right, if it cannot.
    pub fn check(&self) -> Result<(), String> {
        use crate::record::SEQUENCE_MAX;
        if self.segment_next > FILE_NUMBER_MAX || self.wal_replay_from_segment > FILE_NUMBER_MAX {
            return Err(format!("segment numbers out of range: {self:?}"));
        }
        if self.wal_checkpoint_sequence > SEQUENCE_MAX || self.wal_sealed_sequence > SEQUENCE_MAX {
            return Err(format!("sequence numbers out of range: {self:?}"));
        }
        if self.table_next > FILE_NUMBER_MAX {
            return Err(format!("table_next {} out of range", self.table_next));
        }
        for (number, table) in &self.tables {
            if *number != table.number
                || table.number >= self.table_next
                || table.level as usize >= LEVELS
                || table.smallest > table.largest
            {
                return Err(format!("impossible table {table:?}"));
            }
        }
        Ok(())
    }
}

/// One change to the state; absent fields are unchanged.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Edit {
    /// New [`ManifestState::wal_replay_from_segment`].
    pub wal_replay_from_segment: Option<u64>,
    /// New [`ManifestState::wal_checkpoint_sequence`].
    pub wal_checkpoint_sequence: Option<u64>,
    /// New [`ManifestState::segment_next`].
    pub segment_next: Option<u64>,
    /// New [`ManifestState::wal_sealed_sequence`].
    pub wal_sealed_sequence: Option<u64>,
    /// New [`ManifestState::table_next`].
    pub table_next: Option<u64>,
    /// Tables that stop being live (applied before `tables_added`).
    pub tables_removed: Vec<u64>,
    /// Tables that become live.
    pub tables_added: Vec<TableMeta>,
}

impl Edit {
    /// An edit that sets every field: the first record of a new MANIFEST.
    pub fn snapshot(state: &ManifestState) -> Self {
        Edit {
            wal_replay_from_segment: Some(state.wal_replay_from_segment),
            wal_checkpoint_sequence: Some(state.wal_checkpoint_sequence),
            segment_next: Some(state.segment_next),
            wal_sealed_sequence: Some(state.wal_sealed_sequence),
            table_next: Some(state.table_next),
            tables_removed: Vec::new(),
            tables_added: state.tables.values().copied().collect(),
        }
    }

    fn fields(&self) -> [(u8, Option<u64>); 5] {
        [
            (TAG_WAL_REPLAY_FROM_SEGMENT, self.wal_replay_from_segment),
            (TAG_WAL_CHECKPOINT_SEQUENCE, self.wal_checkpoint_sequence),
            (TAG_SEGMENT_NEXT, self.segment_next),
            (TAG_WAL_SEALED_SEQUENCE, self.wal_sealed_sequence),
            (TAG_TABLE_NEXT, self.table_next),
        ]
    }

    /// Encodes: version byte, field count (`u16`), then each field as a tag byte and its
    /// value: a little-endian `u64`, or for an added table its description.
    pub fn encode(&self) -> Vec<u8> {
        let mut count = 0u16;
        let mut fields = Vec::new();
        for (tag, value) in self.fields() {
            if let Some(value) = value {
                fields.push(tag);
                fields.extend_from_slice(&value.to_le_bytes());
                count += 1;
            }
        }
        for number in &self.tables_removed {
            fields.push(TAG_TABLE_REMOVE);
            fields.extend_from_slice(&number.to_le_bytes());
            count += 1;
        }
        for table in &self.tables_added {
            fields.push(TAG_TABLE_ADD);
            table.encode_into(&mut fields);
            count += 1;
        }
        let mut bytes = vec![EDIT_VERSION];
        bytes.extend_from_slice(&count.to_le_bytes());
        bytes.extend_from_slice(&fields);
        bytes
    }

    /// Decodes an edit; unknown versions and tags, repeated fields and stray bytes are errors.
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        let (count, mut rest) = match bytes {
            [1, count, rest @ ..] => (usize::from(*count), rest),
            [EDIT_VERSION, low, high, rest @ ..] => {
                (usize::from(u16::from_le_bytes([*low, *high])), rest)
            }
            [version, ..] if *version != 1 && *version != EDIT_VERSION => {
                return Err(format!("unknown edit version {version}"))
            }
            _ => return Err("edit shorter than its header".to_owned()),
        };
        let version_1 = bytes[0] == 1;
        let mut edit = Edit::default();
        for _ in 0..count {
            let [tag, after_tag @ ..] = rest else {
                return Err(format!("edit of {count} fields ends early"));
            };
            let width = if *tag == TAG_TABLE_ADD {
                TABLE_META_BYTES
            } else {
                8
            };
            if after_tag.len() < width {
                return Err(format!("edit field tag {tag} truncated"));
            }
            let (field, after) = after_tag.split_at(width);
            rest = after;
            if version_1 && *tag > TAG_WAL_SEALED_SEQUENCE {
                return Err(format!("edit field tag {tag} in a version 1 edit"));
            }
            if *tag == TAG_TABLE_ADD {
                edit.tables_added.push(TableMeta::decode(field));
                continue;
            }
            let mut word = [0u8; 8];
            word.copy_from_slice(field);
            let value = u64::from_le_bytes(word);
            let slot = match *tag {
                TAG_WAL_REPLAY_FROM_SEGMENT => &mut edit.wal_replay_from_segment,
                TAG_WAL_CHECKPOINT_SEQUENCE => &mut edit.wal_checkpoint_sequence,
                TAG_SEGMENT_NEXT => &mut edit.segment_next,
                TAG_WAL_SEALED_SEQUENCE => &mut edit.wal_sealed_sequence,
                TAG_TABLE_NEXT => &mut edit.table_next,
                TAG_TABLE_REMOVE => {
                    edit.tables_removed.push(value);
                    continue;
                }
                tag => return Err(format!("unknown edit field tag {tag}")),
            };
            if slot.replace(value).is_some() {
                return Err(format!("edit field tag {tag} repeated"));
            }
        }
        if !rest.is_empty() {
            return Err(format!(
                "{} stray bytes after the edit's fields",
                rest.len()
            ));
        }
        Ok(edit)
    }

    /// Applies the edit to `state`.
    pub fn apply(&self, state: &mut ManifestState) {
        if let Some(value) = self.wal_replay_from_segment {
            state.wal_replay_from_segment = value;
        }
        if let Some(value) = self.wal_checkpoint_sequence {
            state.wal_checkpoint_sequence = value;
        }
        if let Some(value) = self.segment_next {
            state.segment_next = value;
        }
        if let Some(value) = self.wal_sealed_sequence {
            state.wal_sealed_sequence = value;
        }
        if let Some(value) = self.table_next {
            state.table_next = value;
        }
        for number in &self.tables_removed {
            state.tables.remove(number);
        }
        for table in &self.tables_added {
            state.tables.insert(table.number, *table);
        }
    }
}

/// What replaying a MANIFEST found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replayed {
    /// The state after every edit that verified.
    pub state: ManifestState,
    /// The last edit failed its checks and was ignored: what, and where. A crash while it
    /// was appended leaves it so (never synced, so nothing relied on it), and so does damage
    /// to a synced edit, whose files the store then must not delete (see
    /// `Store::open`): the two cannot be told apart from the bytes.
    pub damaged_tail: Option<String>,
}

/// Replays the edits in a MANIFEST's bytes. A damaged last edit (damage with nothing valid
/// after it) is ignored and reported ([`Replayed::damaged_tail`]); damage followed by valid
/// edits is corruption.
pub fn replay_edits(bytes: &[u8], path: &Path) -> Result<Replayed, StorageError> {
    let mut reader = LogReader::new(bytes, EDIT_BYTES_MAX);
    let mut state = ManifestState::default();
    let mut edits = 0u64;
    let mut damaged_tail = None;
    loop {
        match reader.next_record() {
            Step::Record(record) => {
                if record.kind != EDIT_KIND {
                    return Err(StorageError::BadManifest {
                        path: path.to_owned(),
                        detail: format!(
                            "record of unknown kind {} at offset {}",
                            record.kind, record.offset
                        ),
                    });
                }
                let edit =
                    Edit::decode(record.payload).map_err(|detail| StorageError::BadManifest {
                        path: path.to_owned(),
                        detail: format!("edit at offset {}: {detail}", record.offset),
                    })?;
                edit.apply(&mut state);
                edits += 1;
            }
            Step::End => break,
            Step::Damaged(damage) if damage.resume.is_none() => {
                tracing::warn!(
                    path = %path.display(),
                    offset = damage.offset,
                    defect = %damage.defect,
                    "ignoring a damaged last MANIFEST edit (torn by a crash, or damaged since)"
                );
                damaged_tail = Some(format!(
                    "{}: the last edit, at offset {}, is damaged ({}) and was ignored",
                    path.display(),
                    damage.offset,
                    damage.defect
                ));
                break;
            }
            Step::Damaged(damage) => {
                return Err(StorageError::Corrupt {
                    path: path.to_owned(),
                    offset: damage.offset,
                    defect: damage.defect,
                })
            }
        }
    }
    state.check().map_err(|detail| StorageError::BadManifest {
        path: path.to_owned(),
        detail,
    })?;
    if edits == 0 {
        return Err(StorageError::BadManifest {
            path: path.to_owned(),
            detail: "no edit in the MANIFEST".to_owned(),
        });
    }
    Ok(Replayed {
        state,
        damaged_tail,
    })
}

/// The live MANIFEST, open for appending edits.
#[derive(Debug)]
pub struct Manifest {
    dir: PathBuf,
    number: u64,
    position: u64,
    sequence: u64,
    state: ManifestState,
}

impl Manifest {
    /// Reads CURRENT and the MANIFEST it names: its number and what replaying it found;
    /// `None` when there is no CURRENT.
    pub fn load<E: Env>(env: &mut E, dir: &Path) -> Result<Option<(u64, Replayed)>, StorageError> {
        let current = dir.join(CURRENT);
        if !env.exists(&current).map_err(io_error("stat", &current))? {
            return Ok(None);
        }
        let text = env.read(&current).map_err(io_error("read", &current))?;
        let name = std::str::from_utf8(&text)
            .ok()
            .and_then(|text| text.strip_suffix('\n'))
            .filter(|name| parse_manifest_name(name).is_some());
        let Some(name) = name else {
            // Damaged: say what it should hold, and which MANIFESTs are there to name (the
            // newest is the one a crash-free run made current last).
            let mut manifests: Vec<String> = env
                .list(dir)
                .unwrap_or_default()
                .into_iter()
                .filter(|name| parse_manifest_name(name).is_some())
                .collect();
            manifests.sort_by_key(|name| parse_manifest_name(name));
            let hint = match manifests.last() {
                Some(newest) => format!(
                    "; the directory holds {}: CURRENT most likely should read \"{newest}\\n\"",
                    manifests.join(", ")
                ),
                None => "; the directory holds no MANIFEST".to_owned(),
            };
            return Err(StorageError::BadManifest {
                path: current.clone(),
                detail: format!(
                    "damaged: {} bytes that are not \"MANIFEST-<number>\\n\"{hint}",
                    text.len()
                ),
            });
        };
        let number = parse_manifest_name(name).unwrap_or_default();
        let path = dir.join(name);
        let bytes = env.read(&path).map_err(io_error("read", &path))?;
        Ok(Some((number, replay_edits(&bytes, &path)?)))
    }

    /// Writes MANIFEST `number` holding `state`, syncs it and makes it current; the MANIFEST it
    /// replaces (`previous`) is then removed.
    pub fn create<E: Env>(
        env: &mut E,
        dir: &Path,
        number: u64,
        state: ManifestState,
        previous: Option<u64>,
    ) -> Result<Self, StorageError> {
        let mut manifest = Manifest {
            dir: dir.to_owned(),
            number,
            position: 0,
            sequence: 0,
            state,
        };
        let path = manifest.path();
        if env.exists(&path).map_err(io_error("stat", &path))? {
            // Left by a crash between writing it and switching CURRENT: never current.
            env.remove(&path).map_err(io_error("remove", &path))?;
        }
        let snapshot = Edit::snapshot(&manifest.state);
        manifest.append(env, &snapshot)?;
        let temp = dir.join(CURRENT_TEMP);
        let current = dir.join(CURRENT);
        let content = format!("{}\n", manifest_name(number));
        env.write_synced(&temp, content.as_bytes())
            .map_err(io_error("write", &temp))?;
        env.rename(&temp, &current)
            .map_err(io_error("rename", &temp))?;
        env.sync_dir(dir).map_err(io_error("fsync", dir))?;
        if let Some(previous) = previous.filter(|&previous| previous != number) {
            let old = dir.join(manifest_name(previous));
            if let Err(error) = env.remove(&old) {
                tracing::warn!(path = %old.display(), %error, "cannot remove an old MANIFEST");
            }
        }
        Ok(manifest)
    }

    /// A handle on MANIFEST `number` as replayed (`state`), for a WAL that cannot write
    /// (see `Wal::resume`): nothing may be appended to it.
    pub(crate) fn unwritable(dir: &Path, number: u64, state: ManifestState) -> Self {
        Manifest {
            dir: dir.to_owned(),
            number,
            position: u64::MAX,
            sequence: 0,
            state,
        }
    }

    /// The state after every edit so far.
    pub fn state(&self) -> &ManifestState {
        &self.state
    }

    /// This MANIFEST's number.
    pub fn number(&self) -> u64 {
        self.number
    }

    /// Appends `edit` durably; on success the state includes it. A MANIFEST past
    /// [`MANIFEST_BYTES_MAX`] is then replaced by a new one holding a snapshot.
    pub fn apply<E: Env>(&mut self, env: &mut E, edit: &Edit) -> Result<(), StorageError> {
        self.append(env, edit)?;
        edit.apply(&mut self.state);
        if self.position > MANIFEST_BYTES_MAX {
            *self = Manifest::create(
                env,
                &self.dir,
                self.number + 1,
                self.state.clone(),
                Some(self.number),
            )?;
        }
        Ok(())
    }

    fn path(&self) -> PathBuf {
        self.dir.join(manifest_name(self.number))
    }

    fn append<E: Env>(&mut self, env: &mut E, edit: &Edit) -> Result<(), StorageError> {
        let fields = edit.tables_added.len() + edit.tables_removed.len() + 5;
        let encoded = edit.encode();
        if fields > usize::from(u16::MAX) || encoded.len() > EDIT_BYTES_MAX {
            // Refused before anything is written: a reader would refuse it too.
            return Err(StorageError::BadManifest {
                path: self.path(),
                detail: format!(
                    "an edit of {fields} fields and {} bytes exceeds the format's limits",
                    encoded.len()
                ),
            });
        }
        let bytes = record::framed(self.position, EDIT_KIND, self.sequence + 1, &encoded);
        let path = self.path();
        env.append_synced(&path, &bytes)
            .map_err(io_error("append", &path))?;
        self.position += bytes.len() as u64;
        self.sequence += 1;
        Ok(())
    }
}
