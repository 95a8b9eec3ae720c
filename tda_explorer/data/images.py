"""Image-folder datasets: one sub-folder of images per class, pixels scaled by their bit depth.

Pixel values become `float32` in [0, 1] from the real range of each image's type:

- 8-bit images (modes 1, L, LA, P, RGB, RGBA, CMYK, ...): value / 255 (PIL converts to L / RGB;
  alpha is dropped, palettes are expanded);
- 16-bit grayscale (PIL modes `I;16*`, e.g. 16-bit PNG / TIFF): value / 65535;
- 32-bit integer grayscale (PIL mode `I`, e.g. int32 TIFF): value / (2**31 - 1), the largest value of
  the type; negative values are refused naming the file (there is no [0, 1] reading of them);
- 32-bit float grayscale (PIL mode `F`, float TIFF): taken as already in [0, 1] (the usual
  convention for float images) and kept as is; a value outside [0, 1] or not finite is refused
  naming the file and the range found, with the advice to rescale.

High-bit-depth images are resized in float (PIL mode `F`, bilinear), so no precision is lost to
an 8-bit round trip; a grayscale image in an RGB dataset is repeated over the three channels.
(PIL reads 16-bit-per-channel RGB PNGs as 8-bit RGB; that is PIL's reading, not ours.)

Bounds: each side of `image_size` at most `MAX_IMAGE_SIDE`, and the whole dataset at most
`MAX_TOTAL_VALUES` float32 values (n x C x H x W), checked from the image headers before any
pixel is decoded; beyond either, a clear ConfigError / DataError says what to pass instead.
Single images over PIL's decompression-bomb limit are refused too.

Symbolic links whose target lies outside the root folder (a class folder or an image) are
refused naming the link, unless `follow_symlinks=True`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from tda_explorer.data._common import fingerprint, make_splits, spec_dict, split_by_fractions
from tda_explorer.data.example_set import DatasetSplits, ExampleSet
from tda_explorer.data.tables import existing
from tda_explorer.errors import ConfigError, DataError

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
MAX_IMAGE_SIDE = 4096
"""Largest height / width accepted in `image_size`."""
MAX_TOTAL_VALUES = 2**28
"""Most float32 values (images x channels x height x width, 1 GiB) a loaded image folder may hold."""
_GRAY_MODES = ("L", "1", "LA")
_HIGH_DEPTH = {
    "I;16": 65535.0,
    "I;16L": 65535.0,
    "I;16B": 65535.0,
    "I;16N": 65535.0,
    "I": 2.0**31 - 1,
    "F": 1.0,
}


def _image_size(image_size: object) -> tuple[int, int] | None:
    if image_size is None:
        return None
    ok = isinstance(image_size, (tuple, list)) and len(image_size) == 2
    if not ok or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in image_size):
        raise ConfigError(f"image_size must be (height, width) with two positive ints, got {image_size!r}.")
    if max(image_size) > MAX_IMAGE_SIDE:
        raise ConfigError(
            f"image_size={tuple(image_size)} is over the limit of {MAX_IMAGE_SIDE} pixels per side; pass a "
            f"smaller image_size, e.g. (224, 224)."
        )
    return int(image_size[0]), int(image_size[1])


@dataclass
class _Header:
    """What an image's header says: its size (width, height), PIL mode and format."""

    file: Path
    size: tuple[int, int]
    mode: str
    fmt: str | None


def _cannot_read(file: Path, root: Path, e: Exception) -> DataError:
    rel = file.relative_to(root).as_posix()
    return DataError(f"{rel}: cannot read this image ({e}); replace or remove the file. (file: {file})")


