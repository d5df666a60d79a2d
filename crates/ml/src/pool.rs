//! The compute pool the forward pass splits its work over: `run(tasks, f)` calls `f(0..tasks)`
//! across the pool's threads and returns when all are done.
//!
//! Today this is the current rayon pool (the engine runs its scheduler inside one sized by
//! `EngineConfig::threads`).

use rayon::prelude::*;

/// Threads a `run` spreads over.
#[allow(dead_code)] // used once the kernels size their tasks by it
pub(crate) fn threads() -> usize {
    rayon::current_num_threads()
}

/// Calls `f(i)` for every `i` in `0..tasks`, in parallel, and waits for all of them.
#[allow(dead_code)] // attention and LoRA move onto it
pub(crate) fn run(tasks: usize, f: impl Fn(usize) + Sync) {
    match tasks {
        0 => {}
        1 => f(0),
        _ => (0..tasks).into_par_iter().with_max_len(1).for_each(&f),
    }
}

/// Calls `f(c, chunk)` for each `chunk`-long piece of `data` (the last may be shorter), in
/// parallel: every task writes its own disjoint part of one output.
pub(crate) fn for_each_chunk<T: Send>(data: &mut [T], chunk: usize, f: impl Fn(usize, &mut [T]) + Sync) {
    if data.len() <= chunk {
        if !data.is_empty() {
            f(0, data);
        }
        return;
    }
    data.par_chunks_mut(chunk).with_max_len(1).enumerate().for_each(|(c, part)| f(c, part));
}
