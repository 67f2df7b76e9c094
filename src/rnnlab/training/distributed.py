"""Data-parallel training on Lightning's DDP, and sweeps packed onto GPUs.

    python scripts/train.py trainer=ddp trainer.devices=2                 # 2 CPU processes (gloo)
    python scripts/train.py trainer=ddp trainer.accelerator=gpu trainer.devices=8   # nccl
    python scripts/train.py -m seed=0,1 trainer=ddp                       # each job its own ranks
    python scripts/train.py -m ablation=chapter8 trainer=gpu hydra/launcher=parallel \\
        hydra.launcher.n_jobs=16                                          # job i on GPU i mod n

What is here and why:
- `check_distributed`: the device and world-size checks made before any Trainer exists (one
  line each, exit status 2 through `config.cli`): no GPU, more devices than exist, a batch the
  world size does not divide;
- `HydraDDPStrategy`: Lightning's `DDPStrategy` whose launcher starts ranks > 0 as single runs of
  *this job* (its overrides, its output dir). Lightning's own re-launch repeats the command line,
  which under `--multirun` starts the whole sweep again in each child;
- `env_rank`: the global rank, read from what the launcher set, for writing summary.json and
  config.yaml on rank 0 only before the Trainer is built;
- `agree_on_signal`: a SIGINT/SIGTERM that reached one rank stops every rank at the same step;
- `pack_gpu`: in a joblib sweep (`hydra/launcher=parallel`) on GPUs, job i trains on GPU
  i mod (number of GPUs).
The data plan's rows per rank are in `text.datamodule`, held-out sums in `evaluation.heldout`.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_original_cwd, to_absolute_path
from omegaconf import DictConfig, ListConfig, open_dict
from pytorch_lightning.strategies import DDPStrategy
from pytorch_lightning.strategies.launchers.subprocess_script import _SubprocessScriptLauncher

from rnnlab.config.overrides import hydra_runtime
from rnnlab.errors import NO_GPU, ConfigError

log = logging.getLogger(__name__)


def _accelerator(trainer: DictConfig) -> str:
    acc = str(trainer.get("accelerator", "auto"))
    if acc == "auto":
        return "gpu" if torch.cuda.is_available() else "cpu"
    return "gpu" if acc == "cuda" else acc


def devices_per_node(trainer: DictConfig) -> int:
    """The number of processes (devices) `trainer.devices` asks for on each node."""
    devices = trainer.get("devices", 1)
    if isinstance(devices, (list, ListConfig)):
        return len(devices)
    if isinstance(devices, str) and "," in devices:
        return len([d for d in devices.split(",") if d.strip()])
    if devices in ("auto", -1, "-1"):
        return max(torch.cuda.device_count(), 1) if _accelerator(trainer) == "gpu" else 1
    try:
        return int(devices)
    except (TypeError, ValueError):
        raise ConfigError(f"trainer.devices={devices!r} must be a number of devices, a list of "
                          f"GPU indices or 'auto'") from None


def world_size(trainer: DictConfig) -> int:
    return devices_per_node(trainer) * int(trainer.get("num_nodes", 1) or 1)


def is_ddp(trainer: DictConfig) -> bool:
    strategy = trainer.get("strategy")
    name = strategy.get("_target_", "") if isinstance(strategy, DictConfig) else str(strategy)
    return "ddp" in name.lower()


def check_distributed(cfg: DictConfig) -> None:
    """Refuse, in one line, devices that do not exist and batches the ranks cannot share."""
    trainer, data = cfg.trainer, cfg.data
    acc = _accelerator(trainer)
    if acc == "gpu" and not torch.cuda.is_available():
        # the command line is checked the same way before torch is imported (rnnlab.config.cli)
        raise ConfigError(f"trainer.accelerator={trainer.get('accelerator')}: {NO_GPU} (or "
                          f"trainer=ddp trainer.accelerator=cpu for several processes)")
    per_node = devices_per_node(trainer)
    have = torch.cuda.device_count() if acc == "gpu" else os.cpu_count() or 1
    kind = "GPUs" if acc == "gpu" else "CPU cores"
    if per_node < 1 or per_node > have:
        raise ConfigError(f"trainer.devices={trainer.get('devices')} asks for {per_node} "
                          f"{'GPUs' if acc == 'gpu' else 'CPU processes'} but this machine has "
                          f"{have} {kind}; use trainer.devices={min(max(per_node, 1), have)}")
    world = world_size(trainer)
    if world == 1:
        if is_ddp(trainer):
            log.warning("trainer=ddp with trainer.devices=1 and trainer.num_nodes=1 runs one "
                        "process; set trainer.devices=N for N ranks, or use trainer=cpu/gpu")
        return
    if trainer.get("use_distributed_sampler", True):
        raise ConfigError("trainer.use_distributed_sampler=true deals the windows out "
                          "round-robin and breaks the carried state; set it to false (the data "
                          "plan gives each rank its rows)")
    batch, where = data.batch_size, "trainer.devices x trainer.num_nodes"
    if cfg.bptt.mode == "full" and batch < world:
        raise ConfigError(f"bptt=full trains on data.batch_size={batch} whole streams, fewer than "
                          f"the {world} ranks ({where}); raise data.batch_size to a multiple of "
                          f"{world} or use fewer devices")
    if batch < world:
        raise ConfigError(f"the world size {world} ({where}) is larger than the {batch} streams "
                          f"of data.batch_size={batch}; every rank needs rows: raise "
                          f"data.batch_size to a multiple of {world} or use fewer devices")
    if batch % world:
        raise ConfigError(f"data.batch_size={batch} is not divisible by the world size {world} "
                          f"({where}); use a multiple, e.g. data.batch_size="
                          f"{-(-batch // world) * world}")
    launcher = _hydra_launcher()
    if "joblib" in launcher.get("_target_", ""):
        raise ConfigError("trainer=ddp inside hydra/launcher=parallel would start n_jobs x "
                          "devices processes; use the basic launcher (drop hydra/launcher) or "
                          "hydra/launcher=slurm_ddp")
    core = cfg.model.core
    if core.get("dropout") and core.get("num_layers", 1) > 1:
        log.warning("model.core.dropout between layers is drawn per rank under DDP: training "
                    "matches one process in distribution, not number for number")


def _hydra_launcher() -> DictConfig:
    hc = hydra_runtime()  # None: composed without Hydra's runtime (tests)
    return hc.launcher if hc is not None else DictConfig({})


def env_rank(trainer: DictConfig) -> int:
    """This process's global rank before any Trainer exists, from what the launcher set:
    RANK (torchrun), SLURM_PROCID (srun, one task per rank), or Lightning's own re-launch
    (NODE_RANK, LOCAL_RANK)."""
    for key in ("RANK", "SLURM_PROCID"):
        if key in os.environ:
            return int(os.environ[key])
    node, local = int(os.environ.get("NODE_RANK", 0)), int(os.environ.get("LOCAL_RANK", 0))
    return node * devices_per_node(trainer) + local


def job_command(local_rank: int) -> list[str]:
    """Rank `local_rank` of this Hydra job, as a single run in the job's own output dir."""
    hc = HydraConfig.get()
    script = to_absolute_path(sys.argv[0])
    return [sys.executable, script, *hc.overrides.task, "hydra.mode=RUN",
            f'hydra.run.dir="{hc.runtime.output_dir}"', "hydra.output_subdir=null",
            f"hydra.job.name={hc.job.name}_rank{local_rank}"]


