"""The quiet console: what a run prints is rnnlab's own lines; the run's log file keeps the rest
(the config dump, Lightning's INFO lines and adverts, other packages' deprecation warnings).

    quiet_console()        # run_main calls it: warnings become log records, the filter goes on
                           # the console handler Hydra installed (not on the log file's)
"""

from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path

OWN_PACKAGES = ("rnnlab", "hydra_plugins", "__main__")  # __main__: our scripts/*.py


def warning_module(filename: str, path: list[str] | None = None,
                   modules: dict | None = None) -> str:
    """The dotted name of the module a warning comes from: the loaded module with that file, or
    else the file's path relative to the longest sys.path entry holding it (site-packages is
    longer than a checkout that holds a virtualenv); "" when neither tells. Never a substring
    of the path: a checkout named `rnnlab` holds every file of its `.venv`."""
    try:
        file = Path(filename).resolve()
    except (OSError, ValueError):
        return ""
    for name, module in list((sys.modules if modules is None else modules).items()):
        mod_file = getattr(module, "__file__", None)
        if mod_file and Path(mod_file).resolve() == file:
            return name
    best: Path | None = None
    for entry in sys.path if path is None else path:
        root = Path(entry or ".").resolve()
        if file.is_relative_to(root) and (best is None or len(root.parts) > len(best.parts)):
            best = root
    if best is None:
        return ""
    parts = list(file.relative_to(best).with_suffix("").parts)
    if parts and parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_own_module(name: str) -> bool:
    return name.split(".")[0] in OWN_PACKAGES and (
        name.split(".")[0] != "hydra_plugins" or ".rnnlab" in name)


class ConsoleFilter(logging.Filter):
    """What the console does not show (the run's log file still has it): DEBUG records (the
    config dump), Lightning's INFO lines (accelerator availability, "Seed set to", AMP, the
    checkpoint it restores: run.py says in one line of ours what the run uses when it is not
    the plain CPU) and "Tip" adverts, and deprecation warnings raised in other packages'
    modules (by the warning's module, see `warning_module`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.INFO:
            return False
        if record.name.startswith(("pytorch_lightning", "lightning")) and (
                record.levelno < logging.WARNING or "Tip:" in record.getMessage()):
            return False
        category = getattr(record, "category", None)
        return not (category and issubclass(category, (DeprecationWarning, FutureWarning))
                    and not is_own_module(getattr(record, "warned_from", "")))


def _log_warning(message, category, filename, lineno, file=None, line=None) -> None:
    logging.getLogger("py.warnings").warning(
        "%s:%s: %s: %s", filename, lineno, category.__name__, message,
        extra={"category": category, "warned_from": warning_module(str(filename))})


def quiet_console() -> None:
    """Python warnings become log records, rnnlab's DEBUG records reach the log file, and the
    console handler Hydra installed gets the ConsoleFilter."""
    logging.getLogger("rnnlab").setLevel(logging.DEBUG)
    for handler in logging.getLogger().handlers:
        if not isinstance(handler, logging.FileHandler) and not any(
                isinstance(f, ConsoleFilter) for f in handler.filters):
            handler.addFilter(ConsoleFilter())
    warnings.showwarning = _log_warning
