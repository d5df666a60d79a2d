//! A served adapter's panels saved beside its files, so that loading it again (after the
//! adapter cache evicted it, or in a restarted process) reads 3.7 MB of ready panels instead
//! of mapping, parsing, checking, converting and packing 7.4 MB of f32 (issue 18's cold load;
//! llama.cpp's LoRA files are likewise converted once, ahead of time).
//!
//! [`ADAPTER_PANELS`] in the adapter's directory: [`MAGIC`], the header's length (u32 LE), the
//! header (JSON), then the buffer's values, little-endian. The header names what the panels were
//! made from: the size, times and inode of `adapter_model.safetensors`, a hash of
//! `adapter_config.json`'s text and of the base model's configuration, and the panel layout
//! ([`LAYOUT`], `kernels::adapter`'s lanes). Anything that differs, or a file that is short,
//! malformed or holds a value that is not finite, is a miss: the adapter is built from its
//! files as before and the panels saved again, once the weights file has stood unchanged for
//! [`SETTLE`] (so a rewrite of the same size within one tick of the file system's clock cannot
//! keep the key). Saving is best effort (a read-only directory only costs the next load the
//! conversion): written whole to a new temporary name, synced and renamed, so a reader never
//! sees half a file. Unix only (the key needs the inode and change time), little-endian only
//! (the values are the buffer's bytes as they are).

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::adapters::{ADAPTER_PANELS, ADAPTER_PANELS_SETTLE as SETTLE};
use crate::config::ModelConfig;
use crate::lora::{AdapterConfig, AdapterPanels, HostPanels, LoraAdapter, SavedPair};

const MAGIC: &[u8; 8] = b"OLPANELS";
/// The panel layout's version: raise it whenever `kernels::adapter` packs differently.
const LAYOUT: u32 = 1;
/// Largest header accepted (a pair is ~100 bytes of JSON; seven targets of 128 layers fit).
const MAX_HEADER_BYTES: usize = 1 << 20;
/// Temporary files of a save that a process did not finish (it exited first) are removed by
/// a later save once they are this old.
const STALE_PARTIAL: std::time::Duration = std::time::Duration::from_secs(600);
/// The writer's buffer (the values go through in one write).
const WRITE_BUFFER_BYTES: usize = 64 << 10;

/// What a saved buffer must have been made from to be used.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Source {
    weights_len: u64,
    weights_modified_ns: u64,
    /// Inode and change time: a file replaced by another of the same size and modification
    /// time (`cp -p`, `tar`) differs in them.
    weights_inode: u64,
    weights_changed_ns: u64,
    config_blake3: String,
    base_blake3: String,
    /// The panels chosen for serving when they were made (`OPENLEDGER_ADAPTER_PANELS`): a
    /// change of choice rebuilds them.
    panels: AdapterPanels,
}

impl Source {
    /// `weights` is the metadata of `adapter_model.safetensors`; `config_text` what
    /// `adapter_config.json` holds. `None` where files have no inode and change time (not
    /// Unix) and on big-endian hosts: there the panels are neither saved nor read.
    #[cfg(all(unix, target_endian = "little"))]
    pub(crate) fn new(weights: &std::fs::Metadata, config_text: &str, base: &ModelConfig) -> Option<Self> {
        use std::os::unix::fs::MetadataExt;
        let ns = |seconds: i64, nanos: i64| (seconds as u64).wrapping_mul(1_000_000_000).wrapping_add(nanos as u64);
        Some(Self {
            weights_len: weights.len(),
            weights_modified_ns: ns(weights.mtime(), weights.mtime_nsec()),
            weights_inode: weights.ino(),
            weights_changed_ns: ns(weights.ctime(), weights.ctime_nsec()),
            config_blake3: blake3::hash(config_text.as_bytes()).to_hex().to_string(),
            // Every field of the base's configuration (shapes, RoPE layout): the pairs' shapes
            // and `B`'s row order depend on them.
            base_blake3: blake3::hash(format!("{base:?}").as_bytes()).to_hex().to_string(),
            panels: AdapterPanels::chosen(),
        })
    }

    #[cfg(not(all(unix, target_endian = "little")))]
    pub(crate) fn new(_weights: &std::fs::Metadata, _config_text: &str, _base: &ModelConfig) -> Option<Self> {
        None
    }

    /// Whether the weights file changed less than [`SETTLE`] ago (by its times in the key),
    /// so that it could still change within the same tick of the file system's clock and keep
    /// this key.
    fn unsettled(&self) -> bool {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
        let last = self.weights_modified_ns.max(self.weights_changed_ns);
        now.saturating_sub(last) < SETTLE.as_nanos() as u64
    }
}

#[derive(Serialize, Deserialize)]
struct Header {
    layout: u32,
    lanes: usize,
    dtype: Dtype,
    source: Source,
    elements: usize,
    pairs: Vec<SavedPair>,
}

#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Dtype {
    Q8,
    F16,
    F32,
}