def _open(file: Path, root: Path, load: bool) -> tuple[Image.Image, _Header]:
    """Open an image (decoding its pixels when `load`); DataError for unreadable / oversized files."""
    try:
        with warnings.catch_warnings():  # PIL only warns between MAX_IMAGE_PIXELS and twice that: refuse too
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(file) as im:
                header = _Header(file, im.size, im.mode, im.format)
                if not load:
                    return im, header
                im.load()
                return (im.copy() if im.mode != "P" else im.convert("RGBA")), header
    except (OSError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise _cannot_read(file, root, e) from e


def _high_depth(im: Image.Image, header: _Header, root: Path) -> np.ndarray:
    """A 16-bit / int32 / float image as `float64 [H, W]` in [0, 1] (module docstring rule)."""
    mode = header.mode
    a = np.asarray(im, dtype=np.float64)
    scale = 65535.0 if mode == "I" and header.fmt == "PNG" else _HIGH_DEPTH[mode]  # some PILs read PNG16 as I
    rel = header.file.relative_to(root).as_posix()
    if mode == "F" and (not np.isfinite(a).all() or a.min() < 0 or a.max() > 1):
        raise DataError(
            f"{rel}: float image with values in [{a.min():g}, {a.max():g}]; float images are read as already "
            f"in [0, 1]: rescale it to [0, 1] (or save it as 8/16-bit). (file: {header.file})"
        )
    if mode != "F" and a.min() < 0:
        raise DataError(
            f"{rel}: 32-bit integer image with negative values (min {a.min():g}); pixel values must be >= 0: "
            f"shift / rescale it, or save it as 8/16-bit. (file: {header.file})"
        )
    return a / scale


def _pixels(im: Image.Image, header: _Header, root: Path, gray: bool, size: tuple[int, int]) -> np.ndarray:
    """One image as `float32 [C, H, W]` in [0, 1] at `size` = (H, W)."""
    if header.mode not in _HIGH_DEPTH:  # 8-bit: PIL converts and resizes in uint8, as always
        im = im.convert("L" if gray else "RGB")
        if im.size != (size[1], size[0]):
            im = im.resize((size[1], size[0]), Image.Resampling.BILINEAR)
        a = np.asarray(im, dtype=np.float32) / 255.0
        return a[None] if gray else a.transpose(2, 0, 1)
    a = _high_depth(im, header, root)
    if a.shape != size:
        resized = Image.fromarray(a.astype(np.float32), mode="F").resize(
            (size[1], size[0]), Image.Resampling.BILINEAR
        )
        a = np.clip(np.asarray(resized, dtype=np.float64), 0.0, 1.0)
    a = a.astype(np.float32)[None]
    return a if gray else np.repeat(a, 3, axis=0)


def _inside(root: Path, p: Path, follow: bool) -> None:
    """Refuse `p` if it is a symlink (or inside one) whose target leaves `root`, unless `follow`."""
    if follow:
        return
    target = p.resolve()
    if not target.is_relative_to(root):
        rel = p.relative_to(root).as_posix()
        raise DataError(
            f"{rel}: is a symbolic link to {target}, outside the image folder; copy the file(s) into the "
            f"folder, or pass follow_symlinks=True to read them anyway. (folder: {root})"
        )


def _list_files(root: Path, follow_symlinks: bool) -> tuple[list[str], list[Path], list[int]]:
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if len(classes) < 2:
        raise DataError(
            f"{root.name}: found {len(classes)} class sub-folder(s) {classes}; an image folder needs one "
            f"sub-folder per class and at least two classes. (folder: {root})"
        )
    files: list[Path] = []
    labels: list[int] = []
    for k, name in enumerate(classes):
        _inside(root, root / name, follow_symlinks)
        found = sorted(
            f
            for f in (root / name).iterdir()
            if f.is_file() and not f.name.startswith(".") and f.suffix.lower() in IMAGE_EXTENSIONS
        )
        if not found:
            raise DataError(
                f"{name}/: class folder has no images ({', '.join(IMAGE_EXTENSIONS)}); add images or remove "
                f"the folder. (folder: {root / name})"
            )
        for f in found:
            _inside(root, f, follow_symlinks)
        files += found
        labels += [k] * len(found)
    return classes, files, labels


def load_image_folder(
    path: str | Path,
    image_size: tuple[int, int] | list[int] | None = None,
    grayscale: bool | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
    follow_symlinks: bool = False,
) -> DatasetSplits:
    """A folder with one sub-folder of images per class (class names = sorted sub-folder names).

    Files with an image extension (`IMAGE_EXTENSIONS`) directly inside each class folder are read;
    other files and hidden entries are ignored. Pixels: see the module docstring.

    Args:
        path: the root folder.
        image_size: `(H, W)` to resize every image to (each side <= `MAX_IMAGE_SIDE`); default: all
            images must share one size.
        grayscale: True / False forces one / three channels; default one channel iff every
            image is grayscale (8-bit "L", "1", "LA", or 16-bit / int32 / float).
        val_fraction: fraction of images for validation.
        test_fraction: fraction of images for test.
        seed: seed of the split.
        follow_symlinks: read symbolic links whose target is outside the folder (refused by default).

    Returns:
        DatasetSplits of kind "image" with inputs `float32 [n, C, H, W]` in [0, 1] (C = 1 or 3) and
        ids the relative paths "class/file.png"; `spec["fingerprint"]` hashes the image files.
    """
    size = _image_size(image_size)
    if grayscale is not None and not isinstance(grayscale, bool):
        raise ConfigError(f"grayscale must be True, False or None, got {grayscale!r}.")
    if not isinstance(follow_symlinks, bool):
        raise ConfigError(f"follow_symlinks must be True or False, got {follow_symlinks!r}.")
    root = existing(path, folder=True).resolve()
    classes, files, label_list = _list_files(root, follow_symlinks)
    headers = [_open(f, root, load=False)[1] for f in files]
    if size is None:
        w0, h0 = headers[0].size
        for h in headers:
            if h.size != (w0, h0):
                rel, first = h.file.relative_to(root).as_posix(), files[0].relative_to(root).as_posix()
                raise DataError(
                    f"{rel}: image is {h.size[1]}x{h.size[0]} (height x width) but {first} is {h0}x{w0}; "
                    f"images must share one size: pass image_size=({h0}, {w0}) to resize all. (file: {h.file})"
                )
        size = (h0, w0)
    gray_modes = (*_GRAY_MODES, *_HIGH_DEPTH)
    gray = all(h.mode in gray_modes for h in headers) if grayscale is None else grayscale
    channels = 1 if gray else 3
    total = len(files) * channels * size[0] * size[1]
    if total > MAX_TOTAL_VALUES:
        raise DataError(
            f"{root.name}: {len(files)} images of {channels}x{size[0]}x{size[1]} would take "
            f"{total * 4 / 2**30:.1f} GiB as float32, over the limit of {MAX_TOTAL_VALUES * 4 / 2**30:.0f} GiB; "
            f"pass a smaller image_size or use fewer images. (folder: {root})"
        )
    stacked = np.empty((len(files), channels, *size), dtype=np.float32)
    for i, f in enumerate(files):
        im, header = _open(f, root, load=True)
        stacked[i] = _pixels(im, header, root, gray, size)
    ids = tuple(f.relative_to(root).as_posix() for f in files)
    labels = torch.tensor(label_list, dtype=torch.int64)
    full = ExampleSet(ids, torch.from_numpy(stacked), labels, tuple(classes), "image", name=root.name)
    parts = split_by_fractions(len(full), val_fraction, test_fraction, seed, root.name)
    options = {
        "image_size": None if image_size is None else list(image_size),
        "grayscale": grayscale,
        "val_fraction": val_fraction,
        "test_fraction": test_fraction,
        "follow_symlinks": follow_symlinks,
    }
    spec = {**spec_dict("images", path, options, seed), "fingerprint": fingerprint(files, root)}
    return make_splits(full, parts, spec)
