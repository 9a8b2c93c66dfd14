// SPDX-License-Identifier: MIT
//! The visible overlay (docs/metadata.md, "Overlay"): instance masks in track colours, box outlines and
//! "label #track confidence" bands, either drawn into the frame ([`blend`]) or as ARGB
//! images for a `GstVideoOverlayCompositionMeta` ([`mask_argb`], [`label_argb`]).
//!
//! [`blend`] paints each frame row into a row of paints (mask fill, then mask outline, box
//! outline and label band on top) before blending that row into the planes in the frame's
//! own byte layout, so one painter serves all twelve formats. Text uses a built-in 5x7
//! bitmap font.
//!
//! The drawing knows nothing about GStreamer; [`composition`] wraps it in GStreamer's
//! overlay composition meta.

pub mod composition;

use crate::preprocess::PixelFormat;
use crate::results::{FrameInstance, MaskGeometry};

/// Stable colour of a track (same id, same colour on every frame; neighbouring ids clearly
/// different): golden-ratio hue steps at full saturation and brightness.
pub fn track_colour(track_id: u64) -> [u8; 3] {
    // The golden ratio in 0.64 fixed point: exact hue steps for every id, however large.
    let turn = track_id.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let hue = (turn >> 40) as f64 / f64::from(1u32 << 24) * 6.0;
    let rising = (hue.fract() * 255.0).round() as u8;
    let falling = 255 - rising;
    match hue as u8 {
        0 => [255, rising, 0],
        1 => [falling, 255, 0],
        2 => [0, 255, rising],
        3 => [0, falling, 255],
        4 => [rising, 0, 255],
        _ => [255, 0, falling],
    }
}

/// What the overlay writes above an instance's box: "label #track confidence".
pub fn label_text(instance: &FrameInstance) -> String {
    format!(
        "{} #{} {:.2}",
        instance.label, instance.track_id, instance.confidence
    )
}

/// The instances to draw, least confident first, so that the boxes and labels of the most
/// confident instances end up on top of any they overlap; `texts[i]` is instance i's
/// [`label_text`].
pub fn draw_order<'a>(
    instances: &'a [FrameInstance],
    texts: &'a [String],
) -> Vec<OverlayInstance<'a>> {
    let mut order: Vec<_> = instances.iter().zip(texts).collect();
    order.sort_by(|a, b| a.0.confidence.total_cmp(&b.0.confidence));
    order
        .into_iter()
        .map(|(instance, text)| OverlayInstance {
            region: instance.region,
            track_id: instance.track_id,
            bbox: instance.bbox,
            text,
        })
        .collect()
}

/// One instance to draw.
#[derive(Debug, Clone, Copy)]
pub struct OverlayInstance<'a> {
    /// Its value in the label map.
    pub region: u8,
    pub track_id: u64,
    /// Frame pixels: x, y, width, height.
    pub bbox: [u32; 4],
    /// "label #id 0.93".
    pub text: &'a str,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OverlayStyle {
    /// Opacity of the mask fill, 0..=1.
    pub alpha: f32,
    pub draw_boxes: bool,
    pub draw_labels: bool,
}

/// A frame to draw into, as a mapped writable `GstVideoFrame` exposes it.
#[derive(Debug)]
pub struct FrameMut<'a> {
    pub format: PixelFormat,
    pub width: usize,
    pub height: usize,
    /// Plane data starting at the first pixel; planes the format lacks are empty slices.
    pub planes: [&'a mut [u8]; 3],
    /// Bytes from one row of a plane to the next.
    pub strides: [usize; 3],
}

/// Draws the overlay into the frame: each instance's mask (the label map mapped onto the
/// frame through `geometry`) filled with its track colour at `style.alpha` and outlined
/// solidly, its box outline if `draw_boxes`, and its text in a band just above the box
/// (inside the frame) if `draw_labels`. Outlines are 1 px thick, 2 px from 480 lines up.
///
/// YUV frames get the colours in BT.601 limited range; a chroma sample is blended when any
/// of the pixels sharing it is painted, with the most opaque of their paints. Pixels outside
/// every mask, box outline and label band (and, in YUV, their chroma) stay byte-identical,
/// as do alpha and padding bytes. Planes too short for their rows are drawn as far as they
/// go.
pub fn blend(
    frame: &mut FrameMut,
    labels: &[u8],
    geometry: &MaskGeometry,
    instances: &[OverlayInstance],
    style: OverlayStyle,
) {
    let (width, height) = (frame.width, frame.height);
    let layout = Layout::of(frame.format);
    let convert = |rgb| match layout {
        Layout::Packed { .. } => rgb,
        Layout::Yuv420 { .. } => rgb_to_yuv(rgb),
    };
    let mut painter = Painter::new(width, height, labels, geometry, instances, style, convert);
    let mut ops = vec![None; width];
    match layout {
        Layout::Packed { bytes, rgb } => {
            for y in 0..height {
                painter.paint_row(y, &mut ops);
                let start = y * frame.strides[0];
                for (channel, offset) in rgb.into_iter().enumerate() {
                    blend_channel(frame.planes[0], start + offset, bytes, &ops, channel);
                }
            }
        }
        Layout::Yuv420 { chroma } => {
            let mut below = vec![None; width];
            let mut chroma_ops = vec![None; width.div_ceil(2)];
            for cy in 0..height.div_ceil(2) {
                for (y, row) in [(2 * cy, &mut ops), (2 * cy + 1, &mut below)] {
                    if y < height {
                        painter.paint_row(y, row);
                        blend_channel(frame.planes[0], y * frame.strides[0], 1, row, 0);
                    } else {
                        row.fill(None);
                    }
                }
                for (cx, op) in chroma_ops.iter_mut().enumerate() {
                    let block = 2 * cx..(2 * cx + 2).min(width);
                    *op = chroma_paint(ops[block.clone()].iter().chain(&below[block]).flatten());
                }
                for (channel, (plane, step, offset)) in (1..).zip(chroma) {
                    let start = cy * frame.strides[plane] + offset;
                    blend_channel(frame.planes[plane], start, step, &chroma_ops, channel);
                }
            }
        }
    }
}

