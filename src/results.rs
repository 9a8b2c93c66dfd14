// SPDX-License-Identifier: MIT
//! Results in frame pixels: where the cells of the label map fall on the frame, and the
//! `results-location` JSON line of a frame (docs/results.md) with every instance's mask
//! as a COCO compressed RLE at full frame resolution.
//!
//! The label map lives on the model's output grid and covers a rectangle of the frame (the
//! letterbox padding excluded). [`MaskGeometry`] is the one mapping between frame pixels
//! and grid cells: the label map, the boxes, the seeds and the JSON masks all go through it,
//! so they agree pixel for pixel. Each axis is mapped on its own (nearest neighbour with the
//! edges aligned), which is what makes the RLE cheap: a frame column samples a single grid
//! column, so its runs are that grid column's runs stretched by the row spans, and the frame
//! columns that sample the same grid column repeat them. The mask is never materialised at
//! frame resolution.
//!
//! This module knows nothing about GStreamer.
//!
//! ```
//! use gstinstseg::results::{MaskGeometry, encode_rle};
//!
//! // A 2 x 2 label map stretched over a 4 x 4 frame: region 1 is the top-left quarter.
//! let geometry = MaskGeometry {
//!     grid_width: 2, grid_height: 2,
//!     rect_x: 0, rect_y: 0, rect_width: 4, rect_height: 4,
//!     frame_width: 4, frame_height: 4,
//! };
//! assert_eq!(geometry.cell(3, 1), Some((1, 0)));
//! assert_eq!(geometry.column_span(1, 2), (2, 4));
//! // Column-major counts [0, 2, 2, 2, 10], as pycocotools' mask.encode writes them.
//! assert_eq!(encode_rle(&[1, 0, 0, 0], 1, &geometry, &mut Vec::new()), "02208");
//! ```

use std::fs::File;
use std::io::{self, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::preprocess::Placement;
use crate::segment::Segmentation;

/// How the label map sits on the frame: a `grid_width` x `grid_height` grid stretched over
/// the rectangle (`rect_x`, `rect_y`, `rect_width`, `rect_height`) of a `frame_width` x
/// `frame_height` frame, all in frame pixels.
///
/// Frame pixel offset `o` inside the rectangle samples grid index `o * grid / rect` (integer
/// division) on each axis: nearest neighbour with the first and last pixels on the first
/// and last cells. When the grid is finer than the rectangle, some cells are sampled by no
/// pixel; their spans are empty.
///
/// The grid must not be empty and the rectangle must lie inside the frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaskGeometry {
    pub grid_width: u32,
    pub grid_height: u32,
    pub rect_x: u32,
    pub rect_y: u32,
    pub rect_width: u32,
    pub rect_height: u32,
    pub frame_width: u32,
    pub frame_height: u32,
}

impl MaskGeometry {
    /// Grid cell sampled by frame pixel (`x`, `y`); `None` outside the rectangle.
    pub fn cell(&self, x: u32, y: u32) -> Option<(u32, u32)> {
        Some((
            sampled_index(x, self.rect_x, self.rect_width, self.grid_width)?,
            sampled_index(y, self.rect_y, self.rect_height, self.grid_height)?,
        ))
    }

    /// Frame columns `[start, end)` that sample grid columns `[first, last_exclusive)`:
    /// exactly the pixels [`cell`](Self::cell) maps into them, so adjacent spans tile the
    /// rectangle. Needs `first <= last_exclusive <= grid_width`.
    pub fn column_span(&self, first: u32, last_exclusive: u32) -> (u32, u32) {
        (
            self.column_boundary(first),
            self.column_boundary(last_exclusive),
        )
    }

    /// Frame rows `[start, end)` that sample grid rows `[first, last_exclusive)`, as
    /// [`column_span`](Self::column_span) does for columns.
    pub fn row_span(&self, first: u32, last_exclusive: u32) -> (u32, u32) {
        (self.row_boundary(first), self.row_boundary(last_exclusive))
    }

    /// Frame pixel at the centre of grid cell (`gx`, `gy`), where a seed is reported.
    ///
    /// It is the middle pixel of the cell's spans, so that it maps back to the cell (the
    /// centre of the cell's continuous footprint may fall on a pixel that samples its
    /// neighbour). When no pixel samples the cell (grid finer than the rectangle), the
    /// same formula gives the pixel whose footprint holds the cell.
    pub fn cell_center(&self, gx: u32, gy: u32) -> (u32, u32) {
        (
            span_middle(self.column_span(gx, gx + 1)),
            span_middle(self.row_span(gy, gy + 1)),
        )
    }

    fn column_boundary(&self, gx: u32) -> u32 {
        first_sampling_pixel(gx, self.rect_x, self.rect_width, self.grid_width)
    }

