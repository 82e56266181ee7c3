"""``ganforge stylize``: neural style transfer (Gatys et al.) through the engine's own loop.

With no arguments it repaints an embedded scene in an embedded style with random multi-scale filters (no weights to
fetch). Flags are shorthands for recipe keys (``--size 256`` is ``size=256``); dotted overrides work as for
``ganforge run``. The run lives in ``runs/<name>/`` like any other (log.jsonl, samples/, checkpoints/): running the
same command again resumes it, or just rewrites the output when it is finished.
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

import click

from .errors import GanforgeError


def _name(content: str | None, styles: tuple[str, ...]) -> str:
    """A run per content/style pair, so stylising another image never collides with an earlier run's checkpoint."""
    stems = [Path(content).stem if content else "embedded", "_".join(Path(p).stem for p in styles) or "embedded"]
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", f"stylize-{stems[0]}-{stems[1]}")[:100]


def _write_png(img, out: Path) -> None:
    import numpy as np
    from PIL import Image

    arr = ((img[0].float().cpu().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    tmp = out.with_name(f".{out.name}.tmp.png")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.ascontiguousarray(arr)).save(tmp)
        tmp.replace(out)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise GanforgeError(f"--out {out}: cannot write it ({e.strerror or e})") from None


@click.command("stylize", context_settings={"ignore_unknown_options": True})
@click.argument("overrides", nargs=-1)
@click.option("--recipe", "recipe_path", metavar="YAML", help="A style recipe (recipes/style_transfer.yaml); "
              "default: the built-in defaults.")
@click.option("--content", metavar="IMAGE", help="Image whose layout is kept (default: an embedded scene).")
@click.option("--style", "styles", metavar="IMAGE", multiple=True,
              help="Image whose texture and colours are copied (default: embedded); repeat to blend several.")
@click.option("--style-weight", "style_weights", type=float, multiple=True, metavar="W",
              help="Weight of each --style, in order (default: equal).")
@click.option("--out", "out", default="stylized.png", show_default=True, metavar="PNG", help="Where the result goes.")
@click.option("--size", type=int, help="Longer side of the output in pixels (recipe key size).")
@click.option("--steps", type=int, help="Optimisation steps (train.steps); L-BFGS runs optimizer.max_iter each.")
@click.option("--init", type=click.Choice(["content", "noise"]), help="Start from the content image or noise.")
@click.option("--optimizer", type=click.Choice(["lbfgs", "adam"]), help="L-BFGS (default) or Adam.")
@click.option("--preserve-colours", "preserve", is_flag=True, default=None,
              help="Keep the content's colours: only the style's brush strokes (recipe key preserve_colours).")
@click.option("--fresh", is_flag=True, help="Start over: move an existing run directory aside instead of resuming.")
def stylize(overrides, recipe_path, content, styles, style_weights, out, size, steps, init, optimizer, preserve,
            fresh):
    """Repaint CONTENT in the style of STYLE; OVERRIDES are dotted recipe keys such as losses.1.weight=1e4."""
    from . import config
    from .overrides import apply_overrides

    # paths as JSON strings (valid YAML): a file named 123 or yes.png stays a path, not a number or a boolean
    style = json.dumps(styles[0] if len(styles) == 1 else list(styles)) if styles else None
    weights = json.dumps(list(style_weights)) if style_weights else None
    flags = [f"{k}={v}" for k, v in (("content", json.dumps(content) if content else None), ("style", style),
                                     ("style_weights", weights), ("size", size),
                                     ("train.steps", steps), ("init", init), ("optimizer.type", optimizer),
                                     ("preserve_colours", "true" if preserve else None))
             if v is not None]
    given = list(overrides)
    if recipe_path is not None:
        raw = config.load_raw(recipe_path)
        raw.setdefault("name", Path(recipe_path).stem)
        where = f"{recipe_path}: "
    else:
        from .tasks.style_recipe import StyleRecipe

        raw, where = StyleRecipe().to_dict(), ""  # the defaults spelt out, so losses.1.weight=... has a target
    if raw.get("task") != "style_transfer":
        raise GanforgeError(f"{where}task: `ganforge stylize` takes a style recipe (task: style_transfer)")
    if not any(o.split("=", 1)[0].strip() == "name" for o in given) and (content or styles):
        raw["name"] = _name(content, styles)
    apply_overrides(raw, flags + given)
    try:
        recipe = config.validate(raw)
    except GanforgeError as e:
        raise type(e)(f"{where}{e}") from None

    from .run import run

    t0 = time.perf_counter()
    trainer = run(recipe_path or "<stylize>", [], fresh=fresh, recipe=recipe)
    if trainer.accelerator.is_main_process:  # the current image, also when stopped early (train.max_steps)
        _write_png(trainer.task.render(), Path(out))
        h, w = trainer.task.render().shape[-2:]
        click.echo(f"wrote {out} ({w}x{h}) in {time.perf_counter() - t0:.1f} s; run dir "
                   f"{Path(recipe.runs_dir) / recipe.name}")
    if trainer.reason == "preempted":  # same contract as `ganforge run`: checkpoint written, run again to resume
        from .cli import EXIT_PREEMPTED

        sys.exit(EXIT_PREEMPTED)