/// The label map as one ARGB image at label-map resolution for the overlay composition meta
/// (GStreamer's "ARGB" overlay layout: native-endian `0xAARRGGBB`, not premultiplied): mask
/// cells in the track colour at `style.alpha`, cells on a mask border opaque, the rest
/// transparent. The map's edges are not outlined, as [`blend`] does not outline the frame's.
/// Cells missing from a short `labels` count as background.
pub fn mask_argb(
    labels: &[u8],
    grid_width: usize,
    grid_height: usize,
    instances: &[OverlayInstance],
    style: OverlayStyle,
) -> Vec<u8> {
    let colours = region_colours(instances, |rgb| rgb);
    let fill = (style.alpha.clamp(0.0, 1.0) * 255.0).round() as u8;
    let label = |gx: usize, gy: usize| labels.get(gy * grid_width + gx).copied();
    let mut pixels = vec![0; 4 * grid_width * grid_height];
    for (i, pixel) in pixels.chunks_exact_mut(4).enumerate() {
        let (gx, gy) = (i % grid_width, i / grid_width);
        let Some(region) = label(gx, gy) else {
            continue;
        };
        let Some(colour) = colours[usize::from(region)] else {
            continue;
        };
        let border = (gx > 0 && label(gx - 1, gy) != Some(region))
            || (gx + 1 < grid_width && label(gx + 1, gy) != Some(region))
            || (gy > 0 && label(gx, gy - 1) != Some(region))
            || (gy + 1 < grid_height && label(gx, gy + 1) != Some(region));
        pixel.copy_from_slice(&argb(colour, if border { 255 } else { fill }));
    }
    pixels
}

/// The label band of `instance` as an ARGB image (the layout of [`mask_argb`]) and where it
/// goes on the frame: `(pixels, width, height, x, y)`, the same band [`blend`] draws. An
/// instance with no text, or an empty frame, gives an empty image.
pub fn label_argb(
    instance: &OverlayInstance,
    frame_width: u32,
    frame_height: u32,
) -> (Vec<u8>, u32, u32, i32, i32) {
    let Some(band) = LabelBand::new(instance, frame_width as usize, frame_height as usize) else {
        return (Vec::new(), 0, 0, 0, 0);
    };
    let colour = track_colour(instance.track_id);
    let mut pixels = argb(colour, 255).repeat(band.width * band.height);
    let text = argb(text_colour(colour), 255);
    for (ly, row) in pixels.chunks_exact_mut(4 * band.width).enumerate() {
        band.text_row(instance.text, ly, |lx| {
            row[4 * lx..][..4].copy_from_slice(&text);
        });
    }
    let size = |value: usize| u32::try_from(value).unwrap_or(u32::MAX);
    let position = |value: usize| i32::try_from(value).unwrap_or(i32::MAX);
    (
        pixels,
        size(band.width),
        size(band.height),
        position(band.x),
        position(band.y),
    )
}

/// A colour in the frame's colour space (RGB or YUV) and its opacity, 0..=256.
#[derive(Debug, Clone, Copy)]
struct Paint {
    value: [u8; 3],
    alpha: u16,
}

/// Where the channels of a [`PixelFormat`] are.
#[derive(Debug, Clone, Copy)]
enum Layout {
    /// Bytes per pixel and the byte offsets of red, green and blue.
    Packed { bytes: usize, rgb: [usize; 3] },
    /// 4:2:0 YUV: Y in plane 0; the (plane, bytes per sample, offset) of U and V.
    Yuv420 { chroma: [(usize, usize, usize); 2] },
}

