// SPDX-License-Identifier: MIT
//! The planes of a raw video buffer, located from its `GstVideoMeta` (or, without one, from
//! the caps) and checked against the buffer's memory before anything reads or writes them, and
//! the colorimetry of its caps: what the element hands to [`crate::preprocess`].
//!
//! GStreamer 1.22 maps a frame with whatever offsets and strides the meta claims, so a lying
//! meta would make every plane access go out of bounds. Here each plane becomes a range of the
//! mapped buffer that holds all its rows, or the buffer is refused with the reason.

use std::ops::Range;

use crate::preprocess::{Colorimetry, PixelFormat, YuvMatrix};

/// The YUV matrix and range that `info`'s colorimetry gives; BT.601 for any other matrix.
pub fn colorimetry(info: &gst_video::VideoInfo) -> Colorimetry {
    let colorimetry = info.colorimetry();
    Colorimetry {
        matrix: match colorimetry.matrix() {
            gst_video::VideoColorMatrix::Bt709 => YuvMatrix::Bt709,
            gst_video::VideoColorMatrix::Bt2020 => YuvMatrix::Bt2020,
            _ => YuvMatrix::Bt601,
        },
        full_range: colorimetry.range() == gst_video::VideoColorRange::Range0_255,
    }
}

/// Where the planes of one buffer lie in its memory (mapped as one slice).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlaneLayout {
    /// Byte range of each plane, from its first pixel to the last byte of its last row; empty
    /// for planes the format lacks. The ranges never overlap.
    ranges: [Range<usize>; 3],
    strides: [usize; 3],
}

impl PlaneLayout {
    /// The layout of `buffer` as negotiated in `info` (`format` is its format), taking offsets
    /// and strides from the buffer's video meta when it has one.
    pub fn of(
        buffer: &gst::BufferRef,
        info: &gst_video::VideoInfo,
        format: PixelFormat,
    ) -> Result<Self, String> {
        let (width, height) = (info.width(), info.height());
        let (offsets, strides) = match buffer.meta::<gst_video::VideoMeta>() {
            Some(meta) => {
                if meta.format() != info.format()
                    || meta.width() < width
                    || meta.height() < height
                    || meta.n_planes() != info.n_planes()
                {
                    return Err(format!(
                        "the buffer's video meta describes a {}x{} {} frame with {} planes, \
                         but the caps say {width}x{height} {} with {}",
                        meta.width(),
                        meta.height(),
                        meta.format().to_str(),
                        meta.n_planes(),
                        info.format().to_str(),
                        info.n_planes()
                    ));
                }
                (meta.offset().to_vec(), meta.stride().to_vec())
            }
            None => (info.offset().to_vec(), info.stride().to_vec()),
        };
        Self::new(
            format,
            width as usize,
            height as usize,
            &offsets,
            &strides,
            buffer.size(),
        )
    }

    /// Checks that every plane of a `width` x `height` frame, at `offsets` with `strides`,
    /// lies inside a buffer of `size` bytes and apart from the other planes.
    pub fn new(
        format: PixelFormat,
        width: usize,
        height: usize,
        offsets: &[usize],
        strides: &[i32],
        size: usize,
    ) -> Result<Self, String> {
        let mut layout = Self {
            ranges: [0..0, 0..0, 0..0],
            strides: [0; 3],
        };
        let extents = format.plane_extents(width, height);
        for (plane, (row_bytes, rows)) in extents.into_iter().enumerate() {
            if row_bytes == 0 || rows == 0 {
                continue;
            }
            let (Some(&offset), Some(&stride)) = (offsets.get(plane), strides.get(plane)) else {
                return Err(format!("plane {plane} has no offset or stride"));
            };
            let stride = usize::try_from(stride)
                .ok()
                .filter(|&stride| stride >= row_bytes)
                .ok_or_else(|| {
                    format!(
                        "plane {plane} has a stride of {stride} bytes, expected at least the \
                         {row_bytes} bytes of one row"
                    )
                })?;
            let end = stride
                .checked_mul(rows - 1)
                .and_then(|bytes| bytes.checked_add(row_bytes))
                .and_then(|bytes| bytes.checked_add(offset))
                .filter(|&end| end <= size)
                .ok_or_else(|| {
                    format!(
                        "plane {plane} at offset {offset} with {rows} rows of stride {stride} \
                         runs past the end of the {size}-byte buffer"
                    )
                })?;
            layout.ranges[plane] = offset..end;
            layout.strides[plane] = stride;
        }
        let [a, b, c] = &layout.ranges;
        for (first, second, names) in [(a, b, "0 and 1"), (a, c, "0 and 2"), (b, c, "1 and 2")] {
            if first.start < second.end && second.start < first.end {
                return Err(format!("planes {names} overlap ({first:?} and {second:?})"));
            }
        }
        Ok(layout)
    }

