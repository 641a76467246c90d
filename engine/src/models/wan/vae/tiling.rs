//! Spatial tiling with diffusers' exact semantics (`AutoencoderKLWan.tiled_decode/tiled_encode`),
//! written as a reusable plan: the grid, each tile's input rectangle, the blend extents and the crop.
//!
//! Diffusers decodes every tile over all frames, then walks the grid row-major, blending each tile
//! *in place* with the (already blended) tile above (`blend_v`) and then the one to its left
//! (`blend_h`), crops it to the stride and concatenates. [`TileAssembler`] reproduces that walk while
//! keeping only the previous row of tiles, and hands each cropped piece to a sink, so the result
//! equals `enable_tiling()` output bit for bit in f32.

use std::ops::Range;

/// User-facing tile settings in *sample* pixels, as `enable_tiling(...)` takes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tiling {
    pub tile_sample_min_height: usize,
    pub tile_sample_min_width: usize,
    pub tile_sample_stride_height: usize,
    pub tile_sample_stride_width: usize,
}

impl Default for Tiling {
    /// diffusers' defaults: 256-px tiles every 192 px (64 px of blend).
    fn default() -> Self {
        Self {
            tile_sample_min_height: 256,
            tile_sample_min_width: 256,
            tile_sample_stride_height: 192,
            tile_sample_stride_width: 192,
        }
    }
}

impl From<crate::parallel::plan::TilingSpec> for Tiling {
    /// The plan's tiling (CLI, presets) as the VAE takes it.
    fn from(t: crate::parallel::plan::TilingSpec) -> Self {
        Self {
            tile_sample_min_height: t.tile_height,
            tile_sample_min_width: t.tile_width,
            tile_sample_stride_height: t.stride_height,
            tile_sample_stride_width: t.stride_width,
        }
    }
}

impl Tiling {
    /// Parses `TH,TW,SH,SW`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let parts: Vec<usize> = s
            .split(',')
            .map(|p| p.trim().parse::<usize>())
            .collect::<Result<_, _>>()
            .map_err(|_| format!("tiling `{s}` must be four integers TH,TW,SH,SW (e.g. 256,256,192,192)"))?;
        let [th, tw, sh, sw] = parts[..] else {
            return Err(format!("tiling `{s}` must be four integers TH,TW,SH,SW (e.g. 256,256,192,192)"));
        };
        Ok(Self {
            tile_sample_min_height: th,
            tile_sample_min_width: tw,
            tile_sample_stride_height: sh,
            tile_sample_stride_width: sw,
        })
    }

    /// Checks that the tiles overlap by a non-negative blend and that the stride is at least one
    /// latent pixel (`unit` sample pixels).
    pub fn validate(&self, unit: usize) -> Result<(), String> {
        for (name, min, stride) in [
            ("height", self.tile_sample_min_height, self.tile_sample_stride_height),
            ("width", self.tile_sample_min_width, self.tile_sample_stride_width),
        ] {
            if stride < unit {
                return Err(format!(
                    "tile stride {name} {stride} is smaller than one latent pixel ({unit} px); use at least {unit}"
                ));
            }
            if min < stride {
                return Err(format!(
                    "tile {name} {min} is smaller than its stride {stride}: tiles would not overlap for the blend; use a tile ≥ stride (e.g. stride + 64)"
                ));
            }
        }
        Ok(())
    }
}

/// One tile of a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TileSpec {
    pub row: usize,
    pub col: usize,
    /// Rectangle of the tile in the plan's input grid (latent pixels for decode).
    pub in_rows: Range<usize>,
    pub in_cols: Range<usize>,
    /// Where the tile's cropped piece lands in the output grid.
    pub out_rows: Range<usize>,
    pub out_cols: Range<usize>,
}

/// A tile grid over an input of `in_h × in_w`, producing an output of `out_h × out_w` where one
/// input pixel becomes `ratio` output pixels (decode) — or `1/ratio` (encode, `ratio` is then the
/// input pixels per output pixel).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TilePlan {
    pub in_h: usize,
    pub in_w: usize,
    pub tile_h: usize,
    pub tile_w: usize,
    pub stride_h: usize,
    pub stride_w: usize,
    /// Blend extents and crop sizes, in output pixels.
    pub blend_h: usize,
    pub blend_w: usize,
    pub crop_h: usize,
    pub crop_w: usize,
    pub out_h: usize,
    pub out_w: usize,
}

impl TilePlan {
    /// Decode plan over a `lat_h × lat_w` latent. `spatial` is the VAE's `scale_factor_spatial`
    /// (sample px per latent px), `patch` its patch size: the decoder's output is in patchified
    /// pixels, so blends and crops are the sample-pixel values divided by `patch`.
    pub fn for_decode(t: &Tiling, lat_h: usize, lat_w: usize, spatial: usize, patch: usize) -> Self {
        let net = spatial / patch;
        Self {
            in_h: lat_h,
            in_w: lat_w,
            tile_h: t.tile_sample_min_height / spatial,
            tile_w: t.tile_sample_min_width / spatial,
            stride_h: t.tile_sample_stride_height / spatial,
            stride_w: t.tile_sample_stride_width / spatial,
            blend_h: (t.tile_sample_min_height - t.tile_sample_stride_height) / patch,
            blend_w: (t.tile_sample_min_width - t.tile_sample_stride_width) / patch,
            crop_h: t.tile_sample_stride_height / patch,
            crop_w: t.tile_sample_stride_width / patch,
            out_h: lat_h * net,
            out_w: lat_w * net,
        }
    }

