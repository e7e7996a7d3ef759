//! The stream decoder over arbitrary receive boundaries: frames split across reads, many
//! frames in one read, frames larger than a receive buffer, misaligned receives, hostile
//! streams and pool exhaustion.

use proptest::prelude::*;
use vortex_vbp::codec::Request;
use vortex_vbp::pool::{BufferPool, PoolConfig, SizeClass};
use vortex_vbp::samples;
use vortex_vbp::stream::{StreamDecoder, StreamError};
use vortex_vbp::validator::{FrameError, LayoutValidator};

const BUFFER_BYTES: usize = 4096;

fn pool() -> BufferPool {
    BufferPool::new(PoolConfig {
        buffer_bytes: BUFFER_BYTES,
        buffer_count: 8,
        // Smaller than the big frames below, which take large buffers.
        medium_buffer_bytes: 2 * BUFFER_BYTES,
        medium_buffer_count: 1,
        large_buffer_bytes: 64 * 1024,
        large_buffer_count: 2,
    })
    .unwrap()
}

/// A stream of sample frames, one big search among them (larger than a receive buffer).
fn frames() -> Vec<Vec<u8>> {
    let mut frames: Vec<Vec<u8>> = samples::requests()
        .into_iter()
        .enumerate()
        .map(|(index, request)| request.encode(index as u64).unwrap().to_vec())
        .collect();
    frames.push(
        Request::Search(samples::search(2000, true))
            .encode(999)
            .unwrap()
            .to_vec(),
    );
    frames
}

struct Feed {
    decoder: StreamDecoder,
    pool: BufferPool,
    out: Vec<Vec<u8>>,
}

impl Feed {
    fn new() -> Self {
        let pool = pool();
        Feed {
            decoder: StreamDecoder::new(pool.clone(), LayoutValidator::default()),
            pool,
            out: Vec::new(),
        }
    }

    /// Receives `bytes` into a fresh buffer, at the decoder's offset or at `forced_offset`.
    fn receive(&mut self, bytes: &[u8], forced_offset: Option<usize>) -> Result<(), StreamError> {
        let offset = forced_offset.unwrap_or_else(|| self.decoder.receive_offset());
        let mut lease = self.pool.lease(SizeClass::Standard).unwrap();
        lease.as_mut_slice()[offset..offset + bytes.len()].copy_from_slice(bytes);
        self.decoder.push(lease, offset..offset + bytes.len())?;
        while let Some(frame) = self.decoder.next_frame()? {
            assert_eq!(frame.bytes().as_ptr() as usize % 16, 0, "frame not aligned");
            // Every frame out of the decoder passes full validation.
            LayoutValidator::default().request(frame.bytes()).unwrap();
            self.out.push(frame.bytes().to_vec());
        }
        Ok(())
    }
}

/// Splits `stream` at `cuts` (positions), receive chunks at most `BUFFER_BYTES - 16`.
fn chunks(stream: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    let mut positions: Vec<usize> = cuts.iter().map(|cut| cut % (stream.len() + 1)).collect();
    positions.push(0);
    positions.push(stream.len());
    let mut step = 0;
    while step < stream.len() {
        positions.push(step);
        step += BUFFER_BYTES - 16;
    }
    positions.sort_unstable();
    positions.dedup();
    positions
        .windows(2)
        .map(|window| stream[window[0]..window[1]].to_vec())
        .filter(|chunk| !chunk.is_empty())
        .collect()
}

#[test]
fn many_frames_in_one_read_are_not_copied() {
    let frames = frames();
    let small: Vec<Vec<u8>> = frames[..frames.len() - 1].to_vec();
    let stream: Vec<u8> = small.concat();
    assert!(stream.len() < BUFFER_BYTES);
    let mut feed = Feed::new();
    feed.receive(&stream, None).unwrap();
    assert_eq!(feed.out, small);
    let stats = feed.decoder.stats();
    assert_eq!(stats.in_place, small.len() as u64);
    assert_eq!(stats.assembled + stats.copied_misaligned, 0);
}