impl Layout {
    fn of(format: PixelFormat) -> Self {
        let packed = |bytes, rgb| Self::Packed { bytes, rgb };
        match format {
            PixelFormat::Rgb => packed(3, [0, 1, 2]),
            PixelFormat::Bgr => packed(3, [2, 1, 0]),
            PixelFormat::Rgba | PixelFormat::Rgbx => packed(4, [0, 1, 2]),
            PixelFormat::Bgra | PixelFormat::Bgrx => packed(4, [2, 1, 0]),
            PixelFormat::Argb | PixelFormat::Xrgb => packed(4, [1, 2, 3]),
            PixelFormat::Abgr | PixelFormat::Xbgr => packed(4, [3, 2, 1]),
            PixelFormat::I420 => Self::Yuv420 {
                chroma: [(1, 1, 0), (2, 1, 0)],
            },
            PixelFormat::Nv12 => Self::Yuv420 {
                chroma: [(1, 2, 0), (1, 2, 1)],
            },
        }
    }
}

/// BT.601 limited range, the usual matrix of SD video and good enough for overlay colours.
fn rgb_to_yuv([r, g, b]: [u8; 3]) -> [u8; 3] {
    let [r, g, b] = [r, g, b].map(i32::from);
    let scaled = |kr: i32, kg: i32, kb: i32| (kr * r + kg * g + kb * b + 128) >> 8;
    [
        (16 + scaled(66, 129, 25)) as u8,
        (128 + scaled(-38, -74, 112)) as u8,
        (128 + scaled(112, -94, -18)) as u8,
    ]
}

/// Blends `channel` of every paint in `ops` into the bytes `start + x * step` of a plane.
fn blend_channel(
    plane: &mut [u8],
    start: usize,
    step: usize,
    ops: &[Option<Paint>],
    channel: usize,
) {
    for (x, op) in ops.iter().enumerate() {
        if let Some(paint) = op
            && let Some(byte) = plane.get_mut(start + x * step)
        {
            let alpha = u32::from(paint.alpha);
            let mixed = u32::from(*byte) * (256 - alpha) + u32::from(paint.value[channel]) * alpha;
            *byte = ((mixed + 128) >> 8) as u8;
        }
    }
}

/// The paint of a chroma sample from those of its pixels: their alpha-weighted mean colour
/// at the highest alpha, so that a mask edge gets its full colour and a sample shared by two
/// colours (text on its band, two touching masks) takes some of each.
fn chroma_paint<'p>(paints: impl Iterator<Item = &'p Paint>) -> Option<Paint> {
    let (mut sum, mut weight, mut alpha) = ([0u32; 3], 0u32, None);
    for paint in paints {
        for (sum, value) in sum.iter_mut().zip(paint.value) {
            *sum += u32::from(value) * u32::from(paint.alpha);
        }
        weight += u32::from(paint.alpha);
        alpha = alpha.max(Some(paint.alpha));
    }
    Some(Paint {
        value: sum.map(|sum| (sum + weight / 2).checked_div(weight).unwrap_or(0) as u8),
        alpha: alpha?,
    })
}

/// `0xAARRGGBB` in native byte order.
fn argb([r, g, b]: [u8; 3], alpha: u8) -> [u8; 4] {
    u32::from_be_bytes([alpha, r, g, b]).to_ne_bytes()
}

/// White on dark colours, black on light ones.
fn text_colour([r, g, b]: [u8; 3]) -> [u8; 3] {
    let luma = 299 * u32::from(r) + 587 * u32::from(g) + 114 * u32::from(b);
    if luma > 128_000 { [0; 3] } else { [255; 3] }
}

/// Track colours of the drawn regions, converted by `convert`.
fn region_colours(
    instances: &[OverlayInstance],
    convert: impl Fn([u8; 3]) -> [u8; 3],
) -> [Option<[u8; 3]>; 256] {
    let mut colours = [None; 256];
    for instance in instances {
        colours[usize::from(instance.region)] = Some(convert(track_colour(instance.track_id)));
    }
    colours
}

/// Overlay scale: 1 px per font pixel and outline width, 2 from 480 lines up.
fn scale_for(frame_height: usize) -> usize {
    if frame_height >= 480 { 2 } else { 1 }
}

/// The label band of an instance on the frame, clipped to it.
#[derive(Debug, Clone, Copy)]
struct LabelBand {
    x: usize,
    y: usize,
    width: usize,
    height: usize,
    scale: usize,
}

impl LabelBand {
    /// Just above the box, moved inside the frame (to its top edge when there is no room
    /// above the box); `None` without text.
    fn new(instance: &OverlayInstance, frame_width: usize, frame_height: usize) -> Option<Self> {
        let chars = instance.text.chars().count();
        if chars == 0 || frame_width == 0 || frame_height == 0 {
            return None;
        }
        let scale = scale_for(frame_height);
        let width = chars
            .saturating_mul(ADVANCE)
            .saturating_add(2 * PAD - 1)
            .saturating_mul(scale)
            .min(frame_width);
        let height = ((GLYPH_HEIGHT + 2 * PAD) * scale).min(frame_height);
        let [x, y, ..] = instance.bbox.map(|value| value as usize);
        Some(Self {
            x: x.min(frame_width - width),
            y: y.min(frame_height).saturating_sub(height),
            width,
            height,
            scale,
        })
    }

