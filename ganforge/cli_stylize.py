"""``ganforge stylize``: neural style transfer (Gatys et al.) through the engine's own loop, or, with ``--model RUN``,
a trained fast stylizer applied to an image or a folder (``apps/stylize_model.py``).

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


@click.command("stylize", context_settings={"ignore_unknown_options": True})
@click.argument("overrides", nargs=-1)
@click.option("--recipe", "recipe_path", metavar="YAML", help="A style recipe (recipes/style_transfer.yaml); "
              "default: the built-in defaults.")
@click.option("--content", metavar="IMAGE", help="Image whose layout is kept (default: an embedded scene); with "
              "--model, an image or a folder of images.")
@click.option("--style", "styles", metavar="IMAGE", multiple=True,
              help="Image whose texture and colours are copied (default: embedded); repeat to blend several.")
@click.option("--style-weight", "style_weights", type=float, multiple=True, metavar="W",
              help="Weight of each --style, in order (default: equal).")
@click.option("--out", "out", metavar="PNG", help="Where the result goes (default stylized.png; with --model and a "
              "folder, a folder: stylized/).")
@click.option("--size", type=int, help="Longer side of the output in pixels (recipe key size).")
@click.option("--steps", type=int, help="Optimisation steps (train.steps); L-BFGS runs optimizer.max_iter each.")
@click.option("--init", type=click.Choice(["content", "noise"]), help="Start from the content image or noise.")
@click.option("--optimizer", type=click.Choice(["lbfgs", "adam"]), help="L-BFGS (default) or Adam.")
@click.option("--preserve-colours", "preserve", is_flag=True, default=None,
              help="Keep the content's colours: only the style's brush strokes (recipe key preserve_colours).")
@click.option("--fresh", is_flag=True, help="Start over: move an existing run directory aside instead of resuming.")
@click.option("--model", metavar="RUN", help="A trained fast stylizer (its run dir or a checkpoint dir): stylise "
              "--content in one pass instead of optimising an image.")
@click.option("--batch", type=int, default=8, show_default=True, help="With --model: images per forward pass.")
@click.option("--device", default="cpu", show_default=True, help="With --model: cpu, cuda, cuda:1 ...")
def stylize(overrides, recipe_path, content, styles, style_weights, out, size, steps, init, optimizer, preserve,
            fresh, model, batch, device):
    """Repaint CONTENT in the style of STYLE; OVERRIDES are dotted recipe keys such as losses.1.weight=1e4."""
    if model is not None:
        given = {"--recipe": recipe_path, "--style": styles, "--style-weight": style_weights, "--steps": steps,
                 "--init": init, "--optimizer": optimizer, "--fresh": fresh,
                 overrides[0] if overrides else "": overrides}
        bad = next((k for k, v in given.items() if v), None)
        if bad is not None:  # they configure an optimisation; a trained network has its style baked in
            raise GanforgeError(f"{bad}: not with --model (the trained network's style and settings are fixed)")
        return _apply(model, content, out, size, batch, preserve, device)
    out = out or "stylized.png"
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
    from .tasks.style_images import save_image

    t0 = time.perf_counter()
    trainer = run(recipe_path or "<stylize>", [], fresh=fresh, recipe=recipe)
    if trainer.accelerator.is_main_process:  # the current image, also when stopped early (train.max_steps)
        save_image(trainer.task.render(), Path(out))
        h, w = trainer.task.render().shape[-2:]
        click.echo(f"wrote {out} ({w}x{h}) in {time.perf_counter() - t0:.1f} s; run dir "
                   f"{Path(recipe.runs_dir) / recipe.name}")
    if trainer.reason == "preempted":  # same contract as `ganforge run`: checkpoint written, run again to resume
        from .cli import EXIT_PREEMPTED

        sys.exit(EXIT_PREEMPTED)


def _apply(model, content, out, size, batch, preserve, device) -> None:
    """``--model``: the trained network over --content (default: the embedded scene, written to a temp file)."""
    import tempfile

    from .apps.stylize_model import load_stylizer, stylize_files

    stylizer = load_stylizer(model, device)
    with tempfile.TemporaryDirectory() as tmp:
        if content is None:
            from .tasks.style_images import embedded_content

            content = str(Path(tmp) / "embedded.png")
            embedded_content().save(content)
        stylize_files(stylizer, content, out, size=size, batch=batch, preserve_colours=bool(preserve),
                      log=click.echo)
