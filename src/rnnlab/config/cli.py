"""What every script's entry point shares: the command line checked before Hydra runs, one-line
errors and exit codes (the quiet console: config.console; building objects: config.build).

    if __name__ == "__main__":
        check_command_line(CONF_DIR, "train")   # a typo: one line `error: ...`, exit status 2
        sys.exit(main())                        # the @hydra.main function, which calls run_main

`check_command_line` composes the config as Hydra will (Hydra's own Compose API, no torch) and
answers an unknown key or config group, a key added with '+' that nothing reads, a comma outside
a sweep, or a GPU that is not there, with one line naming it and the closest valid names; Hydra
has made no run dir yet. In a single run `run_main` prints a `ConfigError`/`CorpusError`/
`ValueError` as `error: ...` (no traceback), removes the refused run's dir when nothing was
trained in it, and exits with status 2. In a multirun the error is re-raised instead so Hydra's
launcher records that job as failed (its summary.json says why) and goes on with the others.
"""

from __future__ import annotations

import difflib
import inspect
import logging
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import HydraException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

import rnnlab.config.runname  # noqa: F401  registers ${rnnlab.run_name:} (sweep job dir names)
from rnnlab.config.checks import config_problem
from rnnlab.config.console import quiet_console
from rnnlab.config.overrides import hydra_runtime
from rnnlab.config.saved import flatten
from rnnlab.errors import NO_GPU

log = logging.getLogger("rnnlab")
SPECIAL_KEYS = {"_target_", "_partial_", "_args_", "_recursive_", "_convert_"}


def check_command_line(conf_dir: Path, config_name: str, argv: list[str] | None = None) -> None:
    """Exit with status 2 and one line `error: ...` when the command line has a problem that
    `command_line_problem` finds; otherwise return and let Hydra run. The check never stands
    between a user and Hydra: what it cannot make sense of, it leaves to Hydra."""
    try:
        problem = command_line_problem(conf_dir, config_name,
                                       sys.argv[1:] if argv is None else argv)
    except Exception:  # noqa: BLE001 - Hydra will give its own answer
        problem = None
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        sys.exit(2)


def command_line_problem(conf_dir: Path, config_name: str, argv: list[str]) -> str | None:
    from hydra._internal.utils import get_args_parser

    args, _ = get_args_parser().parse_known_args(argv)
    if args.help or args.hydra_help or args.info or args.shell_completion or args.config_path \
            or args.config_dir or args.experimental_rerun:
        return None  # Hydra's own business
    try:
        overrides = OverridesParser.create().parse_overrides(args.overrides)
    except HydraException as e:
        return _unparsable(args.overrides) or _first_line(e)
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
            return _problem(args.config_name or config_name, overrides, args.multirun)
    finally:
        GlobalHydra.instance().clear()


def _problem(config_name: str, overrides: list[Override], multirun: bool) -> str | None:
    repo = GlobalHydra.instance().config_loader().repository
    groups = [o for o in overrides if not o.is_delete() and repo.group_exists(o.key_or_group)]
    for o in groups:  # each value of a group sweep, as its jobs will see it
        options = GlobalHydra.instance().config_loader().get_group_options(o.key_or_group)
        for value in _values(o) or []:
            if value not in options and value != "null":
                return (f"unknown {o.key_or_group} '{value}'"
                        f"{_did_you_mean(value, options, prefix=o.key_or_group + '=')}"
                        f" ({o.key_or_group}: {', '.join(options)})")
    try:
        base = compose(config_name, overrides=_first_values(groups), return_hydra_config=True)
    except (HydraException, OmegaConfBaseException) as e:
        return _first_line(e)
    multirun = multirun or base.hydra.mode == RunMode.MULTIRUN
    for o in overrides:
        if o.is_sweep_override() and not multirun:
            value = o.get_value_string()
            what = "a sweep (the comma)" if o.is_choice_sweep() else "a sweep"
            return (f"{o.key_or_group}={value} is {what}; to "
                    f"mean one string, quote it inside the shell's quotes: "
                    f"'{o.key_or_group}=\"{value}\"'; to run each value, add --multirun")
    flat = flatten(OmegaConf.to_container(base, resolve=False))
    keys = {*flat, *(p for k in flat for p in _parents(k))}
    added = []
    for o in overrides:
        if o in groups:
            continue
        key = o.key_or_group
        parent, _, leaf = key.rpartition(".")
        if o.is_add() and key in keys:
            return f"'+{key}' adds a key, but {key} exists; drop the '+' to set it"
        if (o.is_add() or o.is_force_add()) and key not in keys:
            siblings = [k.rpartition(".")[2] for k in keys if k.rpartition(".")[0] == parent]
            near = difflib.get_close_matches(leaf, siblings, n=1, cutoff=0.8)
            if near:
                return (f"unknown key '{key}' (added with '+'); did you mean "
                        f"'{parent + '.' if parent else ''}{near[0]}'?")
            added.append(key)
            keys |= {key, *_parents(key)}
        elif key not in keys:
            return _unknown_key(key, keys, o)
    try:
        cfg = compose(config_name, overrides=_first_values(overrides), return_hydra_config=True)
    except (HydraException, OmegaConfBaseException) as e:
        return _first_line(e)
    # bad values (rnnlab.config.checks: no torch) before the GPU check, which imports torch; in a
    # multirun each job checks its own values and a bad one fails that job only (the others go on)
    return _unread_argument(cfg, added) or (None if multirun else config_problem(cfg)) \
        or _missing_gpu(cfg)