    /// Whether diffusers would tile this decode at all (latent larger than one tile).
    pub fn decode_needs_tiling(t: &Tiling, lat_h: usize, lat_w: usize, spatial: usize) -> bool {
        lat_w > t.tile_sample_min_width / spatial || lat_h > t.tile_sample_min_height / spatial
    }

    /// Encode plan over the (patchified) input `h × w`; `net` is the encoder's own spatial factor.
    /// The tile settings apply in patchified pixels, as in diffusers (which patchifies first).
    pub fn for_encode(t: &Tiling, h: usize, w: usize, net: usize) -> Self {
        let (lt_h, lt_w) = (t.tile_sample_min_height / net, t.tile_sample_min_width / net);
        let (ls_h, ls_w) = (t.tile_sample_stride_height / net, t.tile_sample_stride_width / net);
        Self {
            in_h: h,
            in_w: w,
            tile_h: t.tile_sample_min_height,
            tile_w: t.tile_sample_min_width,
            stride_h: t.tile_sample_stride_height,
            stride_w: t.tile_sample_stride_width,
            blend_h: lt_h - ls_h,
            blend_w: lt_w - ls_w,
            crop_h: ls_h,
            crop_w: ls_w,
            out_h: h / net,
            out_w: w / net,
        }
    }

    /// Whether diffusers would tile this encode (checked on the *unpatchified* sample size).
    pub fn encode_needs_tiling(t: &Tiling, sample_h: usize, sample_w: usize) -> bool {
        sample_w > t.tile_sample_min_width || sample_h > t.tile_sample_min_height
    }

    pub fn rows(&self) -> usize {
        self.in_h.div_ceil(self.stride_h)
    }

    pub fn cols(&self) -> usize {
        self.in_w.div_ceil(self.stride_w)
    }

    /// Every tile, row-major (the order diffusers blends them in).
    pub fn tiles(&self) -> Vec<TileSpec> {
        let mut tiles = Vec::with_capacity(self.rows() * self.cols());
        for row in 0..self.rows() {
            for col in 0..self.cols() {
                tiles.push(self.tile(row, col));
            }
        }
        tiles
    }

    pub fn tile(&self, row: usize, col: usize) -> TileSpec {
        let (y0, x0) = (row * self.stride_h, col * self.stride_w);
        let (oy, ox) = (row * self.crop_h, col * self.crop_w);
        TileSpec {
            row,
            col,
            in_rows: y0..(y0 + self.tile_h).min(self.in_h),
            in_cols: x0..(x0 + self.tile_w).min(self.in_w),
            out_rows: oy.min(self.out_h)..(oy + self.crop_h).min(self.out_h),
            out_cols: ox.min(self.out_w)..(ox + self.crop_w).min(self.out_w),
        }
    }
}

/// A decoded (or encoded) tile in host memory, `[frames, channels, h, w]` f32.
#[derive(Debug, Clone)]
pub struct TileBuf {
    pub data: Vec<f32>,
    pub frames: usize,
    pub channels: usize,
    pub h: usize,
    pub w: usize,
}

impl TileBuf {
    fn idx(&self, f: usize, c: usize, y: usize, x: usize) -> usize {
        ((f * self.channels + c) * self.h + y) * self.w + x
    }

    pub fn get(&self, f: usize, c: usize, y: usize, x: usize) -> f32 {
        self.data[self.idx(f, c, y, x)]
    }

    /// The region `rows × cols` as its own buffer.
    pub fn region(&self, rows: Range<usize>, cols: Range<usize>) -> TileBuf {
        let (h, w) = (rows.len(), cols.len());
        let mut data = Vec::with_capacity(self.frames * self.channels * h * w);
        for f in 0..self.frames {
            for c in 0..self.channels {
                for y in rows.clone() {
                    let start = self.idx(f, c, y, cols.start);
                    data.extend_from_slice(&self.data[start..start + w]);
                }
            }
        }
        TileBuf { data, frames: self.frames, channels: self.channels, h, w }
    }

    /// The last `n` rows (all of them if fewer): what the tile below blends against.
    pub fn tail_rows(&self, n: usize) -> TileBuf {
        self.region(self.h - n.min(self.h)..self.h, 0..self.w)
    }

    /// The last `n` columns (all of them if fewer): what the tile to the right blends against.
    pub fn tail_cols(&self, n: usize) -> TileBuf {
        self.region(0..self.h, self.w - n.min(self.w)..self.w)
    }

    /// The top-left `h × w` (the kept piece after blending).
    pub fn crop(&self, h: usize, w: usize) -> TileBuf {
        self.region(0..h.min(self.h), 0..w.min(self.w))
    }
}