    fn row_boundary(&self, gy: u32) -> u32 {
        first_sampling_pixel(gy, self.rect_y, self.rect_height, self.grid_height)
    }

    /// The checks every encoding relies on; breaking one is a bug of the caller.
    fn assert_consistent(&self, labels: &[u8]) {
        assert!(
            self.grid_width > 0 && self.grid_height > 0,
            "empty label map grid in {self:?}"
        );
        assert_eq!(
            labels.len() as u64,
            u64::from(self.grid_width) * u64::from(self.grid_height),
            "label map size does not match {self:?}"
        );
        assert!(
            u64::from(self.rect_x) + u64::from(self.rect_width) <= u64::from(self.frame_width)
                && u64::from(self.rect_y) + u64::from(self.rect_height)
                    <= u64::from(self.frame_height),
            "mask rectangle outside the frame in {self:?}"
        );
        // pycocotools' counts are 32-bit.
        assert!(
            u64::from(self.frame_width) * u64::from(self.frame_height) <= u64::from(u32::MAX),
            "frame too large for a COCO RLE in {self:?}"
        );
    }
}

/// Grid index sampled by frame coordinate `pixel` on one axis, `None` outside the rectangle.
fn sampled_index(pixel: u32, rect_start: u32, rect_len: u32, grid_len: u32) -> Option<u32> {
    let offset = pixel.checked_sub(rect_start).filter(|&o| o < rect_len)?;
    Some((u64::from(offset) * u64::from(grid_len) / u64::from(rect_len)) as u32)
}

/// First frame coordinate that samples grid index `index` or a later one: the smallest
/// offset `o` with `o * grid_len / rect_len >= index`, that is `ceil(index * rect_len /
/// grid_len)`. For `index == grid_len` it is the end of the rectangle.
fn first_sampling_pixel(index: u32, rect_start: u32, rect_len: u32, grid_len: u32) -> u32 {
    let offset = (u64::from(index) * u64::from(rect_len)).div_ceil(u64::from(grid_len));
    rect_start + offset as u32
}

/// Middle pixel of `[start, end)`; `start - 1` for an empty span, the pixel just before the
/// first one that samples past the cell.
fn span_middle((start, end): (u32, u32)) -> u32 {
    (start + end).saturating_sub(1) / 2
}

/// COCO compressed RLE (the `counts` string) of the frame-resolution mask of `region`: the
/// frame pixels that sample a cell of `labels` equal to `region`, exactly as pycocotools'
/// `mask.encode` writes it for a `frame_height` x `frame_width` mask.
///
/// `labels` is the row-major `grid_width` x `grid_height` label map; `scratch` is reused
/// between calls so that encoding does not allocate once it has grown (the returned string
/// aside).
///
/// The work is one byte-wise pass over the label map to bound the region, a scan of the
/// grid columns inside that bound, and per frame column only appending the runs of its grid
/// column: it grows with the number of runs, not with the frame's pixels.
///
/// # Panics
///
/// When `labels` does not have the grid's size, the grid is empty, the rectangle leaves
/// the frame, or the frame has more than `u32::MAX` pixels.
pub fn encode_rle(
    labels: &[u8],
    region: u8,
    geometry: &MaskGeometry,
    scratch: &mut Vec<u32>,
) -> String {
    geometry.assert_consistent(labels);
    let height = geometry.frame_height;
    let (columns, rows) = region_bounds(labels, region, geometry.grid_width);
    let mut rle = RunBuilder::new(scratch, geometry.grid_height as usize + 1);
    let (left, right) = geometry.column_span(columns.start, columns.end);
    rle.push_run(false, left * height);
    for gx in columns {
        let (start, end) = geometry.column_span(gx, gx + 1);
        if start < end {
            let transitions = rle.scan_column(labels, region, geometry, gx, rows.clone());
            rle.push_column(transitions, height, end - start);
        }
    }
    rle.push_run(false, (geometry.frame_width - right) * height);
    compress_counts(rle.counts())
}

/// Grid columns and rows that hold `region` (empty ranges when none does), so that the
/// column scans skip the rest. Rows are tested with `contains`, which the standard library
/// runs a word at a time on bytes: most rows miss a given region.
fn region_bounds(labels: &[u8], region: u8, grid_width: u32) -> (Range<u32>, Range<u32>) {
    let mut bounds: Option<(Range<u32>, Range<u32>)> = None;
    for (gy, row) in (0..).zip(labels.chunks_exact(grid_width as usize)) {
        if !row.contains(&region) {
            continue;
        }
        let matches = |&label: &u8| label == region;
        let (Some(first), Some(last)) =
            (row.iter().position(matches), row.iter().rposition(matches))
        else {
            continue;
        };
        let (first, end) = (first as u32, last as u32 + 1);
        let (columns, rows) = bounds.get_or_insert((first..end, gy..gy + 1));
        columns.start = columns.start.min(first);
        columns.end = columns.end.max(end);
        rows.end = gy + 1;
    }
    bounds.unwrap_or((0..0, 0..0))
}