#[test]
fn a_frame_split_at_every_byte_is_reassembled() {
    let frame = samples::requests()[5].encode(1).unwrap().to_vec();
    for split in 1..frame.len() {
        let mut feed = Feed::new();
        feed.receive(&frame[..split], None).unwrap();
        assert!(feed.out.is_empty());
        assert!(feed.decoder.has_partial_frame());
        feed.receive(&frame[split..], None).unwrap();
        assert_eq!(feed.out, vec![frame.clone()], "split at {split}");
        assert_eq!(feed.decoder.stats().assembled, 1);
    }
}

#[test]
fn one_byte_at_a_time() {
    let frames = frames();
    let stream = frames.concat();
    let mut feed = Feed::new();
    for byte in &stream {
        feed.receive(std::slice::from_ref(byte), None).unwrap();
    }
    assert_eq!(feed.out, frames);
}

#[test]
fn a_frame_larger_than_a_buffer_uses_a_large_one() {
    let big = Request::Search(samples::search(5000, false))
        .encode(1)
        .unwrap()
        .to_vec();
    assert!(big.len() > BUFFER_BYTES);
    let mut feed = Feed::new();
    for chunk in big.chunks(1000) {
        feed.receive(chunk, None).unwrap();
    }
    assert_eq!(feed.out, vec![big]);
    assert_eq!(
        feed.pool.stats(SizeClass::Large).free,
        2,
        "returned after use"
    );
}

/// A frame being assembled is lent out and its rest received straight into it, in as
/// many receives as the socket gives: no receive buffer is taken, the frame comes out
/// whole, and nothing may be pushed while it is out.
#[test]
fn a_lent_partial_frame_is_finished_by_receives_straight_into_it() {
    let big = Request::Search(samples::search(5000, false))
        .encode(1)
        .unwrap()
        .to_vec();
    let small = samples::requests()[0].encode(2).unwrap().to_vec();
    let mut feed = Feed::new();
    feed.receive(&big[..100], None).unwrap();
    assert!(
        feed.decoder.lend_partial(big.len()).is_none(),
        "fewer missing than asked"
    );
    let mut lent = feed
        .decoder
        .lend_partial(1)
        .expect("a frame with a known length");
    assert!(feed.decoder.has_partial_frame());
    assert!(feed.decoder.lend_partial(1).is_none(), "lent once");
    assert_eq!(lent.missing().len(), big.len() - 100);
    let free = feed.pool.stats(SizeClass::Standard).free;
    let lease = feed.pool.lease(SizeClass::Standard).unwrap();
    assert_eq!(
        feed.decoder.push(lease, 0..16),
        Err(StreamError::NotDrained),
        "nothing is pushed while the frame is lent"
    );
    let mut at = 100;
    for piece in [1usize, 999, 7000] {
        let end = (at + piece).min(big.len());
        lent.missing()[..end - at].copy_from_slice(&big[at..end]);
        feed.decoder.return_partial(lent, end - at);
        assert!(feed.decoder.next_frame().unwrap().is_none());
        lent = feed.decoder.lend_partial(1).unwrap();
        at = end;
    }
    let rest = big.len() - at;
    assert_eq!(lent.missing().len(), rest);
    lent.missing().copy_from_slice(&big[at..]);
    feed.decoder.return_partial(lent, rest);
    let frame = feed.decoder.next_frame().unwrap().expect("the whole frame");
    assert_eq!(frame.bytes(), &big[..]);
    drop(frame);
    assert_eq!(feed.pool.stats(SizeClass::Standard).free, free);
    assert_eq!(feed.decoder.stats().bytes, big.len() as u64);
    // The stream goes on after it, aligned.
    feed.receive(&small, None).unwrap();
    assert_eq!(feed.out, vec![small]);
    assert_eq!(
        feed.decoder.stats().copied_misaligned,
        0,
        "the bytes received directly count towards the next frame's alignment"
    );
    assert_eq!(feed.pool.stats(SizeClass::Large).free, 2);
}