/// An element of a saved buffer: a float read and written as its little-endian bytes in place
/// (no [`Source`] exists on a big-endian host, so nothing is read or written there).
trait Element: bytemuck::Pod + Default {
    /// Whether every value of `values` is finite (a loop the compiler vectorizes: no early exit).
    fn all_finite(values: &[Self]) -> bool;
}

impl Element for half::f16 {
    fn all_finite(values: &[Self]) -> bool {
        values.iter().fold(true, |ok, v| ok & (v.to_bits() & 0x7c00 != 0x7c00))
    }
}

/// 8-bit panels: their factors and scales are checked by `LoraAdapter::from_panels`.
impl Element for u8 {
    fn all_finite(_: &[Self]) -> bool {
        true
    }
}

impl Element for f32 {
    fn all_finite(values: &[Self]) -> bool {
        values.iter().fold(true, |ok, v| ok & (v.to_bits() & 0x7f80_0000 != 0x7f80_0000))
    }
}

/// The adapter in `dir`'s saved panels, if they were made from `source` and read whole and
/// sound; `None` otherwise (why, at debug level).
pub(crate) fn load(
    dir: &Path,
    source: &Source,
    id: &str,
    config: &AdapterConfig,
    base: &ModelConfig,
) -> Option<LoraAdapter> {
    let path = dir.join(ADAPTER_PANELS);
    match read(&path, source, id, config, base) {
        Ok(adapter) => adapter,
        Err(error) => {
            tracing::debug!(path = %path.display(), %error, "saved adapter panels not used");
            None
        }
    }
}

fn read(
    path: &Path,
    source: &Source,
    id: &str,
    config: &AdapterConfig,
    base: &ModelConfig,
) -> std::result::Result<Option<LoraAdapter>, String> {
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    let mut head = [0u8; 12];
    file.read_exact(&mut head).map_err(|e| e.to_string())?;
    if &head[..8] != MAGIC {
        return Err("not a panels file".into());
    }
    let header_len = u32::from_le_bytes([head[8], head[9], head[10], head[11]]) as usize;
    if header_len > MAX_HEADER_BYTES {
        return Err(format!("header of {header_len} bytes"));
    }
    let mut header = vec![0u8; header_len];
    file.read_exact(&mut header).map_err(|e| e.to_string())?;
    let header: Header = serde_json::from_slice(&header).map_err(|e| e.to_string())?;
    if header.layout != LAYOUT || header.lanes != crate::kernels::adapter::LANES {
        return Err(format!("layout {} with {} lanes", header.layout, header.lanes));
    }
    if header.source != *source {
        return Ok(None);
    }
    let buffer = match header.dtype {
        Dtype::Q8 => HostPanels::Q8(read_values(&mut file, header.elements)?),
        Dtype::F16 => HostPanels::F16(read_values(&mut file, header.elements)?),
        Dtype::F32 => HostPanels::F32(read_values(&mut file, header.elements)?),
    };
    if file.read(&mut [0u8; 1]).map_err(|e| e.to_string())? != 0 {
        return Err("bytes after the values".into());
    }
    LoraAdapter::from_panels(id, config, base, buffer, &header.pairs).map(Some).map_err(|e| e.to_string())
}

/// `elements` finite values read from `file` into a buffer whose pages are present.
fn read_values<W: Element>(file: &mut File, elements: usize) -> std::result::Result<Vec<W>, String> {
    let bytes = elements.checked_mul(size_of::<W>()).ok_or("too many values")?;
    // Panels of the largest weights file accepted, held as f32 (rank padding included).
    if bytes as u64 > 2 * crate::adapters::MAX_ADAPTER_BYTES {
        return Err(format!("{bytes} bytes of values"));
    }
    if file.metadata().map_err(|e| e.to_string())?.len() < bytes as u64 {
        return Err("shorter than its values".into());
    }
    let mut out = crate::memory::prefaulted::<W>(elements);
    out.resize(elements, W::default());
    file.read_exact(bytemuck::cast_slice_mut(&mut out)).map_err(|e| e.to_string())?;
    if !W::all_finite(&out) {
        return Err("a value that is not finite".into());
    }
    Ok(out)
}