/// Column-major run lengths under construction, laid out in the caller's scratch vector.
///
/// The front of the vector holds the transitions of the grid column being copied (room for
/// one per grid row plus the one that closes the column); the counts follow them. Keeping
/// both in one vector lets a single caller-owned buffer make encoding allocation-free.
struct RunBuilder<'a> {
    scratch: &'a mut Vec<u32>,
    counts_start: usize,
}

impl<'a> RunBuilder<'a> {
    fn new(scratch: &'a mut Vec<u32>, transitions_capacity: usize) -> Self {
        scratch.clear();
        scratch.resize(transitions_capacity, 0);
        // Counts always start with a run of zeros, empty when the first pixel is set.
        scratch.push(0);
        Self {
            scratch,
            counts_start: transitions_capacity,
        }
    }

    fn counts(&self) -> &[u32] {
        &self.scratch[self.counts_start..]
    }

    /// Appends `len` pixels inside (`true`) or outside the mask, merging with the last run
    /// when it has the same value: runs continue from the bottom of one frame column into
    /// the top of the next.
    fn push_run(&mut self, inside: bool, len: u32) {
        if len == 0 {
            return;
        }
        let last = self.scratch.len() - 1;
        let last_inside = (last - self.counts_start) % 2 == 1;
        if last_inside == inside {
            self.scratch[last] += len;
        } else {
            self.scratch.push(len);
        }
    }

    /// Stores, from the front of the scratch vector, the frame rows at which a frame column
    /// sampling grid column `gx` enters or leaves `region`, which occurs in no grid row
    /// outside `rows`; returns how many. They do not decrease; equal ones bound grid rows
    /// that no frame row samples, and [`push_run`](Self::push_run) drops the empty runs
    /// between them. The count is even: the row after `rows`, outside the mask, closes the
    /// column.
    fn scan_column(
        &mut self,
        labels: &[u8],
        region: u8,
        geometry: &MaskGeometry,
        gx: u32,
        rows: Range<u32>,
    ) -> usize {
        let width = geometry.grid_width as usize;
        let column = labels[rows.start as usize * width + gx as usize..]
            .iter()
            .step_by(width)
            .take(rows.len())
            .map(|&label| label == region)
            .chain([false]);
        let mut transitions = 0;
        for (gy, inside) in (rows.start..=rows.end).zip(column) {
            if inside != (transitions % 2 == 1) {
                self.scratch[transitions] = geometry.row_boundary(gy);
                transitions += 1;
            }
        }
        transitions
    }

    /// Appends `repeat` frame columns of `height` pixels with the stored `transitions`.
    fn push_column(&mut self, transitions: usize, height: u32, repeat: u32) {
        if transitions == 0 {
            self.push_run(false, height * repeat);
            return;
        }
        for _ in 0..repeat {
            let mut run_start = 0;
            for index in 0..transitions {
                let row = self.scratch[index];
                self.push_run(index % 2 == 1, row - run_start);
                run_start = row;
            }
            self.push_run(false, height - run_start);
        }
    }
}

/// pycocotools' `rleToString`: from the fourth count on, each count is stored as its
/// difference to the count two before (the previous run of the same value), then every
/// value is written like signed LEB128 but with 5 data bits per character, bit 5 marking
/// that more follow, offset into the printable range from `'0'` (48) to `'o'` (111).
fn compress_counts(counts: &[u32]) -> String {
    let mut text = String::with_capacity(2 * counts.len());
    for (index, &count) in counts.iter().enumerate() {
        let mut value = i64::from(count);
        if index > 2 {
            value -= i64::from(counts[index - 2]);
        }
        loop {
            let chunk = (value & 0x1f) as u8;
            value >>= 5;
            let more = if chunk & 0x10 != 0 {
                value != -1
            } else {
                value != 0
            };
            text.push(char::from(b'0' + (chunk | if more { 0x20 } else { 0 })));
            if !more {
                break;
            }
        }
    }
    text
}

/// One instance in frame pixels, as the metadata, the overlay and the JSON line give it.
#[derive(Debug, Clone, PartialEq)]
pub struct FrameInstance {
    /// Value of the instance in the label map.
    pub region: u8,
    pub track_id: u64,
    pub class_id: u32,
    pub label: String,
    pub confidence: f64,
    /// tau, the threshold that defined the mask.
    pub threshold: f64,
    /// x, y, width, height of the exclusive mask's box.
    pub bbox: [u32; 4],
    /// x, y.
    pub seed: [u32; 2],
    /// Label-map cells of the exclusive mask inside the picture.
    pub area: u32,
    /// Frames since the track was born.
    pub age: u32,
}

