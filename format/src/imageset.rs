//! A whole image directory: typed access for readers, ordered commits for writers.
//!
//! `ImageSet::open` reads `inventory.img` first and refuses what cryo cannot read (v1 images,
//! images without `fdinfo_per_id`, compressed pages). The accessors then open the per-task
//! images by CRIU's file names (`core-<tid>.img`, `mm-<pid>.img`, `fdinfo-<files_id>.img`...)
//! and decode them with required-field checks. Images CRIU writes only when they have content
//! (`files.img`, `pipes-data.img`, `fdinfo-N.img`) read as empty when absent; per-task images
//! that every task has (`core`, `mm`, `ids`, `fs`) are errors when absent.
//!
//! `ImageSet::create` gives an `ImageSetWriter`. Its `finish` writes `inventory.img` **last**:
//! every other image is complete (fsynced and renamed into place) before it, so the presence
//! of the inventory marks a complete dump, and `open` of a directory without one fails with
//! `MissingInventory` — a dump that died half-way is never mistaken for a checkpoint.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use prost::Message;

use crate::image::{ImageError, ImageFile};
use crate::magic::{IMAGES_V1_1, Magic, well_known};
use crate::memory::{MemoryError, MemoryView, PagemapId};
use crate::pagemap::{Pagemap, PagemapError};
use crate::pages_writer::{PagesWriteError, PagesWriter};
use crate::schema::{
    CoreEntry, FdinfoEntry, FileEntry, FsEntry, InventoryEntry, MmEntry, PipeDataEntry,
    PstreeEntry, TaskKobjIdsEntry,
};
use crate::writer::{self, ImageWriter, WriteError};

/// File name of the inventory.
pub const INVENTORY: &str = "inventory.img";