/// `b[y] = a[-e+y]·(1 − y/e) + b[y]·(y/e)` for the first `e` rows, in f32 as PyTorch computes it
/// (weights rounded from double, two products, one add).
pub fn blend_v(a: &TileBuf, b: &mut TileBuf, extent: usize) {
    let e = extent.min(a.h).min(b.h);
    let w = a.w.min(b.w);
    for y in 0..e {
        let wb = (y as f64 / e as f64) as f32;
        let wa = (1.0 - y as f64 / e as f64) as f32;
        for f in 0..b.frames {
            for c in 0..b.channels {
                for x in 0..w {
                    let av = a.get(f, c, a.h - e + y, x);
                    let i = b.idx(f, c, y, x);
                    b.data[i] = av * wa + b.data[i] * wb;
                }
            }
        }
    }
}

/// Horizontal counterpart of [`blend_v`] over the first `e` columns.
pub fn blend_h(a: &TileBuf, b: &mut TileBuf, extent: usize) {
    let e = extent.min(a.w).min(b.w);
    let h = a.h.min(b.h);
    for x in 0..e {
        let wb = (x as f64 / e as f64) as f32;
        let wa = (1.0 - x as f64 / e as f64) as f32;
        for f in 0..b.frames {
            for c in 0..b.channels {
                for y in 0..h {
                    let av = a.get(f, c, y, a.w - e + x);
                    let i = b.idx(f, c, y, x);
                    b.data[i] = av * wa + b.data[i] * wb;
                }
            }
        }
    }
}

/// Receives tiles in row-major order, blends them as diffusers does and passes each finished,
/// cropped piece to `sink(tile, spec)`: the sink copies `tile[.., ..out_rows.len(), ..out_cols.len()]`
/// to `out_rows × out_cols` of the output.
pub struct TileAssembler<'p> {
    plan: &'p TilePlan,
    prev_row: Vec<Option<TileBuf>>,
    cur_row: Vec<Option<TileBuf>>,
    next: usize,
}

impl<'p> TileAssembler<'p> {
    pub fn new(plan: &'p TilePlan) -> Self {
        let cols = plan.cols();
        Self { plan, prev_row: vec![None; cols], cur_row: vec![None; cols], next: 0 }
    }

    /// Adds the next tile (row-major). Returns the spec of the piece handed to the sink.
    pub fn push(&mut self, mut tile: TileBuf, mut sink: impl FnMut(&TileBuf, &TileSpec)) -> TileSpec {
        let cols = self.plan.cols();
        let (row, col) = (self.next / cols, self.next % cols);
        self.next += 1;
        if row > 0 {
            if let Some(above) = &self.prev_row[col] {
                blend_v(above, &mut tile, self.plan.blend_h);
            }
        }
        if col > 0 {
            if let Some(left) = &self.cur_row[col - 1] {
                blend_h(left, &mut tile, self.plan.blend_w);
            }
        }
        let spec = self.plan.tile(row, col);
        sink(&tile, &spec);
        self.cur_row[col] = Some(tile);
        if col == cols - 1 {
            std::mem::swap(&mut self.prev_row, &mut self.cur_row);
            self.cur_row.iter_mut().for_each(|t| *t = None);
        }
        spec
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_plan_matches_diffusers_grid() {
        // vae21 golden: latent 10x12, tiles 48/32 px at 8x -> latent tile 6, stride 4, blend 16 px.
        let t = Tiling::parse("48,48,32,32").unwrap();
        let p = TilePlan::for_decode(&t, 10, 12, 8, 1);
        assert_eq!((p.rows(), p.cols()), (3, 3));
        assert_eq!((p.blend_h, p.crop_h, p.out_h, p.out_w), (16, 32, 80, 96));
        let last = p.tile(2, 2);
        assert_eq!((last.in_rows, last.in_cols), (8..10, 8..12));
        assert_eq!((last.out_rows, last.out_cols), (64..80, 64..96));
    }

    #[test]
    fn tiling_validation_names_the_problem() {
        assert!(Tiling::parse("256,256,192").is_err());
        assert!(Tiling {
            tile_sample_min_height: 128,
            tile_sample_min_width: 256,
            tile_sample_stride_height: 192,
            tile_sample_stride_width: 192
        }
        .validate(8)
        .unwrap_err()
        .contains("height 128"));
        assert!(Tiling::parse("64,64,4,8").unwrap().validate(8).unwrap_err().contains("latent pixel"));
        assert!(Tiling::default().validate(16).is_ok());
    }

    #[test]
    fn blend_is_a_linear_ramp() {
        let a = TileBuf { data: vec![1.0; 4 * 2], frames: 1, channels: 1, h: 4, w: 2 };
        let mut b = TileBuf { data: vec![0.0; 4 * 2], frames: 1, channels: 1, h: 4, w: 2 };
        blend_v(&a, &mut b, 2);
        assert_eq!(b.data, vec![1.0, 1.0, 0.5, 0.5, 0.0, 0.0, 0.0, 0.0]);
    }
}