    /// Bytes from one row of each plane to the next.
    pub fn strides(&self) -> [usize; 3] {
        self.strides
    }

    /// The planes inside `data`, the mapped buffer this layout was checked against.
    pub fn planes<'a>(&self, data: &'a [u8]) -> [&'a [u8]; 3] {
        self.ranges
            .clone()
            .map(|range| data.get(range).unwrap_or_default())
    }

    /// The planes inside `data`, writable (they never overlap).
    pub fn planes_mut<'a>(&self, data: &'a mut [u8]) -> [&'a mut [u8]; 3] {
        let mut order = [0, 1, 2];
        order.sort_by_key(|&plane| self.ranges[plane].start);
        let mut planes: [&'a mut [u8]; 3] = [&mut [], &mut [], &mut []];
        let mut rest = data;
        let mut consumed = 0;
        for plane in order {
            let range = &self.ranges[plane];
            if range.is_empty() || range.start < consumed || range.end - consumed > rest.len() {
                continue;
            }
            let (_, tail) = std::mem::take(&mut rest).split_at_mut(range.start - consumed);
            let (plane_data, tail) = tail.split_at_mut(range.len());
            planes[plane] = plane_data;
            rest = tail;
            consumed = range.end;
        }
        planes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(
        format: PixelFormat,
        offsets: &[usize],
        strides: &[i32],
        size: usize,
    ) -> Result<PlaneLayout, String> {
        PlaneLayout::new(format, 5, 3, offsets, strides, size)
    }

    #[test]
    fn honest_layouts_are_taken_with_tight_last_rows() {
        // 5x3 RGB, stride 16: the last row ends after its 15 bytes.
        let rgb = layout(PixelFormat::Rgb, &[0], &[16], 47).unwrap();
        assert_eq!(rgb.strides(), [16, 0, 0]);
        let data: Vec<u8> = (0..47).collect();
        assert_eq!(rgb.planes(&data)[0].len(), 47);
        // I420 5x3: Y 5x3, U and V 3x2, each at its own offset.
        let i420 = layout(PixelFormat::I420, &[0, 16, 24], &[5, 4, 4], 32).unwrap();
        let mut data: Vec<u8> = (0..32).collect();
        let [y, u, v] = i420.planes_mut(&mut data);
        assert_eq!((y.len(), u.len(), v.len()), (15, 7, 7));
        assert_eq!((y[0], u[0], v[0]), (0, 16, 24));
        // Planes out of order in memory are still handed out by plane index.
        let nv12 = layout(PixelFormat::Nv12, &[12, 0], &[5, 6], 27).unwrap();
        let mut data: Vec<u8> = (0..27).collect();
        let [y, uv, none] = nv12.planes_mut(&mut data);
        assert_eq!(
            (y[0], uv[0], y.len(), uv.len(), none.len()),
            (12, 0, 15, 12, 0)
        );
    }

    /// A format, plane offsets and strides, a buffer size, and what the refusal says.
    type Case = (
        PixelFormat,
        &'static [usize],
        &'static [i32],
        usize,
        &'static str,
    );

    #[test]
    fn lying_layouts_are_refused_with_the_plane_named() {
        let cases: [Case; 8] = [
            (PixelFormat::Rgb, &[0], &[100000], 48, "runs past the end"),
            (PixelFormat::Rgb, &[40], &[15], 48, "runs past the end"),
            (PixelFormat::Rgb, &[0], &[-15], 48, "stride of -15"),
            (PixelFormat::Rgb, &[0], &[14], 48, "stride of 14"),
            (
                PixelFormat::Rgb,
                &[usize::MAX],
                &[15],
                48,
                "runs past the end",
            ),
            (
                PixelFormat::Rgb,
                &[0],
                &[i32::MAX],
                1 << 20,
                "runs past the end",
            ),
            (
                PixelFormat::I420,
                &[0, 12, 24],
                &[5, 4, 4],
                64,
                "planes 0 and 1 overlap",
            ),
            (PixelFormat::Nv12, &[0], &[5], 64, "plane 1 has no offset"),
        ];
        for (format, offsets, strides, size, expected) in cases {
            let error = layout(format, offsets, strides, size).unwrap_err();
            assert!(error.contains(expected), "{offsets:?} {strides:?}: {error}");
        }
    }
}