/// Where the picture lies on the output grid: the grid cells whose centre falls on the
/// picture, letterbox padding excluded (x, y, width, height in cells; never empty).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GridCrop {
    pub x: usize,
    pub y: usize,
    pub width: usize,
    pub height: usize,
}

impl GridCrop {
    /// The crop of a `grid_width` x `grid_height` output grid at integer `stride` whose input
    /// holds the picture at `placement`, and how the cropped label map sits on the frame.
    pub fn of(
        placement: &Placement,
        stride: u32,
        grid_width: u32,
        grid_height: u32,
        frame_width: u32,
        frame_height: u32,
    ) -> (GridCrop, MaskGeometry) {
        let stride = f64::from(stride);
        let cells = |start: u32, len: u32, grid: u32| {
            let first = (f64::from(start) / stride - 0.5).ceil().max(0.0) as u32;
            let end = (f64::from(start + len) / stride - 0.5).ceil() as u32;
            let first = first.min(grid - 1);
            (
                first as usize,
                end.clamp(first + 1, grid) as usize - first as usize,
            )
        };
        let (x, width) = cells(placement.x, placement.width, grid_width);
        let (y, height) = cells(placement.y, placement.height, grid_height);
        let geometry = MaskGeometry {
            grid_width: width as u32,
            grid_height: height as u32,
            rect_x: 0,
            rect_y: 0,
            rect_width: frame_width,
            rect_height: frame_height,
            frame_width,
            frame_height,
        };
        (
            GridCrop {
                x,
                y,
                width,
                height,
            },
            geometry,
        )
    }
}

#[cfg(test)]
impl FrameInstance {
    /// An instance of class 3 in a 2x1 box, for tests.
    pub(crate) fn example(region: u8, track_id: u64, label: &str, confidence: f64) -> Self {
        FrameInstance {
            region,
            track_id,
            class_id: 3,
            label: label.into(),
            confidence,
            threshold: 0.5,
            bbox: [0, 1, 2, 1],
            seed: [1, 1],
            area: 1,
            age: 0,
        }
    }
}

/// One inferred frame's result in frame pixels: the label map cropped to the picture and the
/// instances, in acceptance order.
#[derive(Debug, Clone, PartialEq)]
pub struct FrameResult {
    /// `geometry.grid_width` x `geometry.grid_height`, row-major; 0 is background.
    pub labels: Vec<u8>,
    pub geometry: MaskGeometry,
    pub instances: Vec<FrameInstance>,
}

impl FrameResult {
    /// Crops the label map of `segmentation` to `crop` and maps every instance through
    /// `geometry` to frame pixels; `class_names` names class ids 1..=C.
    pub fn new(
        segmentation: &Segmentation,
        crop: GridCrop,
        geometry: MaskGeometry,
        class_names: &[String],
    ) -> FrameResult {
        let mut labels = Vec::with_capacity(crop.width * crop.height);
        for row in segmentation.labels[crop.y * segmentation.width..]
            .chunks_exact(segmentation.width)
            .take(crop.height)
        {
            labels.extend_from_slice(&row[crop.x..crop.x + crop.width]);
        }
        let mut areas = [0u32; 256];
        for &label in &labels {
            areas[usize::from(label)] += 1;
        }
        // A grid span, clipped to the crop, relative to it.
        let clip = |start: u32, len: u32, offset: usize, size: usize| {
            let first = (start as usize).clamp(offset, offset + size) - offset;
            let last = ((start + len) as usize).clamp(offset, offset + size) - offset;
            (first as u32, last as u32)
        };
        let instances = segmentation
            .instances
            .iter()
            .map(|instance| {
                let (gx0, gx1) = clip(instance.bbox.x, instance.bbox.width, crop.x, crop.width);
                let (gy0, gy1) = clip(instance.bbox.y, instance.bbox.height, crop.y, crop.height);
                let (x0, x1) = geometry.column_span(gx0, gx1);
                let (y0, y1) = geometry.row_span(gy0, gy1);
                let seed_x = (instance.seed.x as usize).clamp(crop.x, crop.x + crop.width - 1);
                let seed_y = (instance.seed.y as usize).clamp(crop.y, crop.y + crop.height - 1);
                let (seed_x, seed_y) =
                    geometry.cell_center((seed_x - crop.x) as u32, (seed_y - crop.y) as u32);
                FrameInstance {
                    region: instance.region,
                    track_id: instance.track_id,
                    class_id: instance.class_id,
                    label: class_names
                        .get(instance.class_id as usize - 1)
                        .cloned()
                        .unwrap_or_default(),
                    confidence: f64::from(instance.confidence),
                    threshold: instance.threshold,
                    bbox: [x0, y0, x1 - x0, y1 - y0],
                    seed: [seed_x, seed_y],
                    area: areas[usize::from(instance.region)],
                    age: instance.age,
                }
            })
            .collect();
        FrameResult {
            labels,
            geometry,
            instances,
        }
    }
}