LAUNCH_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")
_launched: list[tuple[HydraJobLauncher, dict[str, str | None]]] = []


class HydraJobLauncher(_SubprocessScriptLauncher):
    """Lightning's subprocess launcher (same environment variables, same process observer),
    starting ranks > 0 with `job_command` when Hydra runs the script."""

    def _call_children_scripts(self) -> None:
        if not HydraConfig.initialized():
            return super()._call_children_scripts()
        self._check_can_spawn_children()
        _launched.append((self, {key: os.environ.get(key) for key in LAUNCH_ENV}))
        env = self.cluster_environment
        os.environ.update(MASTER_ADDR=env.main_address, MASTER_PORT=str(env.main_port),
                          NODE_RANK=str(env.node_rank()), LOCAL_RANK=str(env.local_rank()),
                          WORLD_SIZE=str(self.num_processes * self.num_nodes))
        self.procs = []
        for local_rank in range(1, self.num_processes):
            child = {**os.environ, "LOCAL_RANK": str(local_rank)}
            self.procs.append(subprocess.Popen(job_command(local_rank), env=child,
                                               cwd=get_original_cwd()))
        return None


class HydraDDPStrategy(DDPStrategy):
    """`DDPStrategy` (gloo on a CPU, nccl on a GPU) with `HydraJobLauncher`."""

    def _configure_launcher(self) -> None:
        super()._configure_launcher()
        if type(self._launcher) is _SubprocessScriptLauncher:
            self._launcher = HydraJobLauncher(self.cluster_environment, self.num_processes,
                                              self.num_nodes)


def end_job(timeout: float = 60.0) -> None:
    """After a job that launched ranks: wait for them, close the process group and take back the
    launch variables, so that the next job of a multirun starts its own ranks (Lightning would
    otherwise see LOCAL_RANK, skip the launch and talk to the last job's exited ranks)."""
    while _launched:
        launcher, saved = _launched.pop()
        for proc in launcher.procs:
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                log.warning("rank process %d still running after the job; killing it", proc.pid)
                proc.kill()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def agree_on_signal(trainer, received: str | None) -> str | None:
    """The stop signal any rank received (all ranks call this at the same step): one all-reduce,
    every step on a CPU, every `log_every_n_steps` on a GPU (each is a device sync there)."""
    if trainer.world_size == 1:
        return received
    if trainer.strategy.root_device.type != "cpu" and \
            (trainer.global_step + 1) % max(trainer.log_every_n_steps or 1, 1):
        return received
    signum = signal.Signals[received].value if received else 0
    got = trainer.strategy.reduce(torch.tensor(signum, device=trainer.strategy.root_device),
                                  reduce_op="max")
    return signal.Signals(int(got)).name if int(got) else None


def gpu_for_job(job_num: int, num_gpus: int) -> int:
    """The GPU job `job_num` of a packed sweep trains on."""
    return job_num % num_gpus


def pack_gpu(cfg: DictConfig) -> int | None:
    """In a joblib sweep on GPUs, put this job on GPU job.num mod (GPUs): n_jobs jobs share the
    machine's GPUs evenly (CPU threads are split by `training.run.torch_threads`). Returns the
    GPU, or None where the run is not such a job (or chose its devices as a list)."""
    trainer = cfg.trainer
    if "joblib" not in _hydra_launcher().get("_target_", "") or _accelerator(trainer) != "gpu":
        return None
    if isinstance(trainer.get("devices"), (list, ListConfig)) or world_size(trainer) != 1:
        return None
    gpu = gpu_for_job(int(HydraConfig.get().job.num), torch.cuda.device_count())
    with open_dict(cfg):
        cfg.trainer.devices = [gpu]
    log.info("packed sweep: job %s trains on GPU %d", HydraConfig.get().job.num, gpu)
    return gpu
