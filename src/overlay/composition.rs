// SPDX-License-Identifier: MIT
//! The overlay as a `GstVideoOverlayCompositionMeta` (`overlay=meta`): the label map in
//! instance colours as one rectangle scaled onto the mask rectangle, box edges as one-colour
//! rectangles and the label bands, composed by downstream (or a compositor) while the frame's
//! pixels stay as they are.

use gst::glib;

use super::{OverlayInstance, OverlayStyle, label_argb, mask_argb, track_colour};
use crate::results::MaskGeometry;

/// An ARGB overlay rectangle (GStreamer's composition layout) rendered at `render`.
fn rectangle(
    pixels: Vec<u8>,
    width: u32,
    height: u32,
    render: (i32, i32, u32, u32),
) -> Result<gst_video::VideoOverlayRectangle, glib::BoolError> {
    let format = if cfg!(target_endian = "little") {
        gst_video::VideoFormat::Bgra
    } else {
        gst_video::VideoFormat::Argb
    };
    let mut buffer = gst::Buffer::from_mut_slice(pixels);
    let buffer_ref = buffer
        .get_mut()
        .ok_or_else(|| glib::bool_error!("a new buffer is writable"))?;
    gst_video::VideoMeta::add(
        buffer_ref,
        gst_video::VideoFrameFlags::empty(),
        format,
        width,
        height,
    )?;
    Ok(gst_video::VideoOverlayRectangle::new_raw(
        &buffer,
        render.0,
        render.1,
        render.2,
        render.3,
        gst_video::VideoOverlayFormatFlags::empty(),
    ))
}

/// The overlay of `labels` (laid out by `geometry`) and `instances`, to attach to each buffer
/// that shows them with [`gst_video::VideoOverlayCompositionMeta::add`].
pub fn compose(
    labels: &[u8],
    geometry: &MaskGeometry,
    instances: &[OverlayInstance],
    style: OverlayStyle,
) -> Result<gst_video::VideoOverlayComposition, glib::BoolError> {
    let (width, height) = (geometry.grid_width, geometry.grid_height);
    let mut rectangles = vec![rectangle(
        mask_argb(labels, width as usize, height as usize, instances, style),
        width,
        height,
        (
            geometry.rect_x as i32,
            geometry.rect_y as i32,
            geometry.rect_width,
            geometry.rect_height,
        ),
    )?];
    for instance in instances {
        let [x, y, w, h] = instance.bbox;
        if w == 0 || h == 0 {
            continue;
        }
        if style.draw_boxes {
            let [r, g, b] = track_colour(instance.track_id);
            let argb = u32::from_be_bytes([255, r, g, b]).to_ne_bytes();
            let (x, y) = (x as i32, y as i32);
            let edges = [
                (x, y, w, 2),
                (x, y + h as i32 - 2, w, 2),
                (x, y, 2, h),
                (x + w as i32 - 2, y, 2, h),
            ];
            for edge in edges {
                rectangles.push(rectangle(argb.to_vec(), 1, 1, edge)?);
            }
        }
        if style.draw_labels {
            let (pixels, w, h, x, y) =
                label_argb(instance, geometry.frame_width, geometry.frame_height);
            rectangles.push(rectangle(pixels, w, h, (x, y, w, h))?);
        }
    }
    gst_video::VideoOverlayComposition::new(&rectangles)
}
