"""The errors a user's setting can cause, each printed as one line `error: ...` (exit status 2)
by the scripts. Imports nothing, so every layer can raise them."""


class ConfigError(ValueError):
    """A setting that cannot work; the message names the key, the bad value and the fix."""


class CorpusError(ValueError):
    """A corpus that cannot be downloaded, verified or read; the message says what to do."""


NO_GPU = "no GPU found; train on the CPU with trainer=cpu"
