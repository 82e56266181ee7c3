"""``ganforge stylize --model RUN``: a trained fast stylizer applied to one image or a folder of images.

The run (or one of its checkpoints) is found by ``artifacts.resolve``, its recipe validated like any recipe, the
network built from the recipe's ``network`` block and its tensors read through the safe checkpoint reader
(safetensors + JSON, verified against the manifest: nothing is unpickled) after a shape check against the
network. Every input is opened (header and integrity) before the first image is stylised, so a bad file is one
line naming it with nothing half-written; images of one size are stylised together, ``batch`` at a time.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from ..errors import GanforgeError
from .artifacts import ArtifactError, _device, check_tensors, resolve


@dataclass
class Stylizer:
    net: object  # the transform network, eval mode, frozen, on its device
    run: Path
    step: int


def load_stylizer(target: str, device: str = "cpu") -> Stylizer:
    import torch

    from .. import registry

    src = resolve(target, action="stylize with")
    for d, reason in src.skipped:
        print(f"warning: skipping checkpoint {d.name}: {reason}", file=sys.stderr)
    task = getattr(src.recipe, "task", "gan")
    if src.kind != "checkpoint" or task != "fast_style":
        what = "an exported generator" if src.kind != "checkpoint" else f"a task: {task} run"
        raise ArtifactError(f"--model {target}: not a fast-stylizer run ({what}); train one with "
                            "`ganforge run recipes/fast_style.yaml`")
    plugin = registry.build("style_network", src.recipe.network, "network")
    with torch.random.fork_rng(devices=[]):  # its random init is replaced next: leave the caller's RNG alone
        net = plugin.build()
    state = src.state().get("task") or {}
    tensors = (state.get("modules") or {}).get("net") if isinstance(state, dict) else None
    where = src.ckpt_dir / "state.safetensors"
    if not isinstance(tensors, dict):
        raise ArtifactError(f"{where}: no task.modules.net in the checkpoint")
    check_tensors(net, tensors, where, src.recipe.network["type"], prefix="task.modules.net.")
    net.load_state_dict(tensors)
    return Stylizer(net.to(_device(device)).eval().requires_grad_(False), src.run_dir, src.step)


def _inputs(content: str, out: Path) -> list[tuple[Path, Path]]:
    """(input file, its name relative to the input folder) for one image or every image under a folder (not
    those under ``out``, which a second run would otherwise stylise again)."""
    from ..datatools.pack import IMAGE_EXTS, scan

    p = Path(content).expanduser()
    if p.is_file():
        return [(p, Path(p.name))]
    if not p.is_dir():
        raise GanforgeError(f"--content {p}: no such image file or folder")
    skip = out.resolve()
    found = [(p / rel, Path(rel)) for rel in scan(str(p))[0]]
    found = [(f, rel) for f, rel in found if skip not in f.resolve().parents]
    if not found:
        raise GanforgeError(f"--content {p}: no image files ({'/'.join(e[1:] for e in IMAGE_EXTS)}) in the folder")
    return found


def _open_all(files: list[tuple[Path, Path]], size: int | None) -> list[tuple[Path, Path, tuple[int, int]]]:
    """Every input's output size, each file checked whole (``verify``) before any work is done."""
    from PIL import Image

    from ..tasks.style_images import scaled_size

    out = []
    for f, rel in files:
        try:
            with Image.open(f) as img:
                wh = img.size
                img.verify()  # integrity of the whole file (a truncated PNG fails here), without decoding pixels
        except Exception as e:  # noqa: BLE001 - PIL raises many types for a file that is not a readable image
            raise GanforgeError(f"content image {f}: cannot read it as an image "
                                f"({' '.join(str(e).split())[:160]})") from None
        out.append((f, rel, scaled_size(*wh, size)))
    return out


def stylize_files(stylizer: Stylizer, content: str, out: str | None, size: int | None = None, batch: int = 8,
                  preserve_colours: bool = False, log=print) -> list[Path]:
    """Stylise ``content`` (an image, or every image under a folder) into ``out`` (a file for one image, a
    folder for a folder: same relative names, .png); returns the files written."""
    import torch

    from ..tasks.style_images import keep_colours, load_image, save_image

    if batch < 1:
        raise GanforgeError(f"--batch {batch}: must be >= 1")
    if size is not None and size < 8:
        raise GanforgeError(f"--size {size}: must be >= 8")
    folder = Path(content).expanduser().is_dir()
    dest = Path(out or ("stylized" if folder else "stylized.png"))
    if folder and dest.is_file():
        raise GanforgeError(f"--out {dest}: is a file; a folder of images is written to a folder")
    if not folder and dest.is_dir():
        dest = dest / f"{Path(content).stem}.png"
    items = _open_all(_inputs(content, dest), size)
    by_size: dict[tuple[int, int], list] = {}
    for f, rel, wh in items:
        by_size.setdefault(wh, []).append((f, rel))  # one batch holds images of one size
    dev = next(stylizer.net.parameters()).device
    written = []
    for (w, h), group in by_size.items():
        for i in range(0, len(group), batch):
            chunk = group[i:i + batch]
            x = torch.cat([load_image(str(f), size, "content") for f, _ in chunk]).to(dev)
            try:
                with torch.no_grad():
                    y = stylizer.net(x).clamp(-1, 1)
            except (RuntimeError, ValueError) as e:  # e.g. an image too small for the network's downsampling
                raise GanforgeError(f"content image {chunk[0][0]} ({w}x{h}): the network cannot stylise it "
                                    f"({' '.join(str(e).split())[:160]})") from None
            if preserve_colours:
                y = keep_colours(y, x)
            for (_, rel), img in zip(chunk, y):
                target = dest / rel.with_suffix(".png") if folder else dest
                save_image(img[None], target)
                written.append(target)
    log(f"stylised {len(written)} image(s) with {stylizer.run} (step {stylizer.step}) -> {dest}")
    return written
