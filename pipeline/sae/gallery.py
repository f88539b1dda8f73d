"""Static HTML gallery of SAE latents: top images with patch heat maps, one PNG per latent.

For each latent, ``latent_<id>.png`` shows its top images (ranked by the image's max patch
value) in a grid; each tile is the image with the latent's patch map upsampled (nearest) and
overlaid in viridis, opacity rising with the value (normalised by the latent's ``max_value``,
so tiles of one latent are comparable), captioned with its max value and the image id (file name without folders; a long one
keeps its end).
``index.html`` lists the latents (frequency, max and mean value, thumbnails; click a column
header to sort) with relative links only, so the folder can be opened from disk or copied.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
import xarray as xr
from PIL import Image, ImageDraw

from pipeline import atomic

from ..plots import RANDOM_WEIGHTS_NOTE, label_font

# matplotlib's viridis (van der Walt & Smith, CC0), 256 RGB entries as hex.
_VIRIDIS_HEX = (
    "44015444025645045745055946075a46085c460a5d460b5e470d60470e61471063471164471365481467481668481769"
    "48186a481a6c481b6d481c6e481d6f481f70482071482173482374482475482576482677482878482979472a7a472c7a"
    "472d7b472e7c472f7d46307e46327e46337f463480453581453781453882443983443a83443b84433d84433e85423f85"
    "4240864241864142874144874045884046883f47883f48893e49893e4a893e4c8a3d4d8a3d4e8a3c4f8a3c508b3b518b"
    "3b528b3a538b3a548c39558c39568c38588c38598c375a8c375b8d365c8d365d8d355e8d355f8d34608d34618d33628d"
    "33638d32648e32658e31668e31678e31688e30698e306a8e2f6b8e2f6c8e2e6d8e2e6e8e2e6f8e2d708e2d718e2c718e"
    "2c728e2c738e2b748e2b758e2a768e2a778e2a788e29798e297a8e297b8e287c8e287d8e277e8e277f8e27808e26818e"
    "26828e26828e25838e25848e25858e24868e24878e23888e23898e238a8d228b8d228c8d228d8d218e8d218f8d21908d"
    "21918c20928c20928c20938c1f948c1f958b1f968b1f978b1f988b1f998a1f9a8a1e9b8a1e9c891e9d891f9e891f9f88"
    "1fa0881fa1881fa1871fa28720a38620a48621a58521a68522a78522a88423a98324aa8325ab8225ac8226ad8127ad81"
    "28ae8029af7f2ab07f2cb17e2db27d2eb37c2fb47c31b57b32b67a34b67935b77937b87838b9773aba763bbb753dbc74"
    "3fbc7340bd7242be7144bf7046c06f48c16e4ac16d4cc26c4ec36b50c46a52c56954c56856c66758c7655ac8645cc863"
    "5ec96260ca6063cb5f65cb5e67cc5c69cd5b6ccd5a6ece5870cf5773d05675d05477d1537ad1517cd2507fd34e81d34d"
    "84d44b86d54989d5488bd6468ed64590d74393d74195d84098d83e9bd93c9dd93ba0da39a2da37a5db36a8db34aadc32"
    "addc30b0dd2fb2dd2db5de2bb8de29bade28bddf26c0df25c2df23c5e021c8e020cae11fcde11dd0e11cd2e21bd5e21a"
    "d8e219dae319dde318dfe318e2e418e5e419e7e419eae51aece51befe51cf1e51df4e61ef6e620f8e621fbe723fde725"
)
VIRIDIS = np.frombuffer(bytes.fromhex(_VIRIDIS_HEX), dtype=np.uint8).reshape(256, 3)

PAD = 6
CAPTION_H = 18
TITLE_H = 26
_BG = (255, 255, 255)
_EMPTY = (225, 225, 225)


def sheet_layout(n_images: int) -> tuple[int, int]:
    """(rows, cols) of tiles on a latent's sheet: cols = ceil(√n)."""
    cols = max(1, math.ceil(math.sqrt(n_images)))
    return math.ceil(n_images / cols), cols


def sheet_size(n_images: int, tile_size: int) -> tuple[int, int]:
    """Pixel (width, height) of every ``latent_<id>.png`` for these settings."""
    rows, cols = sheet_layout(n_images)
    width = cols * tile_size + (cols + 1) * PAD
    height = TITLE_H + rows * (tile_size + CAPTION_H) + (rows + 1) * PAD
    return width, height