/// Errors of opening or writing an image directory.
#[derive(Debug, thiserror::Error)]
pub enum ImageSetError {
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Pagemap(#[from] PagemapError),
    #[error(transparent)]
    Memory(#[from] MemoryError),
    #[error(transparent)]
    Write(#[from] WriteError),
    #[error(transparent)]
    PagesWrite(#[from] PagesWriteError),
    #[error("{dir} has no inventory.img: not an image directory, or an unfinished dump")]
    MissingInventory { dir: PathBuf },
    #[error("inventory {path}: img_version {version} is not supported (cryo reads 2, CRIU v1.1)")]
    Version { path: PathBuf, version: u32 },
    #[error("inventory {path}: fdinfo_per_id is not set; images this old are not supported")]
    NotPerId { path: PathBuf },
    #[error(
        "inventory {path}: compress = {mode}: compressed pages (criu-dev 2026) are not supported"
    )]
    Compressed { path: PathBuf, mode: u32 },
    #[error("pstree {path} is empty: no root task")]
    EmptyPstree { path: PathBuf },
    #[error("cannot create image directory {dir}")]
    CreateDir {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} already exists: the directory holds a finished dump")]
    AlreadyComplete { path: PathBuf },
}

/// An image directory open for reading.
#[derive(Debug, Clone)]
pub struct ImageSet {
    dir: PathBuf,
    inventory: InventoryEntry,
}

impl ImageSet {
    /// Opens `dir`, reading and checking its inventory.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, ImageSetError> {
        let dir = dir.as_ref().to_path_buf();
        let path = dir.join(INVENTORY);
        let image = match ImageFile::open_expect(&path, well_known::inventory()) {
            Err(e) if e.is_not_found() => return Err(ImageSetError::MissingInventory { dir }),
            other => other?,
        };
        let inventory: InventoryEntry = image.decode_one()?;
        check_inventory(&path, &inventory)?;
        Ok(ImageSet { dir, inventory })
    }

    /// Starts writing a new image set in `dir` (created if needed).
    pub fn create(dir: impl AsRef<Path>) -> Result<ImageSetWriter, ImageSetError> {
        ImageSetWriter::create(dir)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn inventory(&self) -> &InventoryEntry {
        &self.inventory
    }

    /// Path of an image in the directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Opens image `name`, which must be of type `magic`.
    pub fn image(&self, name: &str, magic: &'static Magic) -> Result<ImageFile, ImageSetError> {
        Ok(ImageFile::open_expect(self.path(name), magic)?)
    }

    /// Opens image `name`, absent meaning empty.
    pub fn image_or_empty(
        &self,
        name: &str,
        magic: &'static Magic,
    ) -> Result<ImageFile, ImageSetError> {
        Ok(ImageFile::open_or_empty(self.path(name), magic)?)
    }

    /// Every entry of image `name` as `M` (absent = none), for images without an accessor
    /// (`tty-info.img`, `seccomp.img`, `timens-0.img`...).
    pub fn entries<M: Message + Default>(
        &self,
        name: &str,
        magic: &'static Magic,
    ) -> Result<Vec<M>, ImageSetError> {
        Ok(self.image_or_empty(name, magic)?.decode_all()?)
    }

    /// The single entry of image `name` as `M`; the image must exist.
    pub fn entry<M: Message + Default>(
        &self,
        name: &str,
        magic: &'static Magic,
    ) -> Result<M, ImageSetError> {
        Ok(self.image(name, magic)?.decode_one()?)
    }

    /// All processes, root first.
    pub fn pstree(&self) -> Result<Vec<PstreeEntry>, ImageSetError> {
        Ok(self
            .image("pstree.img", well_known::pstree())?
            .decode_all()?)
    }

    /// The root process of the tree.
    pub fn root(&self) -> Result<PstreeEntry, ImageSetError> {
        self.pstree()?
            .into_iter()
            .next()
            .ok_or_else(|| ImageSetError::EmptyPstree {
                path: self.path("pstree.img"),
            })
    }

    /// Registers and task state of thread `tid`.
    pub fn core(&self, tid: u32) -> Result<CoreEntry, ImageSetError> {
        let name = format!("core-{tid}.img");
        Ok(self.image(&name, well_known::core())?.decode_one()?)
    }

    /// Address space of process `pid` (VMAs, mm fields, auxv).
    pub fn mm(&self, pid: u32) -> Result<MmEntry, ImageSetError> {
        let name = format!("mm-{pid}.img");
        Ok(self.image(&name, well_known::mm())?.decode_one()?)
    }

    /// Kernel object ids of process `pid` (`files_id` selects its fdinfo image).
    pub fn ids(&self, pid: u32) -> Result<TaskKobjIdsEntry, ImageSetError> {
        let name = format!("ids-{pid}.img");
        Ok(self.image(&name, well_known::ids())?.decode_one()?)
    }

    /// cwd, root and umask of process `pid`.
    pub fn fs(&self, pid: u32) -> Result<FsEntry, ImageSetError> {
        let name = format!("fs-{pid}.img");
        Ok(self.image(&name, well_known::fs())?.decode_one()?)
    }

    /// Every open file object (`files.img`; absent = none).
    pub fn files(&self) -> Result<Vec<FileEntry>, ImageSetError> {
        Ok(self
            .image_or_empty("files.img", well_known::files())?
            .decode_all()?)
    }

    /// The descriptors of fd table `files_id` (`fdinfo-<files_id>.img`; absent = none).
    pub fn fdinfo(&self, files_id: u32) -> Result<Vec<FdinfoEntry>, ImageSetError> {
        let name = format!("fdinfo-{files_id}.img");
        Ok(self
            .image_or_empty(&name, well_known::fdinfo())?
            .decode_all()?)
    }

    /// Pipe contents: each `pipe_data_entry` with its bytes (`pipes-data.img`; absent = none).
    pub fn pipes_data(&self) -> Result<Vec<(PipeDataEntry, Vec<u8>)>, ImageSetError> {
        let image = self.image_or_empty("pipes-data.img", well_known::pipes_data())?;
        let entries = image.decode_with_extra::<PipeDataEntry>()?;
        Ok(entries.into_iter().map(|(e, d)| (e, d.to_vec())).collect())
    }

    /// The pagemap of process `pid`.
    pub fn pagemap(&self, pid: u32) -> Result<Pagemap, ImageSetError> {
        Ok(Pagemap::open(self.path(&PagemapId::Pid(pid).file_name()))?)
    }

    /// The dumped memory of process `pid`, following the parent chain.
    pub fn memory(&self, pid: u32) -> Result<MemoryView, ImageSetError> {
        Ok(MemoryView::open(&self.dir, PagemapId::Pid(pid))?)
    }

    /// The dumped contents of shared memory segment `shmid`.
    pub fn shmem(&self, shmid: u64) -> Result<MemoryView, ImageSetError> {
        Ok(MemoryView::open(&self.dir, PagemapId::Shmem(shmid))?)
    }
}

fn check_inventory(path: &Path, inv: &InventoryEntry) -> Result<(), ImageSetError> {
    if inv.img_version != IMAGES_V1_1 {
        return Err(ImageSetError::Version {
            path: path.to_path_buf(),
            version: inv.img_version,
        });
    }
    if inv.fdinfo_per_id != Some(true) {
        return Err(ImageSetError::NotPerId {
            path: path.to_path_buf(),
        });
    }
    if let Some(mode) = inv.compress.filter(|&m| m != 0) {
        return Err(ImageSetError::Compressed {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

/// Writer of a new image directory. Images are committed one by one as their writers finish;
/// `finish` commits the inventory last.
#[derive(Debug)]
pub struct ImageSetWriter {
    dir: PathBuf,
}

impl ImageSetWriter {
    fn create(dir: impl AsRef<Path>) -> Result<Self, ImageSetError> {
        let dir = dir.as_ref().to_path_buf();
        fs::create_dir_all(&dir).map_err(|source| ImageSetError::CreateDir {
            dir: dir.clone(),
            source,
        })?;
        let inventory = dir.join(INVENTORY);
        if inventory.exists() {
            return Err(ImageSetError::AlreadyComplete { path: inventory });
        }
        Ok(ImageSetWriter { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A streaming writer for image `name` of type `magic`.
    pub fn writer(&self, name: &str, magic: &'static Magic) -> Result<ImageWriter, ImageSetError> {
        Ok(ImageWriter::create(self.dir.join(name), magic)?)
    }

    /// Writes image `name` with the given entries and commits it.
    pub fn write_all<'m, M: Message + 'm>(
        &self,
        name: &str,
        magic: &'static Magic,
        entries: impl IntoIterator<Item = &'m M>,
    ) -> Result<PathBuf, ImageSetError> {
        let mut w = self.writer(name, magic)?;
        for entry in entries {
            w.write(entry)?;
        }
        Ok(w.finish()?)
    }

    /// Writes a single-entry image and commits it.
    pub fn write_one<M: Message>(
        &self,
        name: &str,
        magic: &'static Magic,
        entry: &M,
    ) -> Result<PathBuf, ImageSetError> {
        self.write_all(name, magic, std::iter::once(entry))
    }

    pub fn write_pstree(&self, tree: &[PstreeEntry]) -> Result<PathBuf, ImageSetError> {
        self.write_all("pstree.img", well_known::pstree(), tree)
    }

    pub fn write_core(&self, tid: u32, core: &CoreEntry) -> Result<PathBuf, ImageSetError> {
        self.write_one(&format!("core-{tid}.img"), well_known::core(), core)
    }

    pub fn write_mm(&self, pid: u32, mm: &MmEntry) -> Result<PathBuf, ImageSetError> {
        self.write_one(&format!("mm-{pid}.img"), well_known::mm(), mm)
    }

    pub fn write_ids(&self, pid: u32, ids: &TaskKobjIdsEntry) -> Result<PathBuf, ImageSetError> {
        self.write_one(&format!("ids-{pid}.img"), well_known::ids(), ids)
    }

    pub fn write_fs(&self, pid: u32, fs: &FsEntry) -> Result<PathBuf, ImageSetError> {
        self.write_one(&format!("fs-{pid}.img"), well_known::fs(), fs)
    }

    pub fn write_files(&self, files: &[FileEntry]) -> Result<PathBuf, ImageSetError> {
        self.write_all("files.img", well_known::files(), files)
    }

    pub fn write_fdinfo(
        &self,
        files_id: u32,
        fds: &[FdinfoEntry],
    ) -> Result<PathBuf, ImageSetError> {
        self.write_all(&format!("fdinfo-{files_id}.img"), well_known::fdinfo(), fds)
    }

    /// Writes `pipes-data.img`: each entry's `bytes` must equal its data's length.
    pub fn write_pipes_data(
        &self,
        pipes: &[(PipeDataEntry, &[u8])],
    ) -> Result<PathBuf, ImageSetError> {
        let mut w = self.writer("pipes-data.img", well_known::pipes_data())?;
        for (entry, data) in pipes {
            w.write_with_extra(entry, data)?;
        }
        Ok(w.finish()?)
    }

    /// Links this set to the previous pre-dump round: a symlink named `parent` pointing at
    /// `target`. A relative target (`../round-1`) is resolved from this directory and keeps
    /// the series movable, as CRIU recommends.
    pub fn link_parent(&self, target: impl AsRef<Path>) -> Result<PathBuf, ImageSetError> {
        let link = self.dir.join("parent");
        std::os::unix::fs::symlink(target.as_ref(), &link).map_err(|source| {
            ImageSetError::Write(WriteError::Create {
                path: link.clone(),
                source,
            })
        })?;
        Ok(link)
    }

    /// A writer for the pagemap + pages pair of `id`.
    pub fn pages(&self, id: PagemapId, pages_id: u32) -> Result<PagesWriter, ImageSetError> {
        Ok(PagesWriter::create(&self.dir, id, pages_id)?)
    }

    /// Commits the inventory, marking the set complete. Call after every other image has
    /// been finished.
    pub fn finish(self, inventory: &InventoryEntry) -> Result<PathBuf, ImageSetError> {
        let path = self.dir.join(INVENTORY);
        check_inventory(&path, inventory)?;
        let mut w = ImageWriter::create(&path, well_known::inventory())?;
        w.write(inventory)?;
        let path = w.finish()?;
        writer::sync_dir(&path).map_err(|source| WriteError::Io {
            path: path.clone(),
            source,
        })?;
        Ok(path)
    }
}