    /// Calls `pixel` with the band column of every text pixel in band row `ly`.
    fn text_row(&self, text: &str, ly: usize, mut pixel: impl FnMut(usize)) {
        let Some(glyph_row) = (ly / self.scale)
            .checked_sub(PAD)
            .filter(|&row| row < GLYPH_HEIGHT)
        else {
            return;
        };
        for (i, c) in text.chars().enumerate() {
            let left = PAD + i * ADVANCE;
            if left * self.scale >= self.width {
                break;
            }
            let bits = glyph(c)[glyph_row];
            for column in (0..GLYPH_WIDTH).filter(|column| bits & (0x10 >> column) != 0) {
                let start = (left + column) * self.scale;
                (start..(start + self.scale).min(self.width)).for_each(&mut pixel);
            }
        }
    }
}

/// Paints frame rows, top to bottom, into rows of [`Paint`]s.
struct Painter<'a> {
    width: usize,
    height: usize,
    labels: &'a [u8],
    geometry: &'a MaskGeometry,
    /// Frame columns `[start, end)` of each grid column, clipped to the frame.
    spans: Vec<(usize, usize)>,
    colours: [Option<[u8; 3]>; 256],
    fill_alpha: u16,
    thickness: usize,
    /// Drawn regions of frame rows `y - thickness ..= y + thickness` around the row painted
    /// last, so that the outline test sees its neighbours above and below.
    window: Vec<Vec<Option<u8>>>,
    boxes: Vec<([usize; 4], Paint)>,
    bands: Vec<(LabelBand, Paint, Paint, &'a str)>,
}

impl<'a> Painter<'a> {
    fn new(
        width: usize,
        height: usize,
        labels: &'a [u8],
        geometry: &'a MaskGeometry,
        instances: &'a [OverlayInstance],
        style: OverlayStyle,
        convert: impl Fn([u8; 3]) -> [u8; 3],
    ) -> Self {
        let solid = |rgb| Paint {
            value: convert(rgb),
            alpha: 256,
        };
        let spans = if geometry.grid_height == 0 {
            Vec::new()
        } else {
            (0..geometry.grid_width)
                .map(|gx| {
                    let (start, end) = geometry.column_span(gx, gx + 1);
                    (start as usize, (end as usize).min(width))
                })
                .collect()
        };
        let boxes = instances
            .iter()
            .filter(|_| style.draw_boxes)
            .map(|instance| {
                let [x, y, w, h] = instance.bbox.map(|value| value as usize);
                let paint = solid(track_colour(instance.track_id));
                ([x, y, x.saturating_add(w), y.saturating_add(h)], paint)
            })
            .collect();
        let bands = instances
            .iter()
            .filter(|_| style.draw_labels)
            .filter_map(|instance| {
                let band = LabelBand::new(instance, width, height)?;
                let colour = track_colour(instance.track_id);
                let text = solid(text_colour(colour));
                Some((band, solid(colour), text, instance.text))
            })
            .collect();
        let thickness = scale_for(height);
        let mut painter = Self {
            width,
            height,
            labels,
            geometry,
            spans,
            colours: region_colours(instances, &convert),
            fill_alpha: (style.alpha.clamp(0.0, 1.0) * 256.0).round() as u16,
            thickness,
            window: vec![vec![None; width]; 2 * thickness + 1],
            boxes,
            bands,
        };
        // The first `paint_row` shifts row `-thickness - 1` out and loads `thickness`.
        for y in 0..thickness {
            let mut row = std::mem::take(&mut painter.window[thickness + 1 + y]);
            painter.load_row(y, &mut row);
            painter.window[thickness + 1 + y] = row;
        }
        painter
    }

    /// Fills `row` with the drawn region of each pixel of frame row `y`.
    fn load_row(&self, y: usize, row: &mut [Option<u8>]) {
        row.fill(None);
        let Some((_, gy)) = (y < self.height)
            .then(|| u32::try_from(y).ok())
            .flatten()
            .and_then(|y| self.geometry.cell(self.geometry.rect_x, y))
        else {
            return;
        };
        let grid_row = self
            .labels
            .get(gy as usize * self.spans.len()..)
            .unwrap_or_default();
        for (&(start, end), &label) in self.spans.iter().zip(grid_row) {
            if start < end && self.colours[usize::from(label)].is_some() {
                row[start..end].fill(Some(label));
            }
        }
    }

    /// Paints frame row `y` into `ops`; rows must come in order, from 0.
    fn paint_row(&mut self, y: usize, ops: &mut [Option<Paint>]) {
        let t = self.thickness;
        let mut row = self.window.remove(0);
        self.load_row(y + t, &mut row);
        self.window.push(row);

        ops.fill(None);
        let window = &self.window;
        let centre = &window[t];
        for (x, op) in ops.iter_mut().enumerate() {
            let Some(region) = centre[x] else {
                continue;
            };
            let differs = |label: Option<u8>| label != Some(region);
            let border = (1..=t).any(|d| {
                (x >= d && differs(centre[x - d]))
                    || (x + d < self.width && differs(centre[x + d]))
                    || (y >= d && differs(window[t - d][x]))
                    || (y + d < self.height && differs(window[t + d][x]))
            });
            *op = self.colours[usize::from(region)].map(|value| Paint {
                value,
                alpha: if border { 256 } else { self.fill_alpha },
            });
        }

        for &([left, top, right, bottom], paint) in &self.boxes {
            if y < top || y >= bottom {
                continue;
            }
            if y < top + t || y + t >= bottom {
                fill(ops, left, right, paint);
            } else {
                fill(ops, left, (left + t).min(right), paint);
                fill(ops, right.saturating_sub(t).max(left), right, paint);
            }
        }

        for (band, background, text, label) in &self.bands {
            let Some(ly) = y.checked_sub(band.y).filter(|&ly| ly < band.height) else {
                continue;
            };
            fill(ops, band.x, band.x + band.width, *background);
            band.text_row(label, ly, |lx| ops[band.x + lx] = Some(*text));
        }
    }
}

