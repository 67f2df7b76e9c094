"""The command line and the config: checks made before Hydra and torch, building objects from
config nodes, Hydra's runtime and overrides, the config as runs save it."""