/// A lent frame dropped (its connection killed) returns its buffer to the pool.
#[test]
fn a_dropped_lent_frame_returns_its_buffer() {
    let big = Request::Search(samples::search(5000, false))
        .encode(1)
        .unwrap()
        .to_vec();
    let mut feed = Feed::new();
    let pool = feed.pool.clone();
    feed.receive(&big[..3000], None).unwrap();
    assert_eq!(pool.stats(SizeClass::Large).free, 1);
    let lent = feed.decoder.lend_partial(1).unwrap();
    drop(feed);
    assert_eq!(
        pool.stats(SizeClass::Large).free,
        1,
        "the lent frame holds it"
    );
    drop(lent);
    assert_eq!(pool.stats(SizeClass::Large).free, 2);
}

#[test]
fn misaligned_receives_still_give_aligned_frames() {
    let frames = frames();
    let small: Vec<Vec<u8>> = frames[..frames.len() - 1].to_vec();
    let stream = small.concat();
    let mut feed = Feed::new();
    feed.receive(&stream, Some(3)).unwrap();
    assert_eq!(feed.out, small);
    assert_eq!(feed.decoder.stats().copied_misaligned, small.len() as u64);
}

#[test]
fn garbage_is_a_fatal_framing_error() {
    let mut feed = Feed::new();
    let error = feed
        .receive(b"GET / HTTP/1.1\r\nHost: example\r\n\r\n", None)
        .unwrap_err();
    assert!(
        matches!(error, StreamError::Framing(FrameError::BadMagic(_))),
        "{error}"
    );
    assert_eq!(feed.decoder.next_frame().unwrap_err(), StreamError::Failed);
    let lease = feed.pool.lease(SizeClass::Standard).unwrap();
    assert_eq!(
        feed.decoder.push(lease, 0..1).unwrap_err(),
        StreamError::Failed
    );
}

#[test]
fn an_oversized_frame_is_refused_from_its_header() {
    let pool = pool();
    let mut decoder = StreamDecoder::new(pool.clone(), LayoutValidator::new(4096));
    let big = Request::Search(samples::search(2000, false))
        .encode(1)
        .unwrap();
    let mut lease = pool.lease(SizeClass::Standard).unwrap();
    lease.as_mut_slice()[..64].copy_from_slice(&big[..64]);
    decoder.push(lease, 0..64).unwrap();
    assert!(matches!(
        decoder.next_frame(),
        Err(StreamError::Framing(FrameError::TooLarge { .. }))
    ));
}

#[test]
fn pool_exhaustion_is_retryable() {
    let pool = BufferPool::new(PoolConfig {
        buffer_bytes: 4096,
        buffer_count: 2,
        medium_buffer_bytes: 8192,
        medium_buffer_count: 1,
        large_buffer_bytes: 8192,
        large_buffer_count: 1,
    })
    .unwrap();
    let mut decoder = StreamDecoder::new(pool.clone(), LayoutValidator::default());
    let frame = samples::requests()[5].encode(1).unwrap().to_vec();
    let mut lease = pool.lease(SizeClass::Standard).unwrap();
    lease.as_mut_slice()[..10].copy_from_slice(&frame[..10]);
    // Hold the only other standard buffer: the decoder cannot start an assembly.
    let hog = pool.lease(SizeClass::Standard);
    decoder.push(lease, 0..10).unwrap();
    assert!(matches!(decoder.next_frame(), Err(StreamError::Pool(_))));
    drop(hog);
    // Retried once a buffer is back: nothing was lost.
    assert!(decoder.next_frame().unwrap().is_none());
    let mut rest = pool.lease(SizeClass::Standard).unwrap();
    rest.as_mut_slice()[..frame.len() - 10].copy_from_slice(&frame[10..]);
    decoder.push(rest, 0..frame.len() - 10).unwrap();
    let decoded = decoder.next_frame().unwrap().unwrap();
    assert_eq!(decoded.bytes(), &frame[..]);
}