def heat_overlay(
    patch_map: np.ndarray, grid: tuple[int, int], size: int, *, vmax: float, alpha_max: float = 0.7
) -> Image.Image:
    """RGBA overlay [size × size]: viridis colour of value / vmax, alpha ∝ value (nearest upsampling)."""
    rows, cols = grid
    v = np.asarray(patch_map, dtype=np.float32).reshape(rows, cols)
    v = np.clip(np.nan_to_num(v / vmax if vmax > 0 else v * 0), 0.0, 1.0)
    rgba = np.empty((rows, cols, 4), dtype=np.uint8)
    rgba[..., :3] = VIRIDIS[np.rint(v * 255).astype(np.int64)]
    rgba[..., 3] = np.rint(v * alpha_max * 255).astype(np.uint8)
    return Image.fromarray(rgba, mode="RGBA").resize((size, size), Image.Resampling.NEAREST)


def _fit(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> str:
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def _fit_tail(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> str:
    """``text``, or "…" + as much of its end as fits: the end of an image id is what tells images apart."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength("…" + text, font=font) > width:
        text = text[1:]
    return "…" + text


def _latent_sheet(
    ds_l: xr.Dataset,
    lid: int,
    *,
    tile_of: Callable[[int], Image.Image],
    grid: tuple[int, int],
    image_ids: Sequence[str],
    n_images: int,
    tile_size: int,
    random_weights: bool,
) -> Image.Image:
    rows, cols = sheet_layout(n_images)
    sheet = Image.new("RGB", sheet_size(n_images, tile_size), _BG)
    draw = ImageDraw.Draw(sheet)
    font = label_font(12)
    vmax = float(ds_l["max_value"])
    title = f"latent {lid}   freq {float(ds_l['freq']):.2e}   max {vmax:.3g}   mean {float(ds_l['mean_value']):.3g}"
    if random_weights:
        title += "   [RANDOM WEIGHTS]"
    draw.text((PAD, 6), _fit(draw, title, font, sheet.width - 2 * PAD), fill=(0, 0, 0), font=font)
    imgs = np.asarray(ds_l["top_image"].values)
    vals = np.asarray(ds_l["top_value"].values)
    maps = np.asarray(ds_l["top_patch_map"].values)
    for r in range(n_images):
        x0 = PAD + (r % cols) * (tile_size + PAD)
        y0 = TITLE_H + PAD + (r // cols) * (tile_size + CAPTION_H + PAD)
        if r >= imgs.shape[0] or imgs[r] < 0:
            draw.rectangle([x0, y0, x0 + tile_size - 1, y0 + tile_size - 1], fill=_EMPTY)
            continue
        idx = int(imgs[r])
        tile = Image.alpha_composite(tile_of(idx), heat_overlay(maps[r], grid, tile_size, vmax=vmax))
        sheet.paste(tile.convert("RGB"), (x0, y0))
        # the file name without its folders (ADE20K ids all start "images/training/")
        name = str(image_ids[idx]).rsplit("/", 1)[-1] if idx < len(image_ids) else str(idx)
        value = f"{vals[r]:.3g}  "
        caption = value + _fit_tail(draw, name, font, tile_size - int(draw.textlength(value, font=font)))
        draw.text((x0, y0 + tile_size + 2), caption, fill=(0, 0, 0), font=font)
    return sheet


_CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
.banner { background: #D55E00; color: #fff; padding: .6em 1em; font-weight: 600; margin-bottom: 1em; }
table { border-collapse: collapse; }
th, td { padding: .3em .7em; border-bottom: 1px solid #ddd; text-align: right; vertical-align: middle; }
th { cursor: pointer; background: #f4f4f4; position: sticky; top: 0; user-select: none; }
th.sorted-asc::after { content: " ▲"; } th.sorted-desc::after { content: " ▼"; }
td.thumb { text-align: left; }
img { image-rendering: auto; border: 1px solid #ccc; }
"""

_JS = """
document.querySelectorAll('th[data-col]').forEach(function (th) {
  th.addEventListener('click', function () {
    var table = th.closest('table'), body = table.tBodies[0], col = +th.dataset.col;
    var asc = !th.classList.contains('sorted-asc');
    table.querySelectorAll('th').forEach(function (h) { h.classList.remove('sorted-asc', 'sorted-desc'); });
    th.classList.add(asc ? 'sorted-asc' : 'sorted-desc');
    var rows = Array.from(body.rows);
    rows.sort(function (a, b) {
      var x = parseFloat(a.cells[col].dataset.v), y = parseFloat(b.cells[col].dataset.v);
      if (isNaN(x)) return 1; if (isNaN(y)) return -1;
      return asc ? x - y : y - x;
    });
    rows.forEach(function (r) { body.appendChild(r); });
  });
});
"""


def write_gallery(
    ds: xr.Dataset,
    latent_ids: Sequence[int] | np.ndarray,
    *,
    image_loader: Callable[[int], Image.Image],
    grid: tuple[int, int],
    out_dir: Path,
    image_ids: Sequence[str],
    random_weights: bool,
    n_images: int = 9,
    tile_size: int = 160,
    thumb_width: int = 240,
) -> Path:
    """Write ``out_dir/latent_<id>.png`` for each latent and ``out_dir/index.html``.

    Args:
        ds: from :func:`pipeline.sae.latents.latent_stats`.
        latent_ids: which latents (e.g. from ``select_latents``).
        image_loader: image index → the image as the model saw it (after any crop); it is
            resized to a square ``tile_size`` tile.
        grid: (rows, cols) of the patch grid; rows · cols must equal the ``patch`` dim.
        image_ids: names of the images, indexed by image index (captions).
        random_weights: add a banner (and a sheet title note) saying the model is random.
        n_images: top images per latent (≤ the ``rank`` dim; missing ones show as grey tiles).
    Returns:
        The path of ``index.html``.
    """
    rows, cols = grid
    if rows * cols != ds.sizes["patch"]:
        raise ValueError(f"grid {grid} has {rows * cols} cells, the stats have {ds.sizes['patch']} patches")
    if not 1 <= n_images <= ds.sizes["rank"]:
        raise ValueError(f"n_images must be in [1, {ds.sizes['rank']}], got {n_images}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    @lru_cache(maxsize=512)
    def tile_of(idx: int) -> Image.Image:
        img = image_loader(idx).convert("RGB")
        return img.resize((tile_size, tile_size), Image.Resampling.BILINEAR).convert("RGBA")

    rows_html = []
    for lid in [int(i) for i in latent_ids]:
        ds_l = ds.sel(latent=lid)
        sheet = _latent_sheet(
            ds_l.isel(rank=slice(0, n_images)),
            lid,
            tile_of=tile_of,
            grid=grid,
            image_ids=image_ids,
            n_images=n_images,
            tile_size=tile_size,
            random_weights=random_weights,
        )
        name = f"latent_{lid}.png"
        with atomic.replacing(out_dir / name) as tmp:
            sheet.save(tmp)
        freq = float(ds_l["freq"])
        mx, mean = float(ds_l["max_value"]), float(ds_l["mean_value"])
        n_top = int((np.asarray(ds_l["top_image"].values) >= 0).sum())
        logf = math.log10(freq) if freq > 0 else float("-inf")
        cells = [
            (lid, f'<a href="{name}">{lid}</a>'),
            (freq, f"{freq:.2e}"),
            (logf, f"{logf:.2f}"),
            (mx, f"{mx:.3g}"),
            (mean, f"{mean:.3g}"),
            (n_top, str(n_top)),
        ]
        tds = "".join(f'<td data-v="{v}">{text}</td>' for v, text in cells)
        tds += (
            f'<td class="thumb"><a href="{name}"><img src="{name}" loading="lazy" '
            f'width="{thumb_width}" alt="latent {lid}"></a></td>'
        )
        rows_html.append(f'<tr id="latent-{lid}">{tds}</tr>')

    headers = ["latent", "frequency", "log10 freq", "max value", "mean value", f"images in top {ds.sizes['rank']}"]
    ths = "".join(f'<th data-col="{i}">{html.escape(h)}</th>' for i, h in enumerate(headers))
    ths += "<th>top images</th>"
    banner = f'<div class="banner">{html.escape(RANDOM_WEIGHTS_NOTE)}</div>' if random_weights else ""
    attrs = ds.attrs
    summary = (
        f"{len(rows_html)} latents of {ds.sizes['latent']}; "
        f"{attrs.get('n_images', '?')} images, {attrs.get('n_tokens', '?')} patch tokens; "
        "heat maps: viridis, opacity ∝ value / latent max. Click a header to sort."
    )
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>SAE latent gallery</title>
<style>{_CSS}</style></head>
<body>
{banner}
<h1>SAE latent gallery</h1>
<p>{html.escape(summary)}</p>
<table><thead><tr>{ths}</tr></thead>
<tbody>
{chr(10).join(rows_html)}
</tbody></table>
<script>{_JS}</script>
</body></html>
"""
    index = out_dir / "index.html"
    atomic.write_text(index, page)
    return index


__all__ = ["VIRIDIS", "heat_overlay", "sheet_layout", "sheet_size", "write_gallery"]