/// A frame's JSON line (see [`write_frame`]).
#[derive(Serialize)]
struct FrameLine<'a> {
    frame: u64,
    pts: Option<u64>,
    width: u32,
    height: u32,
    carried: bool,
    instances: Vec<InstanceLine<'a>>,
}

#[derive(Serialize)]
struct InstanceLine<'a> {
    track_id: u64,
    class_id: u32,
    label: &'a str,
    /// At f32 precision, the model's; serde_json writes a non-finite one as `null`.
    score: f32,
    bbox: [u32; 4],
    seed: [u32; 2],
    mask: MaskLine,
}

#[derive(Serialize)]
struct MaskLine {
    /// Height, width.
    size: [u32; 2],
    /// COCO compressed RLE.
    counts: String,
}

/// Writes the `results-location` line of frame number `frame` (docs/results.md): one JSON
/// object and a newline, each mask encoded by [`encode_rle`] at frame resolution. `carried`:
/// the result repeats the last inferred frame's.
///
/// # Panics
///
/// As [`encode_rle`].
pub fn write_frame<W: Write>(
    out: &mut W,
    frame: u64,
    pts: Option<u64>,
    carried: bool,
    result: &FrameResult,
    scratch: &mut Vec<u32>,
) -> io::Result<()> {
    let geometry = &result.geometry;
    let line = FrameLine {
        frame,
        pts,
        width: geometry.frame_width,
        height: geometry.frame_height,
        carried,
        instances: result
            .instances
            .iter()
            .map(|instance| InstanceLine {
                track_id: instance.track_id,
                class_id: instance.class_id,
                label: &instance.label,
                score: instance.confidence as f32,
                bbox: instance.bbox,
                seed: instance.seed,
                mask: MaskLine {
                    size: [geometry.frame_height, geometry.frame_width],
                    counts: encode_rle(&result.labels, instance.region, geometry, scratch),
                },
            })
            .collect(),
    };
    serde_json::to_writer(&mut *out, &line)?;
    out.write_all(b"\n")
}

/// The `results-location` file. Each frame's line is written through to the file in one
/// write as the frame is published, so a line is on disk before its buffer leaves the element
/// and a failing disk is reported at the frame it failed on.
#[derive(Debug)]
pub struct ResultsFile {
    path: PathBuf,
    file: File,
    line: Vec<u8>,
    scratch: Vec<u32>,
}