#[test]
fn push_before_drain_is_refused() {
    let pool = pool();
    let mut decoder = StreamDecoder::new(pool.clone(), LayoutValidator::default());
    let frame = samples::requests()[0].encode(1).unwrap();
    let mut lease = pool.lease(SizeClass::Standard).unwrap();
    lease.as_mut_slice()[..frame.len()].copy_from_slice(&frame);
    decoder.push(lease, 0..frame.len()).unwrap();
    let second = pool.lease(SizeClass::Standard).unwrap();
    assert_eq!(
        decoder.push(second, 0..1).unwrap_err(),
        StreamError::NotDrained
    );
}

#[test]
fn a_locked_frame_keeps_its_buffer_after_the_decoder_moves_on() {
    let pool = pool();
    let mut decoder = StreamDecoder::new(pool.clone(), LayoutValidator::default());
    let upsert = samples::requests()[5].encode(1).unwrap();
    let mut lease = pool.lease(SizeClass::Standard).unwrap();
    let id = lease.id();
    lease.as_mut_slice()[..upsert.len()].copy_from_slice(&upsert);
    decoder.push(lease, 0..upsert.len()).unwrap();
    let frame = decoder.next_frame().unwrap().unwrap();
    let lock = frame.buffer().lock_for_persistence();
    drop(frame);
    assert!(decoder.next_frame().unwrap().is_none());
    assert_eq!(
        pool.state(SizeClass::Standard, id),
        Some(vortex_vbp::pool::BufferState::Locked)
    );
    assert_eq!(lock.buffer().as_slice()[..upsert.len()], upsert[..]);
    lock.release();
    assert_eq!(
        pool.state(SizeClass::Standard, id),
        Some(vortex_vbp::pool::BufferState::Free)
    );
}

proptest! {
    /// Any split of the stream into receives yields exactly the frames sent, all aligned,
    /// none copied for alignment when receives honour `receive_offset`.
    #[test]
    fn any_chunking_gives_back_the_frames(cuts in proptest::collection::vec(any::<usize>(), 0..40)) {
        let frames = frames();
        let stream = frames.concat();
        let mut feed = Feed::new();
        for chunk in chunks(&stream, &cuts) {
            feed.receive(&chunk, None).unwrap();
        }
        prop_assert_eq!(&feed.out, &frames);
        prop_assert_eq!(feed.decoder.stats().copied_misaligned, 0);
        prop_assert_eq!(feed.decoder.stats().bytes, stream.len() as u64);
        prop_assert!(!feed.decoder.has_partial_frame());
        prop_assert_eq!(feed.pool.stats(SizeClass::Standard).free, 8, "every buffer returned");
    }

    /// The same with receives at arbitrary offsets: frames are still right and aligned.
    #[test]
    fn any_chunking_at_any_offset_gives_back_the_frames(
        cuts in proptest::collection::vec(any::<usize>(), 0..40),
        offsets in proptest::collection::vec(0usize..16, 64),
    ) {
        let frames = frames();
        let stream = frames.concat();
        let mut feed = Feed::new();
        for (index, chunk) in chunks(&stream, &cuts).into_iter().enumerate() {
            feed.receive(&chunk, Some(offsets[index % offsets.len()])).unwrap();
        }
        prop_assert_eq!(&feed.out, &frames);
    }

    /// Random bytes: frames or a framing error, never a panic.
    #[test]
    fn random_streams_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..3000), cut in 1usize..500) {
        let mut feed = Feed::new();
        for chunk in bytes.chunks(cut) {
            match feed.receive(chunk, None) {
                Ok(()) => {}
                Err(StreamError::Framing(_)) => break,
                Err(StreamError::Pool(_)) => break,
                Err(other) => prop_assert!(false, "{other}"),
            }
        }
    }
}