/// Saves `adapter`'s panels in `dir`, made from `source`, on a thread of its own (the load
/// that built them does not wait for the disk), unless the weights file changed less than
/// [`SETTLE`] ago or changed during the load (`weights` is its path); on failure says why at
/// debug level and leaves no file.
pub(crate) fn save(
    dir: &Path,
    weights: &Path,
    source: &Source,
    adapter: &LoraAdapter,
    base: &ModelConfig,
    config_text: &str,
) {
    let Some((buffer, pairs)) = adapter.panels() else { return };
    let unchanged =
        std::fs::metadata(weights).ok().and_then(|m| Source::new(&m, config_text, base)).as_ref() == Some(source);
    if !unchanged || source.unsettled() {
        tracing::debug!(path = %weights.display(), "adapter panels not saved: the weights changed moments ago");
        return;
    }
    let (dir, source) = (dir.to_path_buf(), source.clone());
    let spawned = std::thread::Builder::new().name("save-panels".into()).spawn(move || {
        remove_stale_partials(&dir);
        let path = dir.join(ADAPTER_PANELS);
        // A name no other writer has (processes on a shared volume may share a pid), created
        // new rather than truncated.
        let staging: PathBuf = dir.join(format!(".{ADAPTER_PANELS}.{:016x}.partial", rand::random::<u64>()));
        let written = write(&staging, &source, &buffer, &pairs).and_then(|()| std::fs::rename(&staging, &path));
        if let Err(error) = written {
            let _ = std::fs::remove_file(&staging);
            tracing::debug!(path = %path.display(), %error, "adapter panels not saved");
        }
    });
    if let Err(error) = spawned {
        tracing::debug!(%error, "adapter panels not saved: no thread");
    }
}

/// Removes temporary files of saves older than [`STALE_PARTIAL`] (left by processes that exited
/// while saving).
fn remove_stale_partials(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let prefix = format!(".{ADAPTER_PANELS}.");
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let old = || {
            entry
                .metadata()
                .ok()
                .and_then(|m| m.modified().ok())
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > STALE_PARTIAL)
        };
        if name.starts_with(&prefix) && name.ends_with(".partial") && old() {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

fn write(path: &Path, source: &Source, buffer: &HostPanels, pairs: &[SavedPair]) -> std::io::Result<()> {
    let (dtype, elements) = match buffer {
        HostPanels::Q8(values) => (Dtype::Q8, values.len()),
        HostPanels::F16(values) => (Dtype::F16, values.len()),
        HostPanels::F32(values) => (Dtype::F32, values.len()),
    };
    let header = Header {
        layout: LAYOUT,
        lanes: crate::kernels::adapter::LANES,
        dtype,
        source: source.clone(),
        elements,
        pairs: pairs.to_vec(),
    };
    let header = serde_json::to_vec(&header).map_err(std::io::Error::other)?;
    let file = std::fs::OpenOptions::new().write(true).create_new(true).open(path)?;
    let mut out = BufWriter::with_capacity(WRITE_BUFFER_BYTES, file);
    out.write_all(MAGIC)?;
    out.write_all(&(header.len() as u32).to_le_bytes())?;
    out.write_all(&header)?;
    match buffer {
        HostPanels::Q8(values) => out.write_all(values)?,
        HostPanels::F16(values) => out.write_all(bytemuck::cast_slice(values))?,
        HostPanels::F32(values) => out.write_all(bytemuck::cast_slice(values))?,
    }
    // On the disk before the rename makes it visible: a crash leaves the old state or the whole
    // file, never a named file whose values the disk has not got yet.
    out.into_inner().map_err(|e| e.into_error())?.sync_data()
}

#[cfg(test)]
mod tests {
    use crate::kernels::adapter::{AdapterWeight, Rows};

    /// Saved panels are read back as they were packed when they were saved: a change to the
    /// packing must raise [`super::LAYOUT`] (and then this test's version and expectation), or
    /// old files would be read in the new layout.
    #[test]
    fn the_panel_layout_is_the_one_its_version_names() {
        assert_eq!(super::LAYOUT, 1, "raise LAYOUT when the packing changes, then update this test");
        // A 3 × 5 matrix: one panel of eight rows, column after column, rows past the third zero.
        let values: Vec<f32> = (0..15).map(|i| i as f32).collect();
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let mut packed: Vec<f32> = Vec::new();
        assert!(f32::pack(3, &Rows { bytes: &bytes, cols: 5, order: None }, &mut packed));
        let expected: Vec<f32> =
            (0..5).flat_map(|c| (0..8).map(move |r| if r < 3 { (r * 5 + c) as f32 } else { 0.0 })).collect();
        assert_eq!(packed, expected);

        // 8-bit panels of a 1 × 16 matrix (blocks of 16): a 64-byte header holding the factor
        // (the power of two above the largest magnitude), then one panel block: 16 f16 scales,
        // then 4-byte groups, row `l`'s at `64g + 4l`, each quant plus 128.
        let values: Vec<f32> = (0..16).map(|i| i as f32 / 16.0).collect();
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let mut packed = Vec::new();
        assert!(crate::kernels::adapter::q8::pack(1, &Rows { bytes: &bytes, cols: 16, order: None }, &mut packed));
        assert_eq!(packed.len(), 64 + 32 + 4 * 64);
        assert_eq!(packed[..4], 1.0f32.to_le_bytes());
        assert_eq!(packed[64..66], half::f16::from_f32(0.9375 / 127.0).to_le_bytes());
        let quant = |j: usize| packed[64 + 32 + 64 * (j / 4) + j % 4];
        assert_eq!((quant(0), quant(1), quant(15)), (128, 128 + 8, 128 + 127));
    }
}