/// Paints `[start, end)` of a row, clipped to it.
fn fill(ops: &mut [Option<Paint>], start: usize, end: usize, paint: Paint) {
    let end = end.min(ops.len());
    if start < end {
        ops[start..end].fill(Some(paint));
    }
}

const GLYPH_WIDTH: usize = 5;
const GLYPH_HEIGHT: usize = 7;
/// Glyph width plus one column of spacing.
const ADVANCE: usize = GLYPH_WIDTH + 1;
/// Band margin around the text, in font pixels.
const PAD: usize = 1;

/// Rows of a 5x7 glyph, top first; bit 4 is the leftmost column.
type Glyph = [u8; GLYPH_HEIGHT];

/// What characters outside the font render as.
const UNKNOWN: Glyph = [0x1f, 0x11, 0x11, 0x11, 0x11, 0x11, 0x1f];

const DIGITS: [Glyph; 10] = [
    [0x0e, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0e], // 0
    [0x04, 0x0c, 0x04, 0x04, 0x04, 0x04, 0x0e], // 1
    [0x0e, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1f], // 2
    [0x1f, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0e], // 3
    [0x02, 0x06, 0x0a, 0x12, 0x1f, 0x02, 0x02], // 4
    [0x1f, 0x10, 0x1e, 0x01, 0x01, 0x11, 0x0e], // 5
    [0x06, 0x08, 0x10, 0x1e, 0x11, 0x11, 0x0e], // 6
    [0x1f, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08], // 7
    [0x0e, 0x11, 0x11, 0x0e, 0x11, 0x11, 0x0e], // 8
    [0x0e, 0x11, 0x11, 0x0f, 0x01, 0x02, 0x0c], // 9
];

const UPPERCASE: [Glyph; 26] = [
    [0x0e, 0x11, 0x11, 0x11, 0x1f, 0x11, 0x11], // A
    [0x1e, 0x11, 0x11, 0x1e, 0x11, 0x11, 0x1e], // B
    [0x0e, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0e], // C
    [0x1c, 0x12, 0x11, 0x11, 0x11, 0x12, 0x1c], // D
    [0x1f, 0x10, 0x10, 0x1e, 0x10, 0x10, 0x1f], // E
    [0x1f, 0x10, 0x10, 0x1e, 0x10, 0x10, 0x10], // F
    [0x0e, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0f], // G
    [0x11, 0x11, 0x11, 0x1f, 0x11, 0x11, 0x11], // H
    [0x0e, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0e], // I
    [0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0c], // J
    [0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11], // K
    [0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1f], // L
    [0x11, 0x1b, 0x15, 0x15, 0x11, 0x11, 0x11], // M
    [0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11], // N
    [0x0e, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0e], // O
    [0x1e, 0x11, 0x11, 0x1e, 0x10, 0x10, 0x10], // P
    [0x0e, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0d], // Q
    [0x1e, 0x11, 0x11, 0x1e, 0x14, 0x12, 0x11], // R
    [0x0f, 0x10, 0x10, 0x0e, 0x01, 0x01, 0x1e], // S
    [0x1f, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04], // T
    [0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0e], // U
    [0x11, 0x11, 0x11, 0x11, 0x11, 0x0a, 0x04], // V
    [0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0a], // W
    [0x11, 0x11, 0x0a, 0x04, 0x0a, 0x11, 0x11], // X
    [0x11, 0x11, 0x11, 0x0a, 0x04, 0x04, 0x04], // Y
    [0x1f, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1f], // Z
];

