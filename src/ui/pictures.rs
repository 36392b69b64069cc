//! Pictures the app shows — saved images on their nodes, the gallery's thumbnails, the viewer,
//! the sweep grid — decoded on the `amalgam-pictures` thread and kept as egui textures.
//!
//! A picture is asked for by path and size ([`Size::Thumb`] or [`Size::Full`]); the first ask
//! queues a decode and returns nothing, later frames get the texture. Output files are never
//! rewritten in place (every save takes a new name), so a path is a picture's identity. At most
//! [`KEEP_THUMBS`] thumbnails and [`KEEP_FULL`] full pictures are kept, least recently drawn
//! dropped first, so browsing a large output folder does not grow the GPU memory without end.
//!
//! The thread has its own queue, not the file thread's: a gigabyte import or a slow folder scan
//! must not keep pictures from appearing.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crossbeam_channel::{Receiver, Sender, unbounded};

use crate::format::raster::Raster;

/// Longest side of a thumbnail, in pixels.
pub const THUMB_SIDE: u32 = 160;
/// Thumbnails kept as textures.
pub const KEEP_THUMBS: usize = 300;
/// Full-size pictures kept as textures.
pub const KEEP_FULL: usize = 12;

/// Which rendition of a picture.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Size {
    Thumb,
    Full,
}

/// What the pictures thread does.
pub enum Job {
    Decode(PathBuf, Size),
    /// Compose pictures into one grid PNG (see [`super::sweep::compose_grid`]) and write it.
    SaveGrid {
        grid: super::sweep::GridPicture,
        folder: PathBuf,
        prefix: String,
    },
}

/// What it answers.
pub enum Done {
    Decoded(PathBuf, Size, Result<Raster, String>),
    GridSaved(Result<PathBuf, String>),
}

/// A picture as the UI has it.
#[derive(Clone)]
pub enum Slot {
    Loading,
    Ready(egui::TextureHandle),
    Failed(String),
}

/// The textures, the thread that decodes them, and which are in use.
pub struct Pictures {
    jobs: Sender<Job>,
    done: Receiver<Done>,
    slots: HashMap<(PathBuf, Size), Slot>,
    /// Frame number at which each picture was last asked for.
    used: HashMap<(PathBuf, Size), u64>,
    frame: u64,
    /// Results of grid saves, for the app to report.
    pub grids_saved: Vec<Result<PathBuf, String>>,
}

impl Pictures {
    pub fn spawn(wake: impl Fn() + Send + 'static) -> std::io::Result<Pictures> {
        let (job_tx, job_rx) = unbounded::<Job>();
        let (done_tx, done_rx) = unbounded::<Done>();
        std::thread::Builder::new()
            .name("amalgam-pictures".into())
            .spawn(move || {
                for job in job_rx {
                    let done = match job {
                        Job::Decode(path, size) => {
                            let r = decode(&path, size);
                            Done::Decoded(path, size, r)
                        }
                        Job::SaveGrid {
                            grid,
                            folder,
                            prefix,
                        } => Done::GridSaved(super::sweep::save_grid(&grid, &folder, &prefix)),
                    };
                    if done_tx.send(done).is_err() {
                        break;
                    }
                    wake();
                }
            })?;
        Ok(Pictures {
            jobs: job_tx,
            done: done_rx,
            slots: HashMap::new(),
            used: HashMap::new(),
            frame: 0,
            grids_saved: Vec::new(),
        })
    }

    /// Takes in what the thread finished (as textures) and drops the least recently used
    /// pictures beyond the limits. Once per frame.
    pub fn poll(&mut self, ctx: &egui::Context) {
        self.frame += 1;
        while let Ok(done) = self.done.try_recv() {
            match done {
                Done::Decoded(path, size, result) => {
                    let slot = match result {
                        Ok(r) => Slot::Ready(texture(ctx, &path, size, &r)),
                        Err(e) => Slot::Failed(e),
                    };
                    self.slots.insert((path, size), slot);
                }
                Done::GridSaved(r) => self.grids_saved.push(r),
            }
        }
        for (size, keep) in [(Size::Thumb, KEEP_THUMBS), (Size::Full, KEEP_FULL)] {
            let is_ready = |((_, s), slot): &(&(PathBuf, Size), &Slot)| {
                *s == size && matches!(slot, Slot::Ready(_))
            };
            // Counted every frame; the keys are copied only when there is something to drop.
            if self.slots.iter().filter(is_ready).count() <= keep {
                continue;
            }
            let mut ready: Vec<(u64, (PathBuf, Size))> = self
                .slots
                .iter()
                .filter(is_ready)
                .map(|(k, _)| (self.used.get(k).copied().unwrap_or(0), k.clone()))
                .collect();
            ready.sort_unstable_by_key(|(frame, _)| *frame);
            for (_, key) in ready.drain(..ready.len() - keep) {
                self.slots.remove(&key);
                self.used.remove(&key);
            }
        }
    }

