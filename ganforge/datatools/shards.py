"""Shard URLs, reading one shard, decoding one sample: the pieces every data path shares.

Training (``ganforge.stream``), evaluation (``datatools.epoch``), ``ganforge data inspect`` and the tests all
decode through ``decode_image``, so "this sample is unreadable" means the same thing everywhere and a count
reported by ``inspect`` is the count training will skip.
"""

from __future__ import annotations

import glob
import io
import os
import re
from urllib.parse import urlparse

import braceexpand
import numpy as np
import torch
from PIL import Image
from webdataset.gopen import gopen, gopen_schemes
from webdataset.tariterators import group_by_keys, tar_file_expander

from ..errors import DataError
from .imaging import resize_crop

IMAGE_KEYS = ("png", "jpg", "jpeg", "webp", "bmp")
# Schemes webdataset's gopen can open; s3:// is deliberately absent (webdataset has no s3 support).
_REMOTE_SCHEMES = {"http", "https", "pipe"} | {k for k in gopen_schemes if k != "__default__"}


# ----------------------------------------------------------------------------------------------------- URLs
def expand_urls(spec: str | list[str], where: str = "data.urls") -> list[str]:
    """Expand ``spec`` (brace patterns, ``::``-separated or a list; local globs) into shard URLs.

    Local paths must exist (the error names the first missing one); remote URLs are passed through unchecked
    because checking them would cost a request per shard on every rank.
    """
    if isinstance(spec, str):
        parts = spec.split("::")
    elif isinstance(spec, (list, tuple)) and all(isinstance(p, str) for p in spec):
        parts = list(spec)
    else:
        raise DataError(f"{where}: expected a URL pattern string or a list of them, got {spec!r}")
    urls: list[str] = []
    for part in (p.strip() for p in parts):
        if not part:
            continue
        try:
            expanded = list(braceexpand.braceexpand(part))
        except Exception as e:  # unbalanced braces and the like
            raise DataError(f"{where}: bad URL pattern {part!r}: {e}") from e
        for url in expanded:
            urls.extend(_check_url(url, where))
    if not urls:
        raise DataError(f"{where}: URL pattern {spec!r} gives no shards")
    return urls


def _check_url(url: str, where: str) -> list[str]:
    scheme = urlparse(url).scheme
    if url.startswith("pipe:") or scheme in _REMOTE_SCHEMES - {"file"}:
        return [url]
    if scheme == "s3":
        raise DataError(f"{where}: {url}: no s3:// support; use 'pipe:aws s3 cp {url} -'")
    if scheme not in ("", "file"):
        raise DataError(f"{where}: {url}: unsupported URL scheme {scheme!r}")
    path = os.path.abspath(os.path.expanduser(url[len("file://") :] if scheme == "file" else url))
    if glob.has_magic(path):
        matches = sorted(p for p in glob.glob(path) if os.path.isfile(p))
        if not matches:
            raise DataError(f"{where}: no file matches {url}")
        return matches
    if not os.path.isfile(path):
        raise DataError(f"{where}: shard not found: {path}")
    # Absolute, so workers or later code that change directory still find it.
    return [path]


# --------------------------------------------------------------------------------------------- shard reading
def read_shard(url: str) -> tuple[list[dict], bool]:
    """All samples of one shard (undecoded) and whether the archive was damaged part-way.

    A shard that yields nothing and errors (missing, not a tar, failing pipe, HTTP error) is a user error:
    DataError naming it. A shard damaged after some members (truncated download) keeps what was read; the
    damage is reported so it can be counted as skipped. The whole shard is held in memory (the training stream
    shuffles it), which bounds useful shard size to what a worker can hold: a few hundred MB.
    """
    errors: list[BaseException] = []

    def handler(exn: BaseException) -> bool:  # webdataset calls this instead of raising; keep going
        errors.append(exn)
        return True

    try:
        stream = gopen(url)
    except FileNotFoundError as e:
        raise DataError(f"shard not found: {url}") from e
    except Exception as e:
        raise DataError(f"cannot open shard {url}: {e}") from e
    try:
        files = tar_file_expander([{"url": url, "stream": stream}], handler=handler)
        samples = list(group_by_keys(files, handler=handler))
    finally:
        try:
            stream.close()  # for pipe:/http URLs this waits for the command and raises on a non-zero exit
        except Exception as e:
            errors.append(e)
    if errors and not samples:
        raise DataError(f"cannot read shard {url}: {_why(url, errors)}")
    return samples, bool(errors)


_CURL_EXIT = {6: "cannot resolve host", 7: "cannot connect", 22: "HTTP error (e.g. 404)", 28: "timed out"}


