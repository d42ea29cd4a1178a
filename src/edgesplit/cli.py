"""The ``edgesplit`` command line. Errors the user can fix end as one stderr line and exit code 2."""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from edgesplit.errors import EdgesplitError

console = Console(width=None if sys.stdout.isatty() else 160)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="edgesplit")
def cli() -> None:
    """Dynamic split computing: cut a network at natural bottlenecks, run the head on the device and
    the tail on an edge server."""


@cli.command()
@click.argument("model")
@click.option("--weights", type=click.Path(dir_okay=False), help="state_dict file (loaded with weights_only=True)")
@click.option("--input-size", type=int, help="square input resolution, e.g. 224")
@click.option("--input-shape", help="C,H,W without batch, e.g. 3,224,224 (default: the model's native)")
@click.option("--match", "match", metavar="REGEX",
              help="keep only cuts at outputs of modules whose qualified or class name fully matches")
@click.option("--check", is_flag=True, help="verify tail(head(x)) == model(x) at every natural bottleneck")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="write the analysis as JSON")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), help="write the c-along-depth figure (PNG)")
@click.option("--all", "show_all", is_flag=True, help="list every cut, not only natural bottlenecks and Pareto cuts")
def analyze(model: str, weights: str | None, input_size: int | None, input_shape: str | None,
            match: str | None, check: bool, json_path: str | None, plot_path: str | None,
            show_all: bool) -> None:
    """Find every cut of MODEL, its natural bottlenecks, sizes and costs.

    MODEL: a torchvision name (efficientnet_b0), timm:NAME, package.module:factory, or
    efficientnet_lite0_pretrained (real ImageNet weights).
    """
    from edgesplit.analysis import analyze as analyze_model
    from edgesplit.models import load_model, parse_input_shape
    from edgesplit.split import check_exact

    start = time.perf_counter()
    loaded = load_model(model, weights)
    shape = parse_input_shape(input_shape, input_size, loaded.native_input_shape)
    result = analyze_model(loaded.module, shape, name=model)
    if match is not None:
        result = result.select(match)
    if check:
        result = check_exact(result)
    elapsed = time.perf_counter() - start
    _print_analysis(result, loaded.weights, show_all, elapsed)
    if json_path:
        with _output(json_path) as path:
            path.write_text(json.dumps(result.to_dict(), indent=1) + "\n")
    if plot_path:
        from edgesplit.plots import plot_ratios

        with _output(plot_path) as path:
            plot_ratios(result, path)


@contextlib.contextmanager
def _output(name: str) -> Iterator[Path]:
    """Create the parent folder, report the file written, and turn OS errors into one clear line."""
    path = Path(name)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield path
    except OSError as exc:
        raise EdgesplitError(f"cannot write {name}: {exc.strerror or exc}") from exc
    console.print(f"wrote {name}")


@cli.command()
@click.argument("pattern", required=False)
@click.option("--timm", "timm_models", is_flag=True, help="list timm models instead (needs edgesplit[timm])")
def models(pattern: str | None, timm_models: bool) -> None:
    """List the model names MODEL accepts, optionally those containing PATTERN."""
    from edgesplit.models import model_names

    for name in model_names(timm_models):
        if pattern is None or pattern in name:
            click.echo(name)


def _print_analysis(result, weights: str, show_all: bool, elapsed: float) -> None:  # type: ignore[no-untyped-def]
    counts = result.counts()
    shape = "×".join(map(str, result.input_shape))
    table = Table(title=f"{result.model} · input {shape} · {weights} · traced with {result.tracer}",
                  caption="NB natural bottleneck · RL record-low · P Pareto · c = crossing/input elements")
    for column in ("#", "cut", "module", "crossing shape", "c", "fp32 KiB", "head MFLOPs",
                   "tail MFLOPs", "head params", "tail params", "flags", "max |diff|"):
        table.add_column(column, justify="left" if column in ("cut", "module", "crossing shape", "flags") else "right")
    for c in result.cuts:
        if not (show_all or c.natural_bottleneck or c.pareto):
            continue
        flags = " ".join(f for f, on in (("NB", c.natural_bottleneck), ("RL", c.record_low), ("P", c.pareto)) if on)
        shapes = " + ".join("×".join(map(str, s[1:])) for s in c.shapes)
        module = c.modules[-1] if c.modules else ""
        diff = "" if c.exact_max_abs_diff is None else f"{c.exact_max_abs_diff:.2g}"
        table.add_row(str(c.index), c.name, module, shapes, f"{c.ratio:.4f}", f"{c.bytes['fp32'] / 1024:.1f}",
                      f"{c.head_flops / 1e6:.1f}", f"{c.tail_flops / 1e6:.1f}", f"{c.head_params:,}",
                      f"{c.tail_params:,}", flags, diff, style="bold red" if c.record_low else None)
    console.print(table)
    summary = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in counts.items())
    checked = [c.exact_max_abs_diff for c in result.cuts if c.exact_max_abs_diff is not None]
    if checked:
        summary += f"; exact split checked at {len(checked)} cuts, max |diff| {max(checked):.3g}"
    console.print(f"{summary} ({elapsed:.1f} s)")


def main() -> None:
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except EdgesplitError as exc:
        click.echo(f"edgesplit: error: {exc}", err=True)
        sys.exit(2)