    /// The picture at `path`, decoding it on first ask.
    pub fn get(&mut self, path: &Path, size: Size) -> Slot {
        let key = (path.to_path_buf(), size);
        self.used.insert(key.clone(), self.frame);
        if let Some(slot) = self.slots.get(&key) {
            return slot.clone();
        }
        self.slots.insert(key, Slot::Loading);
        let _ = self.jobs.send(Job::Decode(path.to_path_buf(), size));
        Slot::Loading
    }

    /// The texture, when it is ready.
    pub fn texture(&mut self, path: &Path, size: Size) -> Option<egui::TextureHandle> {
        match self.get(path, size) {
            Slot::Ready(t) => Some(t),
            _ => None,
        }
    }

    /// Whether a picture of `path` is held (decoded, decoding or failed).
    pub fn knows(&self, path: &Path) -> bool {
        self.slots.keys().any(|(p, _)| p == path)
    }

    /// Whether any decode is still pending (tests wait on it).
    pub fn loading(&self) -> bool {
        self.slots.values().any(|s| matches!(s, Slot::Loading))
    }

    /// Forgets a picture whose file is gone (after a delete), so a new file under the same
    /// name is decoded again.
    pub fn forget(&mut self, gone: &Path) {
        self.slots.retain(|(p, _), _| p != gone);
        self.used.retain(|(p, _), _| p != gone);
    }

    /// Asks the thread to compose and save a grid.
    pub fn save_grid(&self, grid: super::sweep::GridPicture, folder: PathBuf, prefix: String) {
        let _ = self.jobs.send(Job::SaveGrid {
            grid,
            folder,
            prefix,
        });
    }
}

/// Reads and decodes one picture (a thumbnail is shrunk here, off the UI thread).
fn decode(path: &Path, size: Size) -> Result<Raster, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let raster = Raster::decode_png(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(match size {
        Size::Thumb => raster.thumbnail(THUMB_SIDE),
        Size::Full => raster,
    })
}

/// A texture of `raster`; small pictures (latent previews, thumbnails of tiny images) are drawn
/// with nearest-neighbour filtering so enlarged pixels stay sharp.
pub fn texture(ctx: &egui::Context, name: &Path, size: Size, r: &Raster) -> egui::TextureHandle {
    let image =
        egui::ColorImage::from_rgba_unmultiplied([r.width as usize, r.height as usize], &r.rgba);
    let options = if r.width.max(r.height) < 128 {
        egui::TextureOptions::NEAREST
    } else {
        egui::TextureOptions::LINEAR
    };
    ctx.load_texture(format!("{}#{size:?}", name.display()), image, options)
}

/// A picture's size on screen to fit in `max` without enlarging past `upscale` ×.
pub fn fit(texture: &egui::TextureHandle, max: egui::Vec2, upscale: f32) -> egui::Vec2 {
    let size = texture.size_vec2();
    let scale = (max.x / size.x).min(max.y / size.y).min(upscale);
    size * scale.max(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_pictures_beyond_the_limit_drop_the_least_recently_drawn() {
        let dir = tempfile::tempdir().expect("tmp");
        let paths: Vec<PathBuf> = (0..KEEP_FULL + 3)
            .map(|i| {
                let p = dir.path().join(format!("{i}.png"));
                let r = Raster::filled(4, 4, [i as u8, 0, 0, 255]);
                let png =
                    crate::format::png::encode_rgb8(4, 4, &r.to_rgb8(), &[], true).expect("png");
                std::fs::write(&p, png).expect("write");
                p
            })
            .collect();
        let ctx = egui::Context::default();
        let mut pictures = Pictures::spawn(|| {}).expect("thread");
        let start = std::time::Instant::now();
        // The pictures are drawn one after another, each until it is decoded (a viewer paging
        // through a folder), so the first are the least recently drawn.
        for p in &paths {
            while !matches!(pictures.get(p, Size::Full), Slot::Ready(_)) {
                assert!(start.elapsed().as_secs() < 30, "decodes did not finish");
                std::thread::sleep(std::time::Duration::from_millis(1));
                pictures.poll(&ctx);
            }
            pictures.poll(&ctx);
        }
        pictures.poll(&ctx);
        let held: Vec<bool> = paths.iter().map(|p| pictures.knows(p)).collect();
        assert_eq!(held.iter().filter(|h| **h).count(), KEEP_FULL, "{held:?}");
        assert!(held[paths.len() - 1], "the most recently drawn is kept");
        assert!(!held[0], "the least recently drawn is dropped");
        assert!(matches!(
            pictures.get(&dir.path().join("missing.png"), Size::Thumb),
            Slot::Loading
        ));
    }
}