const LOWERCASE: [Glyph; 26] = [
    [0x00, 0x00, 0x0e, 0x01, 0x0f, 0x11, 0x0f], // a
    [0x10, 0x10, 0x16, 0x19, 0x11, 0x11, 0x1e], // b
    [0x00, 0x00, 0x0e, 0x10, 0x10, 0x11, 0x0e], // c
    [0x01, 0x01, 0x0d, 0x13, 0x11, 0x11, 0x0f], // d
    [0x00, 0x00, 0x0e, 0x11, 0x1f, 0x10, 0x0e], // e
    [0x06, 0x09, 0x08, 0x1c, 0x08, 0x08, 0x08], // f
    [0x00, 0x0f, 0x11, 0x11, 0x0f, 0x01, 0x0e], // g
    [0x10, 0x10, 0x16, 0x19, 0x11, 0x11, 0x11], // h
    [0x04, 0x00, 0x0c, 0x04, 0x04, 0x04, 0x0e], // i
    [0x02, 0x00, 0x06, 0x02, 0x02, 0x12, 0x0c], // j
    [0x10, 0x10, 0x12, 0x14, 0x18, 0x14, 0x12], // k
    [0x0c, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0e], // l
    [0x00, 0x00, 0x1a, 0x15, 0x15, 0x11, 0x11], // m
    [0x00, 0x00, 0x16, 0x19, 0x11, 0x11, 0x11], // n
    [0x00, 0x00, 0x0e, 0x11, 0x11, 0x11, 0x0e], // o
    [0x00, 0x00, 0x1e, 0x11, 0x1e, 0x10, 0x10], // p
    [0x00, 0x00, 0x0d, 0x13, 0x0f, 0x01, 0x01], // q
    [0x00, 0x00, 0x16, 0x19, 0x10, 0x10, 0x10], // r
    [0x00, 0x00, 0x0e, 0x10, 0x0e, 0x01, 0x1e], // s
    [0x08, 0x08, 0x1c, 0x08, 0x08, 0x09, 0x06], // t
    [0x00, 0x00, 0x11, 0x11, 0x11, 0x13, 0x0d], // u
    [0x00, 0x00, 0x11, 0x11, 0x11, 0x0a, 0x04], // v
    [0x00, 0x00, 0x11, 0x11, 0x15, 0x15, 0x0a], // w
    [0x00, 0x00, 0x11, 0x0a, 0x04, 0x0a, 0x11], // x
    [0x00, 0x00, 0x11, 0x11, 0x0f, 0x01, 0x0e], // y
    [0x00, 0x00, 0x1f, 0x02, 0x04, 0x08, 0x1f], // z
];

