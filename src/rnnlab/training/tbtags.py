"""TensorBoard tag names for the metrics Lightning logs, and back (light: no torch import).

    tb_tag("val/ppl") == "perplexity/val";  metric_name("perplexity/val") == "val/ppl"

Time Series sorts cards by tag, groups them by the tag's first path part and opens the first two
groups. Lightning's names (`train/ppl`, `val/ppl`, `test/ppl`) would scatter perplexity over three
groups, so every `<split>/ppl<suffix>` goes into one `perplexity/` group, which sorts first.
"""

from __future__ import annotations

import re

_PPL = re.compile(r"^(\w+)/ppl(_\w+)?$")
_TB_PPL = re.compile(r"^perplexity/(train|val|test)(_\w+)?$")


def tb_tag(key: str) -> str:
    """`val/ppl` -> `perplexity/val`, `train/ppl_epoch` -> `perplexity/train_epoch`; a name
    without a group goes under `summary/` (after `perplexity/`); anything else is kept."""
    m = _PPL.match(key)
    if m:
        return f"perplexity/{m.group(1)}{m.group(2) or ''}"
    return key if "/" in key else f"summary/{key}"


def metric_name(tag: str) -> str:
    """The inverse of `tb_tag` for perplexity tags: `perplexity/val` -> `val/ppl`."""
    m = _TB_PPL.match(tag)
    return f"{m.group(1)}/ppl{m.group(2) or ''}" if m else tag