def _why(url: str, errors: list[BaseException]) -> str:
    """One readable reason. webdataset reports a failed pipe/curl as "(args...): exit N (read) {...}" and
    appends stream objects to exn.args; a failed command outranks the "empty file" it causes."""
    texts = [str(e.args[0]) if e.args else type(e).__name__ for e in errors]
    for text in texts:
        m = re.search(r": exit (-?\d+) \(", text)
        if m:
            code = int(m.group(1))
            if url.startswith(("http://", "https://")):
                return f"download failed: {_CURL_EXIT.get(code, f'curl exit status {code}')}"
            return f"command failed with exit status {code}"
    return f"not a tar archive ({texts[0].splitlines()[0] if texts[0] else 'unreadable'})"


# ------------------------------------------------------------------------------------------------- samples
def image_bytes(sample: dict) -> bytes | None:
    data = next((sample[k] for k in IMAGE_KEYS if k in sample), None)
    if data is None:  # also accept compound extensions such as "image.png"
        data = next((v for k, v in sample.items() if k.rsplit(".", 1)[-1] in IMAGE_KEYS), None)
    return data


def label_of(sample: dict) -> int:
    """The integer class in ``cls`` (webdataset's convention), or -1 when the sample has none."""
    raw = sample.get("cls")
    if raw is None:
        return -1
    try:
        return int(raw.decode() if isinstance(raw, (bytes, bytearray)) else raw)
    except (ValueError, UnicodeDecodeError):
        return -1


def decode_image(sample: dict, resolution: int | None, mode: str = "RGB") -> Image.Image | None:
    """Decode, convert and (when ``resolution`` is given) resize + centre-crop one sample; None when it has no
    readable image (the caller skips and counts it)."""
    data = image_bytes(sample)
    if data is None:
        return None
    try:
        img = Image.open(io.BytesIO(data))
        if img.format == "JPEG" and resolution is not None:
            img.draft(mode, (resolution, resolution))  # DCT-domain downscale: much faster for big JPEGs
        img = img.convert(mode)  # forces a full decode, so truncated files fail here, not later
        return img if resolution is None else resize_crop(img, resolution)
    except Exception:  # PIL raises many types (OSError, SyntaxError, ValueError, DecompressionBombError...)
        return None


def to_array(img: Image.Image, flip: bool) -> np.ndarray:
    """HWC uint8 view (mirrored when ``flip``); batching copies it, so no copy here."""
    arr = np.asarray(img, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return arr[:, ::-1] if flip else arr


class Batcher:
    """HWC uint8 arrays -> float32 ``[B, C, H, W]`` in [-1, 1], values ``x / 127.5 - 1``.

    Measured on the 2-core VM (256x256, batch 64), per image: JPEG decode ~0.55 ms, the conversion ~0.23 ms,
    but first touch of freshly allocated memory ~0.5 ms (4 KiB page faults). So: one uint8 CHW staging buffer
    per stream, reused across batches, filled in numpy, then ONE float conversion per batch (per-image tensor
    conversion cost as much as JPEG decoding at 64x64). The float output must be fresh memory (the consumer
    keeps it). In a DataLoader worker it is allocated in shared memory straight away, as torch's
    default_collate does: otherwise torch copies every batch into shared memory to send it (50 MB per batch of
    64 at 256x256).
    (Transparent huge pages for the batch memory cut the fault cost 4x in a microbenchmark but made it 10x
    worse in a sustained run on the same VM -- synchronous compaction -- so they are not used.)
    """

    def __init__(self):
        self._buf: np.ndarray | None = None

    def __call__(self, arrays: list[np.ndarray]) -> torch.Tensor:
        h, w, c = arrays[0].shape
        shape = (len(arrays), c, h, w)
        if self._buf is None or self._buf.shape != shape:
            self._buf = np.empty(shape, dtype=np.uint8)
        buf = self._buf
        for i, arr in enumerate(arrays):
            buf[i] = arr.transpose(2, 0, 1)
        return _fresh_float(shape).copy_(torch.from_numpy(buf)).div_(127.5).sub_(1.0)


def _fresh_float(shape: tuple[int, ...]) -> torch.Tensor:
    if torch.utils.data.get_worker_info() is not None:
        storage = torch.UntypedStorage._new_shared(int(np.prod(shape)) * 4)
        return torch.empty(0, dtype=torch.float32).set_(storage).view(shape)
    return torch.empty(shape, dtype=torch.float32)


def to_batch(arrays: list[np.ndarray]) -> torch.Tensor:
    """One-off ``Batcher()(arrays)``, for callers that build few batches."""
    return Batcher()(arrays)