impl ResultsFile {
    /// Creates (or truncates) the file at `path`.
    pub fn create(path: &Path) -> io::Result<Self> {
        Ok(Self {
            path: path.to_owned(),
            file: File::create(path)?,
            line: Vec::new(),
            scratch: Vec::new(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes one frame's line (see [`write_frame`]).
    pub fn write(
        &mut self,
        frame: u64,
        pts: Option<u64>,
        carried: bool,
        result: &FrameResult,
    ) -> io::Result<()> {
        self.line.clear();
        write_frame(
            &mut self.line,
            frame,
            pts,
            carried,
            result,
            &mut self.scratch,
        )?;
        self.file.write_all(&self.line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geometry(grid: (u32, u32), rect: (u32, u32, u32, u32), frame: (u32, u32)) -> MaskGeometry {
        MaskGeometry {
            grid_width: grid.0,
            grid_height: grid.1,
            rect_x: rect.0,
            rect_y: rect.1,
            rect_width: rect.2,
            rect_height: rect.3,
            frame_width: frame.0,
            frame_height: frame.1,
        }
    }

    fn identity(width: u32, height: u32) -> MaskGeometry {
        geometry((width, height), (0, 0, width, height), (width, height))
    }

    /// Identity, upscale (a 1280 x 720 frame letterboxed into a square input: the grid rows
    /// of the padding are cropped away; and the same grid on a rectangle inside a larger
    /// frame), downscale and odd sizes.
    fn sample_geometries() -> Vec<MaskGeometry> {
        vec![
            identity(7, 5),
            geometry((64, 36), (0, 0, 1280, 720), (1280, 720)),
            geometry((64, 64), (320, 180, 1280, 720), (1920, 1080)),
            geometry((64, 64), (3, 5, 40, 30), (50, 40)),
            geometry((7, 5), (2, 1, 33, 17), (37, 19)),
            geometry((5, 3), (0, 0, 7, 4), (7, 4)),
            geometry((1, 1), (4, 2, 1, 1), (9, 3)),
        ]
    }

    /// xorshift64*: deterministic label maps without a dependency.
    struct Random(u64);

    impl Random {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, bound: u32) -> u32 {
            (self.next() >> 32) as u32 % bound
        }
    }

    /// The mask at frame resolution through [`MaskGeometry::cell`], encoded the way
    /// pycocotools' `rleEncode` does it.
    fn naive_counts(labels: &[u8], region: u8, geometry: &MaskGeometry) -> Vec<u32> {
        let mut counts = Vec::new();
        let (mut previous, mut run) = (false, 0);
        for x in 0..geometry.frame_width {
            for y in 0..geometry.frame_height {
                let inside = geometry.cell(x, y).is_some_and(|(gx, gy)| {
                    labels[(gy * geometry.grid_width + gx) as usize] == region
                });
                if inside != previous {
                    counts.push(run);
                    (previous, run) = (inside, 0);
                }
                run += 1;
            }
        }
        counts.push(run);
        counts
    }

    #[test]
    fn identity_maps_pixels_to_cells() {
        let geometry = identity(7, 5);
        for (x, y) in [(0, 0), (6, 4), (3, 2)] {
            assert_eq!(geometry.cell(x, y), Some((x, y)));
            assert_eq!(geometry.cell_center(x, y), (x, y));
        }
        assert_eq!(geometry.cell(7, 0), None);
        assert_eq!(geometry.cell(0, 5), None);
        assert_eq!(geometry.column_span(2, 5), (2, 5));
        assert_eq!(geometry.row_span(0, 5), (0, 5));
    }

    #[test]
    fn upscale_stretches_cells_over_the_rectangle() {
        let geometry = geometry((64, 64), (320, 180, 1280, 720), (1920, 1080));
        assert_eq!(geometry.cell(319, 500), None);
        assert_eq!(geometry.cell(320, 180), Some((0, 0)));
        assert_eq!(geometry.cell(339, 191), Some((0, 0)));
        assert_eq!(geometry.cell(340, 192), Some((1, 1)));
        assert_eq!(geometry.cell(1599, 899), Some((63, 63)));
        assert_eq!(geometry.cell(1600, 899), None);
        assert_eq!(geometry.cell(1599, 900), None);
        // 720 / 64 = 11.25 rows per cell: spans of 12 and 11 rows.
        assert_eq!(geometry.row_span(0, 1), (180, 192));
        assert_eq!(geometry.row_span(1, 2), (192, 203));
        assert_eq!(geometry.row_span(63, 64), (889, 900));
        assert_eq!(geometry.column_span(5, 15), (420, 620));
        assert_eq!(geometry.cell_center(0, 0), (329, 185));
        assert_eq!(geometry.cell_center(63, 63), (1589, 894));
    }

    #[test]
    fn downscale_leaves_some_cells_unsampled() {
        // 4 grid columns on 3 pixels: pixels sample cells 0, 1 and 2; cell 3 has no pixel.
        let geometry = geometry((4, 2), (1, 0, 3, 1), (5, 1));
        let sampled: Vec<_> = (0..5).map(|x| geometry.cell(x, 0)).collect();
        assert_eq!(
            sampled,
            [None, Some((0, 0)), Some((1, 0)), Some((2, 0)), None]
        );
        assert_eq!(geometry.column_span(3, 4), (4, 4));
        assert_eq!(geometry.row_span(1, 2), (1, 1));
        // The unsampled cell's centre is the last pixel whose footprint it overlaps.
        assert_eq!(geometry.cell_center(3, 1), (3, 0));
    }

    /// Which grid index each frame coordinate of one axis falls in, from the spans alone,
    /// checking on the way that they tile `[rect_start, rect_end)` in order.
    fn owners_from_spans(
        span: impl Fn(u32, u32) -> (u32, u32),
        grid_len: u32,
        rect: (u32, u32),
        frame_len: u32,
    ) -> Vec<Option<u32>> {
        let (rect_start, rect_end) = rect;
        assert_eq!(span(0, grid_len), (rect_start, rect_end));
        let mut owners = vec![None; frame_len as usize];
        let mut covered = rect_start;
        for index in 0..grid_len {
            let (start, end) = span(index, index + 1);
            assert!(
                start == covered && start <= end,
                "span {index}: {start}..{end}"
            );
            assert_eq!(span(0, index + 1), (rect_start, end));
            assert_eq!(span(index, grid_len), (start, rect_end));
            owners[start as usize..end as usize].fill(Some(index));
            covered = end;
        }
        owners
    }

    #[test]
    fn spans_tile_the_rectangle_and_agree_with_cells() {
        for g in sample_geometries() {
            let columns = owners_from_spans(
                |first, last| g.column_span(first, last),
                g.grid_width,
                (g.rect_x, g.rect_x + g.rect_width),
                g.frame_width,
            );
            let rows = owners_from_spans(
                |first, last| g.row_span(first, last),
                g.grid_height,
                (g.rect_y, g.rect_y + g.rect_height),
                g.frame_height,
            );
            for (x, column) in (0..).zip(&columns) {
                for (y, row) in (0..).zip(&rows) {
                    assert_eq!(g.cell(x, y), column.zip(*row), "{g:?} at ({x}, {y})");
                }
            }
        }
    }

    /// On one axis: the centre is the middle of a non-empty span (at most one pixel more on
    /// the far side), or the pixel whose footprint holds the centre of an unsampled cell.
    fn check_centre(centre: u32, span: (u32, u32), index: u32, rect: (u32, u32), grid: u32) {
        let (start, end) = span;
        if start < end {
            let (near, far) = (centre - start, end - 1 - centre);
            assert!(far == near || far == near + 1, "{centre} in {span:?}");
        } else {
            // offset <= (index + 0.5) * rect_len / grid_len < offset + 1
            let (offset, twice_centre) = (centre - rect.0, (2 * index + 1) * rect.1);
            assert!(2 * grid * offset <= twice_centre && twice_centre < 2 * grid * (offset + 1));
        }
    }

    #[test]
    fn cell_centres_lie_in_their_cells() {
        for geometry in sample_geometries() {
            for gx in 0..geometry.grid_width {
                for gy in 0..geometry.grid_height {
                    let (x, y) = geometry.cell_center(gx, gy);
                    let (columns, rows) = (
                        geometry.column_span(gx, gx + 1),
                        geometry.row_span(gy, gy + 1),
                    );
                    let horizontal = (geometry.rect_x, geometry.rect_width);
                    check_centre(x, columns, gx, horizontal, geometry.grid_width);
                    let vertical = (geometry.rect_y, geometry.rect_height);
                    check_centre(y, rows, gy, vertical, geometry.grid_height);
                    if columns.0 < columns.1 && rows.0 < rows.1 {
                        assert_eq!(geometry.cell(x, y), Some((gx, gy)), "{geometry:?}");
                    }
                }
            }
        }
    }

    /// Strings from pycocotools 2.0 (`mask.encode(np.asfortranarray(mask))["counts"]`) for
    /// the frame masks described by each case.
    #[test]
    fn rle_matches_pycocotools() {
        let mut scratch = Vec::new();
        let mut check = |labels: &[u8], geometry: MaskGeometry, expected: &str| {
            assert_eq!(
                encode_rle(labels, 1, &geometry, &mut scratch),
                expected,
                "{geometry:?}"
            );
        };
        let frame_5x4 = identity(5, 4);
        check(&[0; 20], frame_5x4, "d0");
        check(&[1; 20], frame_5x4, "0d0");
        let mut origin = [0; 20];
        origin[0] = 1;
        check(&origin, frame_5x4, "01c0");

        // 7 x 5 frames: ones in rows 1..3, columns 1..4; ones in rows 2..5 of the last
        // column; and two 2 x 2 blocks at (0, 0) and (4, 3).
        let frame_7x5 = identity(7, 5);
        let mask_7x5 = |cells: &[(u32, u32)]| {
            let mut labels = [0; 35];
            cells
                .iter()
                .for_each(|&(x, y)| labels[(y * 7 + x) as usize] = 1);
            labels
        };
        let block = |xs: std::ops::Range<u32>, ys: std::ops::Range<u32>| {
            xs.flat_map(move |x| ys.clone().map(move |y| (x, y)))
        };
        let rectangle: Vec<_> = block(1..4, 1..3).collect();
        check(&mask_7x5(&rectangle), frame_7x5, "623000>");
        check(&mask_7x5(&[(6, 2), (6, 3), (6, 4)]), frame_7x5, "P13");
        let split: Vec<_> = block(0..2, 0..2).chain(block(4..6, 3..5)).collect();
        check(&mask_7x5(&split), frame_7x5, "0230=0C02");

        // Grid 64 x 36 on 1280 x 720 (20-pixel cells): cells x 5..15, y 2..20, that is
        // frame pixels x 100..300, y 40..400. 200 identical columns: 397 zero deltas.
        let mut labels = vec![0; 64 * 36];
        for (x, y) in block(5..15, 2..20) {
            labels[(y * 64 + x) as usize] = 1;
        }
        let expected = format!("X[V2X;X;{}hPae0", "0".repeat(397));
        check(
            &labels,
            geometry((64, 36), (0, 0, 1280, 720), (1280, 720)),
            &expected,
        );

        // Grid 64 x 64 on a 1280 x 720 rectangle at (320, 180) of a 1920 x 1080 frame: the
        // first and last cells, frame pixels [320, 340) x [180, 192) and [1580, 1600) x
        // [889, 900). The string holds a backslash.
        let mut labels = vec![0; 64 * 64];
        labels[0] = 1;
        labels[64 * 64 - 1] = 1;
        check(
            &labels,
            geometry((64, 64), (320, 180, 1280, 720), (1920, 1080)),
            concat!(
                r"dea:<\Q10000000000000000000000000000000000000U`lX1Ol_SgN",
                "0000000000000000000000000000000000000Wd`:"
            ),
        );
    }

    #[test]
    fn rle_matches_a_materialised_mask() {
        let mut random = Random(0x9e37_79b9_7f4a_7c15);
        let mut scratch = Vec::new();
        for case in 0..300 {
            let grid = (1 + random.below(9), 1 + random.below(9));
            let rect_size = (1 + random.below(20), 1 + random.below(20));
            let rect = (random.below(4), random.below(4), rect_size.0, rect_size.1);
            let frame = (
                rect.0 + rect.2 + random.below(4),
                rect.1 + rect.3 + random.below(4),
            );
            let geometry = geometry(grid, rect, frame);
            // Few regions and some all-equal maps so that long runs and full columns occur.
            let regions = 1 + random.below(3) as u8;
            let labels: Vec<u8> = (0..grid.0 * grid.1)
                .map(|_| {
                    if case % 10 == 0 {
                        1
                    } else {
                        random.below(u32::from(regions) + 1) as u8
                    }
                })
                .collect();
            for region in 0..=regions {
                let expected = compress_counts(&naive_counts(&labels, region, &geometry));
                assert_eq!(
                    encode_rle(&labels, region, &geometry, &mut scratch),
                    expected,
                    "case {case}, region {region}, {geometry:?}, labels {labels:?}"
                );
            }
        }
    }

    #[test]
    fn frame_line_is_json_with_every_field() {
        let result = FrameResult {
            labels: vec![1, 0, 0, 2],
            geometry: geometry((2, 2), (0, 1, 4, 2), (4, 4)),
            instances: vec![
                FrameInstance::example(1, 7, "cat \"tabby\" \\ 1", 0.875),
                FrameInstance::example(2, u64::MAX, "dog", f64::NAN),
            ],
        };
        let mut line = Vec::new();
        let mut scratch = Vec::new();
        write_frame(
            &mut line,
            12,
            Some(400_000_000),
            false,
            &result,
            &mut scratch,
        )
        .unwrap();
        assert_eq!(line.pop(), Some(b'\n'));
        assert!(!line.contains(&b'\n'));
        let value: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(value["frame"], 12);
        assert_eq!(value["pts"], 400_000_000);
        assert_eq!(
            (value["width"].as_u64(), value["height"].as_u64()),
            (Some(4), Some(4))
        );
        let written = value["instances"].as_array().unwrap();
        assert_eq!(written.len(), 2);
        for (json, instance) in written.iter().zip(&result.instances) {
            assert_eq!(json.as_object().unwrap().len(), 7, "{json}");
            assert_eq!(json["track_id"], instance.track_id);
            assert_eq!(json["class_id"], instance.class_id);
            assert_eq!(json["label"], instance.label);
            assert_eq!(json["bbox"], serde_json::json!(instance.bbox));
            assert_eq!(json["seed"], serde_json::json!(instance.seed));
            assert_eq!(json["mask"]["size"], serde_json::json!([4, 4]));
            let counts = encode_rle(
                &result.labels,
                instance.region,
                &result.geometry,
                &mut scratch,
            );
            assert_eq!(json["mask"]["counts"], counts);
        }
        assert_eq!(written[0]["score"], 0.875);
        assert!(written[1]["score"].is_null());

        let empty = FrameResult {
            instances: Vec::new(),
            ..result
        };
        let mut line = Vec::new();
        write_frame(&mut line, 12, None, true, &empty, &mut scratch).unwrap();
        assert_eq!(
            String::from_utf8(line).unwrap(),
            "{\"frame\":12,\"pts\":null,\"width\":4,\"height\":4,\"carried\":true,\"instances\":[]}\n"
        );
    }

    #[test]
    fn results_file_lines_are_on_disk_at_once_and_a_full_disk_fails_the_first_frame() {
        let result = FrameResult {
            labels: vec![0; 4],
            geometry: identity(2, 2),
            instances: Vec::new(),
        };
        let path =
            std::env::temp_dir().join(format!("instseg-results-{}.jsonl", std::process::id()));
        let mut file = ResultsFile::create(&path).unwrap();
        for frame in 0..3 {
            file.write(frame, Some(5), false, &result).unwrap();
            // Read back while the file is still open: nothing waits in a buffer.
            let text = std::fs::read_to_string(&path).unwrap();
            assert_eq!(text.lines().count(), frame as usize + 1, "{text}");
        }
        drop(file);
        std::fs::remove_file(&path).unwrap();

        let mut full = ResultsFile::create(Path::new("/dev/full")).unwrap();
        let error = full.write(0, None, false, &result).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::StorageFull, "{error}");
    }
}
