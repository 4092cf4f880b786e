//! The store's memory when `DATA_DIR=:memory:`: redb's storage as fixed-size chunks. redb's own
//! in-memory backend is one `Vec` that is reallocated as the database grows, copying the whole
//! database each time (and zero-filling the new part byte by byte); chunks grow without
//! moving what is stored.

use std::{
    io,
    sync::{PoisonError, RwLock},
};

use redb::StorageBackend;

/// Bytes per chunk: large enough that a chunk holds many pages, small enough that growing by
/// one costs little.
const CHUNK: usize = 1 << 20;

#[derive(Debug, Default)]
pub(super) struct ChunkedMemory {
    state: RwLock<State>,
}

/// Every byte past `len` is zero, so growing hands out zeros without writing them.
#[derive(Debug, Default)]
struct State {
    chunks: Vec<Box<[u8]>>,
    len: usize,
}

fn out_of_range() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "beyond the end of the in-memory store",
    )
}

fn poisoned<T>(_: PoisonError<T>) -> io::Error {
    io::Error::other("the in-memory store's lock is poisoned")
}

impl State {
    /// `offset..offset + len` within the stored length, as a start offset.
    fn span(&self, offset: u64, len: usize) -> Result<usize, io::Error> {
        let start = usize::try_from(offset).map_err(|_| out_of_range())?;
        match start.checked_add(len) {
            Some(end) if end <= self.len => Ok(start),
            _ => Err(out_of_range()),
        }
    }

    /// The pieces of chunks that `start..start + len` covers, in order: (chunk, from, to).
    fn pieces(start: usize, len: usize) -> impl Iterator<Item = (usize, usize, usize)> {
        let mut at = start;
        let end = start + len;
        std::iter::from_fn(move || {
            (at < end).then(|| {
                let (chunk, from) = (at / CHUNK, at % CHUNK);
                let to = CHUNK.min(from + (end - at));
                at += to - from;
                (chunk, from, to)
            })
        })
    }
}

impl StorageBackend for ChunkedMemory {
    fn len(&self) -> Result<u64, io::Error> {
        let state = self.state.read().map_err(poisoned)?;
        Ok(state.len as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        let state = self.state.read().map_err(poisoned)?;
        let start = state.span(offset, out.len())?;
        let mut written = 0;
        for (chunk, from, to) in State::pieces(start, out.len()) {
            out[written..written + (to - from)].copy_from_slice(&state.chunks[chunk][from..to]);
            written += to - from;
        }
        Ok(())
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        let mut state = self.state.write().map_err(poisoned)?;
        let len = usize::try_from(len).map_err(|_| out_of_range())?;
        let chunks = len.div_ceil(CHUNK);
        if len < state.len {
            // What is cut off reads as zeros if the store grows again.
            state.chunks.truncate(chunks);
            if let Some(last) = state.chunks.last_mut()
                && len % CHUNK != 0
            {
                last[len % CHUNK..].fill(0);
            }
        }
        while state.chunks.len() < chunks {
            state.chunks.push(vec![0; CHUNK].into_boxed_slice());
        }
        state.len = len;
        Ok(())
    }

    fn sync_data(&self) -> Result<(), io::Error> {
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        let mut state = self.state.write().map_err(poisoned)?;
        let start = state.span(offset, data.len())?;
        let mut read = 0;
        for (chunk, from, to) in State::pieces(start, data.len()) {
            state.chunks[chunk][from..to].copy_from_slice(&data[read..read + (to - from)]);
            read += to - from;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use redb::StorageBackend;

    use super::{CHUNK, ChunkedMemory};

    fn read(memory: &ChunkedMemory, offset: usize, len: usize) -> Vec<u8> {
        let mut out = vec![0xAA; len];
        memory.read(offset as u64, &mut out).expect("in range");
        out
    }

    #[test]
    fn writes_read_back_across_chunk_boundaries() {
        let memory = ChunkedMemory::default();
        memory.set_len((3 * CHUNK + 10) as u64).expect("grows");
        let data: Vec<u8> = (0..=255)
            .cycle()
            .take(2 * CHUNK + 7)
            .map(|b| b as u8)
            .collect();
        memory.write((CHUNK - 3) as u64, &data).expect("in range");
        assert_eq!(read(&memory, CHUNK - 3, data.len()), data);
        assert_eq!(read(&memory, 0, 4), vec![0; 4]);
        assert_eq!(memory.len().expect("len"), (3 * CHUNK + 10) as u64);
    }

    #[test]
    fn grown_space_is_zero_even_after_a_shrink() {
        let memory = ChunkedMemory::default();
        memory.set_len((CHUNK + 100) as u64).expect("grows");
        memory.write(CHUNK as u64, &[7; 100]).expect("in range");
        memory.write(10, &[9; 10]).expect("in range");
        memory.set_len((CHUNK + 50) as u64).expect("shrinks");
        memory.set_len(15).expect("shrinks");
        memory.set_len((CHUNK + 100) as u64).expect("grows again");
        assert_eq!(read(&memory, 10, 5), vec![9; 5]);
        assert_eq!(read(&memory, 15, 5), vec![0; 5]);
        assert_eq!(read(&memory, CHUNK, 100), vec![0; 100]);
    }

    #[test]
    fn nothing_is_read_or_written_past_the_end() {
        let memory = ChunkedMemory::default();
        memory.set_len(100).expect("grows");
        let mut out = [0; 2];
        assert!(memory.read(99, &mut out).is_err());
        assert!(memory.write(99, &[1, 2]).is_err());
        assert!(memory.write(u64::MAX, &[1]).is_err());
        assert!(memory.read(u64::MAX - 1, &mut out).is_err());
        memory.write(98, &[1, 2]).expect("the last two bytes");
    }
}