fn glyph(c: char) -> Glyph {
    let index = |first: char| c as usize - first as usize;
    match c {
        '0'..='9' => DIGITS[index('0')],
        'A'..='Z' => UPPERCASE[index('A')],
        'a'..='z' => LOWERCASE[index('a')],
        ' ' => [0; GLYPH_HEIGHT],
        '#' => [0x0a, 0x0a, 0x1f, 0x0a, 0x1f, 0x0a, 0x0a],
        '.' => [0x00, 0x00, 0x00, 0x00, 0x00, 0x0c, 0x0c],
        '-' => [0x00, 0x00, 0x00, 0x1f, 0x00, 0x00, 0x00],
        '_' => [0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x1f],
        ':' => [0x00, 0x0c, 0x0c, 0x00, 0x0c, 0x0c, 0x00],
        _ => UNKNOWN,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn most_confident_instances_are_drawn_last() {
        let instance = |region: u8, confidence: f64| {
            FrameInstance::example(region, u64::from(region) + 10, "star", confidence)
        };
        let instances = [instance(1, 0.5), instance(2, 0.9), instance(3, 0.125)];
        let texts: Vec<String> = instances.iter().map(label_text).collect();
        assert_eq!(texts[0], "star #11 0.50");
        let order = draw_order(&instances, &texts);
        let drawn: Vec<(u8, &str)> = order.iter().map(|i| (i.region, i.text)).collect();
        assert_eq!(
            drawn,
            [
                (3, "star #13 0.12"),
                (1, "star #11 0.50"),
                (2, "star #12 0.90")
            ]
        );
    }

    /// A frame with padded strides and a pattern in every byte.
    struct TestFrame {
        format: PixelFormat,
        width: usize,
        height: usize,
        planes: [Vec<u8>; 3],
        strides: [usize; 3],
    }

    impl TestFrame {
        fn new(format: PixelFormat, width: usize, height: usize) -> Self {
            let (cw, ch) = (width.div_ceil(2), height.div_ceil(2));
            let (rows, strides) = match Layout::of(format) {
                Layout::Packed { bytes, .. } => ([height, 0, 0], [bytes * width + 8, 0, 0]),
                Layout::Yuv420 { chroma } if chroma[0].1 == 1 => {
                    ([height, ch, ch], [width + 5, cw + 3, cw + 3])
                }
                Layout::Yuv420 { .. } => ([height, ch, 0], [width + 5, 2 * cw + 4, 0]),
            };
            let planes = [0, 1, 2].map(|i| {
                (0..rows[i] * strides[i])
                    .map(|b| (60 + b * 37 % 120) as u8)
                    .collect()
            });
            Self {
                format,
                width,
                height,
                planes,
                strides,
            }
        }

        fn blend(
            &mut self,
            labels: &[u8],
            geometry: &MaskGeometry,
            instances: &[OverlayInstance],
            style: OverlayStyle,
        ) {
            let [a, b, c] = &mut self.planes;
            let mut frame = FrameMut {
                format: self.format,
                width: self.width,
                height: self.height,
                planes: [a, b, c],
                strides: self.strides,
            };
            blend(&mut frame, labels, geometry, instances, style);
        }

        /// Every byte pixel (`x`, `y`) is made of, chroma included.
        fn bytes(&self, x: usize, y: usize) -> Vec<u8> {
            let at = |plane: usize, offset: usize| self.planes[plane][offset];
            match Layout::of(self.format) {
                Layout::Packed { bytes, .. } => {
                    let start = y * self.strides[0] + x * bytes;
                    self.planes[0][start..start + bytes].to_vec()
                }
                Layout::Yuv420 { chroma } => {
                    let mut yuv = vec![at(0, y * self.strides[0] + x)];
                    yuv.extend(chroma.map(|(plane, step, offset)| {
                        at(plane, y / 2 * self.strides[plane] + x / 2 * step + offset)
                    }));
                    yuv
                }
            }
        }

        fn rgb(&self, x: usize, y: usize) -> [u8; 3] {
            let bytes = self.bytes(x, y);
            match Layout::of(self.format) {
                Layout::Packed { rgb, .. } => rgb.map(|offset| bytes[offset]),
                Layout::Yuv420 { .. } => {
                    let [y, u, v] = [0, 1, 2].map(|i| f32::from(bytes[i]));
                    let (y, u, v) = (1.164 * (y - 16.0), u - 128.0, v - 128.0);
                    [y + 1.596 * v, y - 0.392 * u - 0.813 * v, y + 2.017 * u]
                        .map(|c| c.round().clamp(0.0, 255.0) as u8)
                }
            }
        }
    }

    fn distance(a: [u8; 3], b: [u8; 3]) -> u32 {
        (0..3).map(|i| u32::from(a[i].abs_diff(b[i]))).sum()
    }

    const STYLE: OverlayStyle = OverlayStyle {
        alpha: 0.5,
        draw_boxes: true,
        draw_labels: true,
    };

    /// A 20x15 map over a 40x30 frame with region 3 on frame pixels x 10..20, y 8..18; the
    /// box spans x 8..24, y 12..24 and the band of "a #7" x 8..33, y 3..12.
    fn scene() -> (Vec<u8>, MaskGeometry, OverlayInstance<'static>) {
        let mut labels = vec![0; 20 * 15];
        for gy in 4..9 {
            labels[gy * 20 + 5..gy * 20 + 10].fill(3);
        }
        let geometry = MaskGeometry {
            grid_width: 20,
            grid_height: 15,
            rect_x: 0,
            rect_y: 0,
            rect_width: 40,
            rect_height: 30,
            frame_width: 40,
            frame_height: 30,
        };
        let instance = OverlayInstance {
            region: 3,
            track_id: 7,
            bbox: [8, 12, 16, 12],
            text: "a #7",
        };
        (labels, geometry, instance)
    }

    #[test]
    fn track_colours_are_stable_distinct_and_bright() {
        let colours: Vec<_> = (1..=50).map(track_colour).collect();
        assert_eq!(colours, (1..=50).map(track_colour).collect::<Vec<_>>());
        for (i, a) in colours.iter().enumerate() {
            assert!(a.contains(&255) && a.contains(&0), "{a:?}");
            assert!(colours[i + 1..].iter().all(|b| a != b));
        }
        for pair in colours.windows(2) {
            assert!(distance(pair[0], pair[1]) >= 200, "{pair:?}");
        }
    }

    #[test]
    fn blend_colours_mask_box_and_label_only() {
        let (labels, geometry, instance) = scene();
        let colour = track_colour(instance.track_id);
        for (format, _) in PixelFormat::ALL {
            let original = TestFrame::new(format, 40, 30);
            let mut frame = TestFrame::new(format, 40, 30);
            frame.blend(&labels, &geometry, &[instance], STYLE);
            // Mask interior, box outline, label band (its top margin: in 4:2:0 the chroma
            // of a pixel next to text is partly the text's).
            for (x, y) in [(15, 14), (8, 22), (30, 3)] {
                assert!(
                    distance(frame.rgb(x, y), colour) < distance(original.rgb(x, y), colour),
                    "{format:?} ({x}, {y})"
                );
            }
            for (x, y) in [(37, 27), (2, 27), (37, 1), (28, 20)] {
                assert_eq!(
                    frame.bytes(x, y),
                    original.bytes(x, y),
                    "{format:?} ({x}, {y})"
                );
            }
            if let Layout::Packed { bytes: 4, rgb } = Layout::of(format) {
                let alpha = 6 - rgb.iter().sum::<usize>();
                assert_eq!(frame.bytes(15, 14)[alpha], original.bytes(15, 14)[alpha]);
            }
        }
    }

    #[test]
    fn blend_switches() {
        let (labels, geometry, instance) = scene();
        let colour = track_colour(instance.track_id);
        let luma = rgb_to_yuv(colour)[0];
        for (format, _) in PixelFormat::ALL {
            let original = TestFrame::new(format, 40, 30);
            let mut frame = TestFrame::new(format, 40, 30);
            let style = OverlayStyle {
                alpha: 0.0,
                draw_boxes: false,
                draw_labels: false,
            };
            frame.blend(&labels, &geometry, &[instance], style);
            // Interior untouched, the outline solid, no box and no band.
            assert_eq!(frame.bytes(15, 14), original.bytes(15, 14), "{format:?}");
            for (x, y) in [(10, 13), (19, 13), (15, 8), (15, 17)] {
                match Layout::of(format) {
                    Layout::Packed { .. } => assert_eq!(frame.rgb(x, y), colour, "{format:?}"),
                    Layout::Yuv420 { .. } => assert_eq!(frame.bytes(x, y)[0], luma, "{format:?}"),
                }
            }
            for (x, y) in [(8, 22), (30, 3)] {
                assert_eq!(
                    frame.bytes(x, y),
                    original.bytes(x, y),
                    "{format:?} ({x}, {y})"
                );
            }
        }
    }

    #[test]
    fn odd_sizes_letterboxes_and_bad_shapes_do_not_panic() {
        let labels: Vec<u8> = (0..13 * 5).map(|i| (i % 4) as u8).collect();
        let geometry = MaskGeometry {
            grid_width: 13,
            grid_height: 5,
            rect_x: 1,
            rect_y: 3,
            rect_width: 39,
            rect_height: 25,
            frame_width: 41,
            frame_height: 31,
        };
        let instances: Vec<_> = (0..4)
            .map(|region| OverlayInstance {
                region,
                track_id: u64::from(region) * 1000,
                bbox: [u32::from(region) * 13, 30, 100, u32::MAX],
                text: "person #12 0.93 ?é",
            })
            .collect();
        for (format, _) in PixelFormat::ALL {
            for (width, height) in [(41, 31), (1, 1), (3, 700)] {
                let mut frame = TestFrame::new(format, width, height);
                frame.blend(&labels, &geometry, &instances, STYLE);
                frame.blend(&labels[..7], &geometry, &instances, STYLE);
            }
            let mut frame = FrameMut {
                format,
                width: 41,
                height: 31,
                planes: [&mut [], &mut [], &mut []],
                strides: [0; 3],
            };
            blend(&mut frame, &labels, &geometry, &instances, STYLE);
        }
    }

    #[test]
    fn mask_argb_fills_outlines_and_leaves_background_transparent() {
        let mut labels = vec![0; 6 * 5];
        for gy in 1..4 {
            labels[gy * 6 + 1..gy * 6 + 5].fill(2);
        }
        let (_, _, instance) = scene();
        let instance = OverlayInstance {
            region: 2,
            ..instance
        };
        let pixels = mask_argb(&labels, 6, 5, &[instance], STYLE);
        assert_eq!(pixels.len(), 4 * 6 * 5);
        let pixel = |gx: usize, gy: usize| {
            let i = 4 * (gy * 6 + gx);
            u32::from_ne_bytes(pixels[i..i + 4].try_into().unwrap())
        };
        let [r, g, b] = track_colour(instance.track_id).map(u32::from);
        let rgb = r << 16 | g << 8 | b;
        assert_eq!(pixel(0, 0), 0);
        assert_eq!(pixel(5, 2), 0);
        assert_eq!(pixel(1, 1), 0xff00_0000 | rgb);
        assert_eq!(pixel(4, 2), 0xff00_0000 | rgb);
        assert_eq!(pixel(2, 2), 128 << 24 | rgb);
        assert_eq!(pixel(3, 2), 128 << 24 | rgb);
    }

    #[test]
    fn label_argb_is_inside_the_frame_and_has_text() {
        let instance = OverlayInstance {
            region: 1,
            track_id: 12,
            bbox: [600, 100, 30, 30],
            text: "person #12 0.93",
        };
        for (bbox_y, expected_y) in [(100, 82), (5, 0)] {
            let instance = OverlayInstance {
                bbox: [600, bbox_y, 30, 30],
                ..instance
            };
            let (pixels, width, height, x, y) = label_argb(&instance, 640, 480);
            assert_eq!((width, height, y), (182, 18, expected_y));
            assert_eq!(x as u32 + width, 640);
            assert_eq!(pixels.len(), 4 * 182 * 18);
            let band = argb(track_colour(12), 255);
            let text = argb(text_colour(track_colour(12)), 255);
            let count = |colour: [u8; 4]| pixels.chunks(4).filter(|p| *p == colour).count();
            assert!(count(text) > 100);
            assert_eq!(count(text) + count(band), 182 * 18);
        }
        let (pixels, width, height, x, y) = label_argb(&instance, 20, 6);
        assert_eq!((width, height, x, y), (20, 6, 0, 0));
        assert_eq!(pixels.len(), 4 * 20 * 6);
        assert_eq!(
            label_argb(
                &OverlayInstance {
                    text: "",
                    ..instance
                },
                640,
                480
            )
            .1,
            0
        );
    }

    #[test]
    fn font_covers_the_label_characters() {
        let chars = ('0'..='9')
            .chain('a'..='z')
            .chain('A'..='Z')
            .chain("#.-_:".chars());
        for c in chars {
            assert_ne!(glyph(c), UNKNOWN, "{c}");
            assert!(glyph(c).iter().all(|row| row >> GLYPH_WIDTH == 0), "{c}");
        }
        assert_eq!(glyph('?'), UNKNOWN);
        assert_eq!(glyph(' '), [0; GLYPH_HEIGHT]);
    }
}