def _unparsable(arguments: list[str]) -> str | None:
    """What Hydra's override grammar refuses that users write: a home dir `~` (the shell expands
    it only at the start of a word)."""
    for arg in arguments:
        key, _, value = arg.partition("=")
        if value.startswith("~"):
            return (f"{arg}: Hydra's override syntax takes no unquoted '~'; write "
                    f"{key}=$HOME{value[1:]} or quote it: '{key}=\"{value}\"' (~ is expanded)")
    return None


def _values(o: Override) -> list[str] | None:
    """The override's values as strings (each one of a sweep); None where it cannot be listed."""
    if not o.is_sweep_override():
        return [o.get_value_element_as_str()]
    if not o.is_discrete_sweep() or o.value_type.name == "GLOB_CHOICE_SWEEP":
        return None
    return [Override._get_value_element_as_str(v) for v in o.sweep_iterator()]


def _first_values(overrides: list[Override]) -> list[str]:
    """The overrides as one job would get them: a sweep by its first value, deletions kept."""
    out = []
    for o in overrides:
        if o.is_delete():
            out.append(o.input_line)
        elif (values := _values(o)) is not None:
            out.append(f"{o.get_key_element()}={values[0]}")
    return out


def _parents(key: str) -> list[str]:
    parts = key.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _did_you_mean(name: str, candidates, prefix: str = "") -> str:
    near = difflib.get_close_matches(name, sorted(candidates), n=1)
    if not near:
        return ""
    return f"; did you mean '{prefix}{near[0]}'?"


def _unknown_key(key: str, keys: set[str], o: Override) -> str:
    parent, _, leaf = key.rpartition(".")
    if parent in keys:  # compare the last part only: a shared parent makes any two keys alike
        siblings = [k.rpartition(".")[2] for k in keys if k.rpartition(".")[0] == parent]
        hint = _did_you_mean(leaf, siblings, prefix=parent + ".")
    else:
        hint = _did_you_mean(key, keys)
    if hint:
        return f"unknown key '{key}'{hint}"
    if parent in keys:
        return (f"unknown key '{key}'; to give {parent} a new key, write "
                f"'+{key}={o.get_value_string()}'")
    return f"unknown key '{key}'; `--cfg job` lists the keys of the config"


def _unread_argument(cfg: DictConfig, added: list[str]) -> str | None:
    """A key added with '+' to a node that builds an object must be one of its arguments (this
    imports the object's module, which is why it runs only for such keys)."""
    from hydra._internal.utils import _locate

    for key in added:
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(cfg, parent) if parent else None
        if leaf in SPECIAL_KEYS or not isinstance(node, DictConfig) or "_target_" not in node:
            continue
        target = _locate(node._target_)
        params = inspect.signature(target).parameters
        if leaf in params or any(p.kind == p.VAR_KEYWORD for p in params.values()):
            continue
        return (f"unknown key '{key}' (added with '+'): {node._target_} takes no argument "
                f"'{leaf}'{_did_you_mean(leaf, list(params), prefix=parent + '.')}")
    return None


def _missing_gpu(cfg: DictConfig) -> str | None:
    """trainer.accelerator=gpu on a machine without one; not for a cluster launcher, whose jobs
    run elsewhere."""
    accelerator = OmegaConf.select(cfg, "trainer.accelerator")
    if accelerator not in ("gpu", "cuda") or "slurm" in str(
            OmegaConf.select(cfg, "hydra.launcher._target_", default="")).lower():
        return None
    import torch

    return None if torch.cuda.is_available() else f"trainer.accelerator={accelerator}: {NO_GPU}"


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    cause = e.__cause__
    if cause is not None and str(cause).strip():
        text += " " + str(cause).strip().splitlines()[0]
    return text


RUN_DIR_START = {".hydra", "summary.json", "config.yaml"}  # and the <task>.log


def _remove_refused_run_dir() -> None:
    """A refused run leaves no run dir behind: Hydra made it (with .hydra/) before the task ran.
    It is removed only while it holds nothing but what a run writes before it reads any data
    (never a dir with checkpoints, TensorBoard events or files of the user's)."""
    hc = hydra_runtime()
    if hc is None:
        return
    out = Path(hc.runtime.output_dir).resolve()
    if out == Path.cwd().resolve() or not (out / ".hydra").is_dir() or any(
            p.name not in RUN_DIR_START and p.suffix != ".log" for p in out.iterdir()):
        return
    root = logging.getLogger()
    for handler in root.handlers[:]:  # the run's log file is in it
        if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename).parent == out:
            root.removeHandler(handler)
            handler.close()
    shutil.rmtree(out, ignore_errors=True)


def is_multirun() -> bool:
    """Whether this process runs a job of a Hydra multirun (False outside Hydra's runtime)."""
    hc = hydra_runtime()
    return hc is not None and hc.mode == RunMode.MULTIRUN


def run_main(task: Callable[[DictConfig], object], cfg: DictConfig):
    quiet_console()
    try:
        return task(cfg)
    except (ValueError, FileNotFoundError, PermissionError) as e:
        if is_multirun():
            raise
        log.debug("error", exc_info=True)  # in the log file, when the run dir is kept
        _remove_refused_run_dir()
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
